// The coordinator's Prometheus metrics.
#ifndef SAETRACK_SERVER_INTERNAL_COORDINATOR_METRICS_H_
#define SAETRACK_SERVER_INTERNAL_COORDINATOR_METRICS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "saetrack/v1/job.pb.h"
#include "server/internal/records.pb.h"

namespace saetrack::server {

// Owns a prometheus::Registry with every coordinator metric; an Exposer (owned
// elsewhere) serves it. Labels carry states, methods and codes only, never job
// or feature ids. Thread-safe.
class CoordinatorMetrics {
 public:
  CoordinatorMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // saetrack_jobs{state} / saetrack_tasks{state}: current counts.
  void AddJobs(v1::JobState state, double delta);
  void AddTasks(TaskState state, double delta);

  // saetrack_rpcs_total{method,code} and saetrack_rpc_duration_seconds{method}.
  void RecordRpc(const std::string& method, absl::StatusCode code,
                 absl::Duration elapsed);

  void LeaseGranted() { leases_granted_->Increment(); }
  void LeaseExpired() { lease_expiries_->Increment(); }
  void TaskRetried() { task_retries_->Increment(); }
  void BytesWritten(uint64_t bytes) {
    bytes_written_->Increment(static_cast<double>(bytes));
  }
  void WorkerRegistered() { workers_registered_->Increment(); }

 private:
  prometheus::Histogram& DurationOf(const std::string& method);

  const prometheus::Histogram::BucketBoundaries duration_buckets_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>* jobs_;
  prometheus::Family<prometheus::Gauge>* tasks_;
  prometheus::Family<prometheus::Counter>* rpcs_;
  prometheus::Family<prometheus::Histogram>* rpc_duration_;
  prometheus::Counter* leases_granted_;
  prometheus::Counter* lease_expiries_;
  prometheus::Counter* task_retries_;
  prometheus::Counter* bytes_written_;
  prometheus::Gauge* workers_registered_;
};

// Times one RPC; Finish records it and converts its status for gRPC (the one
// absl -> grpc seam of the RPC layer). Thread-compatible; one per call.
class RpcTimer {
 public:
  RpcTimer(CoordinatorMetrics* metrics, const char* method)
      : metrics_(metrics), method_(method), start_(absl::Now()) {}

  grpc::Status Finish(const absl::Status& status);

 private:
  CoordinatorMetrics* const metrics_;  // Not owned.
  const char* const method_;
  const absl::Time start_;
};

// Lower-case label values ("queued", "running", ...).
std::string JobStateLabel(v1::JobState state);
std::string TaskStateLabel(TaskState state);

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_COORDINATOR_METRICS_H_
