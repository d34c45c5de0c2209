#include "server/internal/checkpoint_follower.h"

#include <iostream>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace saetrack::server {
namespace {

// How often the thread looks for due scans; poll intervals are at least
// 0.1 s.
constexpr absl::Duration kTick = absl::Milliseconds(100);

}  // namespace

CheckpointFollower::CheckpointFollower(TaskScheduler* scheduler,
                                       const JobValidator* validator,
                                       format::DataRoots roots)
    : scheduler_(scheduler), validator_(validator), roots_(std::move(roots)) {}

CheckpointFollower::~CheckpointFollower() { Stop(); }

void CheckpointFollower::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void CheckpointFollower::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void CheckpointFollower::Loop() {
  while (true) {
    PollOnce(absl::Now());
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_;
    };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), kTick)) return;
  }
}

void CheckpointFollower::PollOnce(absl::Time now) {
  absl::MutexLock poll(&poll_mu_);
  const std::vector<v1::Job> following = scheduler_->FollowingJobs();
  std::set<std::string> live;
  for (const v1::Job& job : following) {
    const v1::FollowSpec& spec = job.spec().model().follow();
    if (spec.dir().empty()) continue;  // AddCheckpoint only.
    live.insert(job.job_id());
    Followed& followed = jobs_[job.job_id()];
    if (followed.scanner == nullptr || followed.dir != spec.dir() ||
        followed.pattern != spec.pattern() ||
        followed.marker != spec.marker_file()) {
      absl::StatusOr<CheckpointPattern> pattern =
          ParseCheckpointPattern(spec.pattern());
      if (!pattern.ok()) continue;  // Refused at submission.
      followed.scanner = std::make_unique<CheckpointScanner>(
          spec.dir(), *pattern, spec.marker_file(), roots_);
      followed.dir = spec.dir();
      followed.pattern = spec.pattern();
      followed.marker = spec.marker_file();
    }
    if (now < followed.next_scan) continue;
    followed.next_scan = now + absl::Seconds(spec.poll_interval_s());

    std::set<int64_t> skip;
    for (const v1::FollowedCheckpoint& c : job.follow().checkpoints()) {
      skip.insert(c.step());
    }
    for (const v1::RefusedCheckpoint& c : job.follow().refused()) {
      skip.insert(c.step());
    }
    absl::StatusOr<CheckpointScanner::Result> scan =
        followed.scanner->Scan(skip);
    if (!scan.ok()) {
      const std::string error = scan.status().ToString();
      if (error != followed.last_error) {
        std::cerr << "follow " << job.job_id() << ": " << error << "\n";
        followed.last_error = error;
      }
      continue;
    }
    followed.last_error.clear();
    const int64_t now_ms = absl::ToUnixMillis(now);
    for (const PendingCheckpoint& pending : scan->pending) {
      followed.first_seen_ms.emplace(pending.step, now_ms);
    }
    for (const FoundCheckpoint& found : scan->complete) {
      auto seen = followed.first_seen_ms.emplace(found.step, now_ms).first;
      absl::StatusOr<TaskScheduler::AddedCheckpoint> added =
          scheduler_->AddCheckpoint(
              job.job_id(), found.step, found.path, seen->second,
              found.last_write_ms,
              [this](const v1::JobSpec& spec, int64_t step,
                     const std::string& path) {
                return validator_->ValidateNewCheckpoint(spec, step, path);
              });
      if (added.ok()) {
        std::cerr << "follow " << job.job_id() << ": took step " << found.step
                  << " (" << found.path << ")\n";
        followed.first_seen_ms.erase(found.step);
        // until_step reached: the job follows no more.
        if (added->job.follow().state() == v1::FOLLOW_STATE_CLOSED) break;
        continue;
      }
      std::cerr << "follow " << job.job_id() << ": step " << found.step
                << " not taken: " << added.status() << "\n";
      followed.first_seen_ms.erase(found.step);
      if (absl::IsUnavailable(added.status())) break;  // Try again later.
      // Refused (recorded on the job) or the job stopped following.
    }
  }
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    it = live.count(it->first) > 0 ? std::next(it) : jobs_.erase(it);
  }
}

}  // namespace saetrack::server
