#include "server/internal/coordinator_metrics.h"

#include "absl/strings/ascii.h"
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
