#include "server/internal/checkpoint_follower.h"

#include <algorithm>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace saetrack::server {
namespace {

// How often the thread looks for due scans; poll intervals are at least
// 0.1 s.
constexpr absl::Duration kTick = absl::Milliseconds(100);
// How often refused steps are examined again: one whose files were written
// after its refusal is offered again (the trainer wrote it anew).
constexpr absl::Duration kRefusedRecheck = absl::Seconds(60);
// How long a checkpoint may stay incomplete before the log says why.
constexpr absl::Duration kPendingLogAfter = absl::Seconds(60);

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
    // Step -> when it was refused: those the job lists (at most 100) and
    // those this follower refused (all of them, so that a run with many
    // bad checkpoints is not offered them again at every scan).
    std::map<int64_t, int64_t> refused_ms = followed.refused_ms;
    for (const v1::RefusedCheckpoint& c : job.follow().refused()) {
      int64_t& when = refused_ms[c.step()];
      when = std::max(when, c.time_ms());
    }
    // Two scans in a row: a directory is complete when it held still
    // between them.
    if (now >= followed.next_refused_check) {
      followed.next_refused_check = now + kRefusedRecheck;
      followed.refused_rechecks_left = 2;
    }
    const bool recheck_refused = followed.refused_rechecks_left > 0;
    if (recheck_refused) --followed.refused_rechecks_left;
    if (!recheck_refused) {
      for (const auto& [step, when] : refused_ms) skip.insert(step);
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
    std::map<int64_t, std::string> pending_reasons;
    for (const PendingCheckpoint& pending : scan->pending) {
      const int64_t first_seen =
          followed.first_seen_ms.emplace(pending.step, now_ms).first->second;
      // A checkpoint that stays incomplete (a malformed header, two names
      // for one step) says why: logged once it has been pending for a
      // while, and again when the reason changes.
      if (now_ms - first_seen < absl::ToInt64Milliseconds(kPendingLogAfter)) {
        continue;
      }
      auto logged = followed.pending_reasons.find(pending.step);
      if (logged == followed.pending_reasons.end() ||
          logged->second != pending.reason) {
        std::cerr << "follow " << job.job_id() << ": step " << pending.step
                  << " (" << pending.path
                  << ") not complete yet: " << pending.reason << "\n";
      }
      pending_reasons.emplace(pending.step, pending.reason);
    }
    followed.pending_reasons = std::move(pending_reasons);
    for (const FoundCheckpoint& found : scan->complete) {
      if (auto refused = refused_ms.find(found.step);
          refused != refused_ms.end() &&
          found.last_write_ms <= refused->second) {
        followed.first_seen_ms.erase(found.step);
        continue;  // Unchanged since it was refused.
      }
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
      // Wall-clock time, as the files' mtimes it is compared with.
      followed.refused_ms[found.step] = absl::ToUnixMillis(absl::Now());
    }
  }
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    it = live.count(it->first) > 0 ? std::next(it) : jobs_.erase(it);
  }
}

}  // namespace saetrack::server
