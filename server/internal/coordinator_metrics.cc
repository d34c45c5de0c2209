#include "server/internal/coordinator_metrics.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/time/clock.h"
#include "proto/status_mapping.h"

namespace saetrack::server {
namespace {

constexpr char kJobStatePrefix[] = "JOB_STATE_";
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

void CoordinatorMetrics::Refresh() {
  std::function<absl::StatusOr<uint64_t>()> bytes_source;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_ != nullptr ? clock_->Now() : absl::Now();
    const absl::Time cutoff = now - active_window_;
    absl::erase_if(last_seen_,
                   [cutoff](const auto& e) { return e.second < cutoff; });
    workers_active_->Set(static_cast<double>(last_seen_.size()));
    bytes_source = storage_bytes_source_;
  }
  if (bytes_source) {
    // A failure is counted by the store's error observer; keep the last value.
    absl::StatusOr<uint64_t> bytes = bytes_source();
    if (bytes.ok()) storage_bytes_->Set(static_cast<double>(*bytes));
  }
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
