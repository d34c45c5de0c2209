#include "server/internal/coordinator_metrics.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "proto/status_mapping.h"

namespace saetrack::server {
namespace {

constexpr char kJobStatePrefix[] = "JOB_STATE_";
constexpr size_t kMaxFollowLabelledJobs = 100;
constexpr char kTaskStatePrefix[] = "TASK_STATE_";

std::string StripLower(const std::string& name, const std::string& prefix) {
  std::string s =
      name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
  return absl::AsciiStrToLower(s);
}

// 1 ms .. ~33 s; LeaseTask long polls land in the top buckets.
prometheus::Histogram::BucketBoundaries DurationBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 0.001; v < 40; v *= 2) b.push_back(v);
  return b;
}

// Refreshes the scrape-time gauges, then collects the registry.
class RefreshingCollectable final : public prometheus::Collectable {
 public:
  RefreshingCollectable(CoordinatorMetrics* metrics,
                        std::shared_ptr<prometheus::Registry> registry)
      : metrics_(metrics), registry_(std::move(registry)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    metrics_->Refresh();
    return registry_->Collect();
  }

 private:
  CoordinatorMetrics* const metrics_;
  const std::shared_ptr<prometheus::Registry> registry_;
};

}  // namespace

std::string JobStateLabel(v1::JobState state) {
  return StripLower(v1::JobState_Name(state), kJobStatePrefix);
}

std::string TaskStateLabel(TaskState state) {
  return StripLower(TaskState_Name(state), kTaskStatePrefix);
}

CoordinatorMetrics::CoordinatorMetrics()
    : duration_buckets_(DurationBuckets()),
      registry_(std::make_shared<prometheus::Registry>()) {
  jobs_ = &prometheus::BuildGauge()
               .Name("saetrack_jobs")
               .Help("Tracking jobs by state.")
               .Register(*registry_);
  tasks_ = &prometheus::BuildGauge()
                .Name("saetrack_tasks")
                .Help("Tasks (one SAE of a chain each) by state.")
                .Register(*registry_);
  // Every state shows up, at 0, before anything happens.
  for (int s = v1::JobState_MIN + 1; s <= v1::JobState_MAX; ++s) {
    jobs_->Add({{"state", JobStateLabel(static_cast<v1::JobState>(s))}});
  }
  for (int s = TaskState_MIN + 1; s <= TaskState_MAX; ++s) {
    tasks_->Add({{"state", TaskStateLabel(static_cast<TaskState>(s))}});
  }
  rpcs_ = &prometheus::BuildCounter()
               .Name("saetrack_rpcs_total")
               .Help("RPCs handled, by method and status code.")
               .Register(*registry_);
  rpc_duration_ = &prometheus::BuildHistogram()
                       .Name("saetrack_rpc_duration_seconds")
                       .Help("RPC handling time, by method.")
                       .Register(*registry_);
  leases_granted_ = &prometheus::BuildCounter()
                         .Name("saetrack_leases_granted_total")
                         .Help("Task leases granted to workers.")
                         .Register(*registry_)
                         .Add({});
  lease_expiries_ = &prometheus::BuildCounter()
                         .Name("saetrack_lease_expiries_total")
                         .Help("Leases that expired without a heartbeat.")
                         .Register(*registry_)
                         .Add({});
  task_retries_ = &prometheus::BuildCounter()
                       .Name("saetrack_task_retries_total")
                       .Help("Tasks requeued after a failure or an expiry.")
                       .Register(*registry_)
                       .Add({});
  bytes_written_ = &prometheus::BuildCounter()
                        .Name("saetrack_storage_bytes_written_total")
                        .Help("Bytes of keys and values written to RocksDB.")
                        .Register(*registry_)
                        .Add({});
  workers_registered_ = &prometheus::BuildGauge()
                             .Name("saetrack_workers_registered")
                             .Help("Workers registered since start.")
                             .Register(*registry_)
                             .Add({});
  watch_streams_ = &prometheus::BuildGauge()
                        .Name("saetrack_watch_streams")
                        .Help("Open WatchJob streams.")
                        .Register(*registry_)
                        .Add({});
  workers_active_ =
      &prometheus::BuildGauge()
           .Name("saetrack_workers_active")
           .Help(
               "Workers that called in (lease poll or heartbeat) within the "
               "last 3 heartbeat intervals.")
           .Register(*registry_)
           .Add({});
  insecure_mode_ = &prometheus::BuildGauge()
                        .Name("saetrack_insecure_mode")
                        .Help(
                            "1 when the coordinator runs with --insecure "
                            "(beyond loopback without TLS or bearer tokens), "
                            "else 0.")
                        .Register(*registry_)
                        .Add({});
  follow_taken_ = &prometheus::BuildCounter()
                       .Name("saetrack_follow_checkpoints_taken_total")
                       .Help(
                           "Checkpoints following jobs took into their "
                           "chains.")
                       .Register(*registry_)
                       .Add({});
  follow_refused_ = &prometheus::BuildCounter()
                         .Name("saetrack_follow_checkpoints_refused_total")
                         .Help(
                             "Checkpoints following jobs refused (invalid, "
                             "late, or a taken step with another path).")
                         .Register(*registry_)
                         .Add({});
  follow_lag_histogram_ =
      &prometheus::BuildHistogram()
           .Name("saetrack_follow_checkpoint_lag_seconds")
           .Help(
               "Seconds from a followed checkpoint's last file write to the "
               "SAEs of every hook at its step stored.")
           .Register(*registry_)
           .Add({}, prometheus::Histogram::BucketBoundaries{
                        1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800,
                        3600, 7200, 14400});
  follow_jobs_ = &prometheus::BuildGauge()
                      .Name("saetrack_follow_jobs")
                      .Help("Jobs following a training run (not closed).")
                      .Register(*registry_)
                      .Add({});
  auto follow_gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_);
  };
  follow_seen_ = follow_gauge("saetrack_follow_checkpoints_seen",
                              "Checkpoints a following job took or refused.");
  follow_trained_ = follow_gauge(
      "saetrack_follow_checkpoints_trained",
      "Checkpoints of a following job whose SAEs (every hook) are stored.");
  follow_since_checkpoint_ = follow_gauge(
      "saetrack_follow_seconds_since_checkpoint",
      "Seconds since a following job took its latest checkpoint (or was "
      "submitted).");
  follow_lag_ = follow_gauge(
      "saetrack_follow_lag_seconds",
      "A following job's lag: seconds since the last write of its oldest "
      "checkpoint whose SAEs are not stored yet, else the lag of the latest "
      "one stored.");
  follow_stall_alert_ =
      follow_gauge("saetrack_follow_stall_alert_seconds",
                   "The job's model.follow.stall_alert_s (0: no stall alert).");
  follow_lag_alert_ =
      follow_gauge("saetrack_follow_lag_alert_seconds",
                   "The job's model.follow.lag_alert_s (0: no lag alert).");
  storage_bytes_ = &prometheus::BuildGauge()
                        .Name("saetrack_storage_bytes")
                        .Help(
                            "Live data in RocksDB: SST and live blob files "
                            "of every column family.")
                        .Register(*registry_)
                        .Add({});
  auto& storage_errors = prometheus::BuildCounter()
                             .Name("saetrack_storage_errors_total")
                             .Help("Failed storage calls, by operation.")
                             .Register(*registry_);
  storage_read_errors_ = &storage_errors.Add({{"op", "read"}});
  storage_write_errors_ = &storage_errors.Add({{"op", "write"}});
  tokens_trained_ =
      &prometheus::BuildCounter()
           .Name("saetrack_tokens_trained_total")
           .Help(
               "Tokens trained by workers, from their heartbeats and "
               "completed tasks.")
           .Register(*registry_)
           .Add({});
}

std::shared_ptr<prometheus::Collectable> CoordinatorMetrics::collectable() {
  absl::MutexLock lock(&mu_);
  if (collectable_ == nullptr) {
    collectable_ = std::make_shared<RefreshingCollectable>(this, registry_);
  }
  return collectable_;
}

void CoordinatorMetrics::SetScrapeSources(
    Clock* clock, absl::Duration active_window,
    std::function<absl::StatusOr<uint64_t>()> storage_bytes) {
  absl::MutexLock lock(&mu_);
  clock_ = clock;
  active_window_ = active_window;
  storage_bytes_source_ = std::move(storage_bytes);
}

void CoordinatorMetrics::SetFollowSource(
    std::function<std::vector<v1::Job>()> following) {
  absl::MutexLock lock(&mu_);
  follow_source_ = std::move(following);
}

void CoordinatorMetrics::Refresh() {
  std::function<absl::StatusOr<uint64_t>()> bytes_source;
  std::function<std::vector<v1::Job>()> follow_source;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_ != nullptr ? clock_->Now() : absl::Now();
    const absl::Time cutoff = now - active_window_;
    absl::erase_if(last_seen_,
                   [cutoff](const auto& e) { return e.second < cutoff; });
    workers_active_->Set(static_cast<double>(last_seen_.size()));
    bytes_source = storage_bytes_source_;
    follow_source = follow_source_;
  }
  if (follow_source) RefreshFollow(follow_source());
  if (bytes_source) {
    // A failure is counted by the store's error observer; keep the last value.
    absl::StatusOr<uint64_t> bytes = bytes_source();
    if (bytes.ok()) storage_bytes_->Set(static_cast<double>(*bytes));
  }
}

void CoordinatorMetrics::RefreshFollow(const std::vector<v1::Job>& jobs) {
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  std::set<std::string> labelled;
  for (const v1::Job& job : jobs) {
    // Job ids as label values, bounded: following jobs only (gone once
    // closed), at most kMaxFollowLabelledJobs of them (the oldest).
    if (labelled.size() >= kMaxFollowLabelledJobs) break;
    const v1::FollowStatus& follow = job.follow();
    const v1::FollowSpec& spec = job.spec().model().follow();
    int trained = 0;
    double lag_s = 0;
    bool pending = false;
    for (const v1::FollowedCheckpoint& c : follow.checkpoints()) {
      const int64_t written =
          c.last_write_ms() > 0 ? c.last_write_ms() : c.taken_ms();
      if (c.stored_ms() > 0) {
        ++trained;
        if (!pending) lag_s = (c.stored_ms() - written) / 1000.0;
      } else if (!pending) {
        pending = true;
        lag_s = (now_ms - written) / 1000.0;
      }
    }
    const int64_t since_ms = follow.last_taken_ms() > 0 ? follow.last_taken_ms()
                                                        : job.create_time_ms();
    const prometheus::Labels labels{{"job", job.job_id()}};
    follow_seen_->Add(labels).Set(follow.checkpoints_size() +
                                  follow.refused_size());
    follow_trained_->Add(labels).Set(trained);
    follow_since_checkpoint_->Add(labels).Set((now_ms - since_ms) / 1000.0);
    follow_lag_->Add(labels).Set(std::max(0.0, lag_s));
    follow_stall_alert_->Add(labels).Set(spec.stall_alert_s());
    follow_lag_alert_->Add(labels).Set(spec.lag_alert_s());
    labelled.insert(job.job_id());
  }
  follow_jobs_->Set(static_cast<double>(jobs.size()));
  absl::MutexLock lock(&mu_);
  for (const std::string& gone : follow_labelled_) {
    if (labelled.count(gone) > 0) continue;
    const prometheus::Labels labels{{"job", gone}};
    for (auto* family :
         {follow_seen_, follow_trained_, follow_since_checkpoint_, follow_lag_,
          follow_stall_alert_, follow_lag_alert_}) {
      family->Remove(&family->Add(labels));
    }
  }
  follow_labelled_ = std::move(labelled);
}

void CoordinatorMetrics::WorkerSeen(const std::string& worker_id) {
  if (worker_id.empty()) return;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_ != nullptr ? clock_->Now() : absl::Now();
  absl::Time& seen = last_seen_[worker_id];
  seen = std::max(seen, now);
}

void CoordinatorMetrics::StorageError(storage::StoreOp op) {
  (op == storage::StoreOp::kWrite ? storage_write_errors_
                                  : storage_read_errors_)
      ->Increment();
}

void CoordinatorMetrics::TaskProgress(const std::string& task_id, int64_t epoch,
                                      int64_t tokens_done) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = task_tokens_.try_emplace(task_id, epoch, 0);
  if (it->second.first != epoch) {
    if (it->second.first > epoch) return;  // A late report of an old lease.
    it->second = {epoch, 0};
  }
  if (tokens_done > it->second.second) {
    tokens_trained_->Increment(
        static_cast<double>(tokens_done - it->second.second));
    it->second.second = tokens_done;
  }
}

void CoordinatorMetrics::TaskCompleted(const std::string& task_id,
                                       int64_t epoch, int64_t tokens_trained) {
  absl::MutexLock lock(&mu_);
  int64_t counted = 0;
  if (auto it = task_tokens_.find(task_id); it != task_tokens_.end()) {
    if (it->second.first == epoch) counted = it->second.second;
    task_tokens_.erase(it);
  }
  if (tokens_trained > counted) {
    tokens_trained_->Increment(static_cast<double>(tokens_trained - counted));
  }
}

void CoordinatorMetrics::TaskEnded(const std::string& task_id) {
  absl::MutexLock lock(&mu_);
  task_tokens_.erase(task_id);
}

void CoordinatorMetrics::AddJobs(v1::JobState state, double delta) {
  jobs_->Add({{"state", JobStateLabel(state)}}).Increment(delta);
}

void CoordinatorMetrics::AddTasks(TaskState state, double delta) {
  tasks_->Add({{"state", TaskStateLabel(state)}}).Increment(delta);
}

prometheus::Histogram& CoordinatorMetrics::DurationOf(
    const std::string& method) {
  // Family::Add returns the existing series for known labels; buckets are only
  // used on creation.
  return rpc_duration_->Add({{"method", method}}, duration_buckets_);
}

void CoordinatorMetrics::RecordRpc(const std::string& method,
                                   absl::StatusCode code,
                                   absl::Duration elapsed) {
  rpcs_->Add({{"method", method}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
  DurationOf(method).Observe(absl::ToDoubleSeconds(elapsed));
}

grpc::Status RpcTimer::Finish(const absl::Status& status) {
  metrics_->RecordRpc(method_, status.code(), absl::Now() - start_);
  return ToGrpcStatus(status);
}

}  // namespace saetrack::server
