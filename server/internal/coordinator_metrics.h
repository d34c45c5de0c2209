// The coordinator's Prometheus metrics.
#ifndef SAETRACK_SERVER_INTERNAL_COORDINATOR_METRICS_H_
#define SAETRACK_SERVER_INTERNAL_COORDINATOR_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "saetrack/v1/job.pb.h"
#include "server/clock.h"
#include "server/internal/records.pb.h"
#include "storage/kv_store.h"

namespace saetrack::server {

// Owns a prometheus::Registry with every coordinator metric; an Exposer (owned
// elsewhere) serves it. Labels carry states, methods and codes only, never job
// or feature ids. Thread-safe.
class CoordinatorMetrics {
 public:
  CoordinatorMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // What an Exposer should serve: the registry, with the gauges computed at
  // scrape time (saetrack_workers_active, saetrack_storage_bytes) refreshed
  // first. Holds `this` weakly; valid while this object lives.
  std::shared_ptr<prometheus::Collectable> collectable();

  // Sources of the scrape-time gauges; call once before serving. `clock` and
  // the store behind `storage_bytes` must outlive this object (or the
  // Exposer's last scrape). A worker counts as active for `active_window`
  // after its last RPC.
  void SetScrapeSources(
      Clock* clock, absl::Duration active_window,
      std::function<absl::StatusOr<uint64_t>()> storage_bytes);
  // Source of the following jobs' gauges (saetrack_follow_*), read at
  // scrape time; must stay callable while this object lives.
  void SetFollowSource(std::function<std::vector<v1::Job>()> following);
  // Recomputes saetrack_workers_active, saetrack_storage_bytes and the
  // following jobs' gauges now.
  void Refresh();
  // A following job took a checkpoint, refused one, or stored the SAEs of
  // one `lag_seconds` after its files were last written.
  void CheckpointTaken() { follow_taken_->Increment(); }
  void CheckpointRefused() { follow_refused_->Increment(); }
  void CheckpointStored(double lag_seconds) {
    follow_lag_histogram_->Observe(lag_seconds);
  }

  // A worker called in (RegisterWorker, LeaseTask, Heartbeat) now, by the
  // clock of SetScrapeSources (the system clock before it is called).
  void WorkerSeen(const std::string& worker_id);

  // saetrack_storage_errors_total{op}: a storage call failed.
  void StorageError(storage::StoreOp op);

  // saetrack_tokens_trained_total: a heartbeat reported `tokens_done` tokens
  // trained so far by the lease `epoch` of `task_id`; the counter grows by
  // the increase since the last report of that lease.
  void TaskProgress(const std::string& task_id, int64_t epoch,
                    int64_t tokens_done);
  // The lease completed its task with `tokens_trained` tokens in total; adds
  // what heartbeats have not counted yet and forgets the task.
  void TaskCompleted(const std::string& task_id, int64_t epoch,
                     int64_t tokens_trained);
  // The task's lease ended without completing; forgets it.
  void TaskEnded(const std::string& task_id);

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
  // saetrack_watch_streams: open WatchJob streams.
  void WatchStreams(double delta) { watch_streams_->Increment(delta); }
  // saetrack_insecure_mode: 1 when started with --insecure.
  void SetInsecureMode(bool insecure) { insecure_mode_->Set(insecure ? 1 : 0); }

 private:
  prometheus::Histogram& DurationOf(const std::string& method);
  void RefreshFollow(const std::vector<v1::Job>& jobs);

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
  prometheus::Gauge* watch_streams_;
  prometheus::Gauge* workers_active_;
  prometheus::Gauge* storage_bytes_;
  prometheus::Gauge* insecure_mode_;
  prometheus::Counter* storage_read_errors_;
  prometheus::Counter* storage_write_errors_;
  prometheus::Counter* tokens_trained_;
  prometheus::Counter* follow_taken_;
  prometheus::Counter* follow_refused_;
  prometheus::Histogram* follow_lag_histogram_;
  prometheus::Gauge* follow_jobs_;
  // Per following job (label job).
  prometheus::Family<prometheus::Gauge>* follow_seen_;
  prometheus::Family<prometheus::Gauge>* follow_trained_;
  prometheus::Family<prometheus::Gauge>* follow_since_checkpoint_;
  prometheus::Family<prometheus::Gauge>* follow_lag_;
  prometheus::Family<prometheus::Gauge>* follow_stall_alert_;
  prometheus::Family<prometheus::Gauge>* follow_lag_alert_;
  std::function<std::vector<v1::Job>()> follow_source_ ABSL_GUARDED_BY(mu_);
  // Job ids with gauges, removed once the job stops following.
  std::set<std::string> follow_labelled_ ABSL_GUARDED_BY(mu_);

  absl::Mutex mu_;
  Clock* clock_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Duration active_window_ ABSL_GUARDED_BY(mu_) = absl::Seconds(30);
  std::function<absl::StatusOr<uint64_t>()> storage_bytes_source_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> last_seen_ ABSL_GUARDED_BY(mu_);
  // task_id -> (lease epoch, tokens counted for it).
  absl::flat_hash_map<std::string, std::pair<int64_t, int64_t>> task_tokens_
      ABSL_GUARDED_BY(mu_);
  std::shared_ptr<prometheus::Collectable> collectable_ ABSL_GUARDED_BY(mu_);
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
