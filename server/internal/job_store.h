// Typed records of the job side of the database: jobs, tasks, idempotency
// keys and counters.
#ifndef SAETRACK_SERVER_INTERNAL_JOB_STORE_H_
#define SAETRACK_SERVER_INTERNAL_JOB_STORE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "saetrack/v1/job.pb.h"
#include "server/internal/records.pb.h"
#include "storage/kv_store.h"

namespace saetrack::server {

// Encodes job-side records into write batches and reads them back. Does not
// own the store (which must outlive it). Thread-safe, as the store is.
class JobStore {
 public:
  // Counters in the meta column family.
  static constexpr char kNextJobSeq[] = "next_job_seq";
  static constexpr char kNextWorkerSeq[] = "next_worker_seq";

  explicit JobStore(storage::KvStore* store) : store_(store) {}

  struct Snapshot {
    std::vector<v1::Job> jobs;      // In key (job id) order.
    std::vector<TaskRecord> tasks;  // Grouped by job, chain order.
    int64_t next_job_seq = 1;
    int64_t next_worker_seq = 1;
    std::vector<WorkerRecord> workers;  // In worker id order.
  };
  // Everything needed to rebuild the scheduler after a restart. Errors:
  // storage errors; kDataLoss for a record that does not parse.
  absl::StatusOr<Snapshot> LoadAll() const;

  // The record of `request_id`, or nullopt when it was never used.
  absl::StatusOr<std::optional<IdempotencyRecord>> FindRequest(
      const std::string& request_id) const;

  static void PutJob(const v1::Job& job, storage::WriteBatch* batch);
  static void PutTask(const TaskRecord& task, storage::WriteBatch* batch);
  static void PutRequest(const std::string& request_id,
                         const IdempotencyRecord& record,
                         storage::WriteBatch* batch);
  static void PutCounter(std::string_view name, int64_t value,
                         storage::WriteBatch* batch);
  static void PutWorker(const WorkerRecord& worker, storage::WriteBatch* batch);

  storage::KvStore* kv() const { return store_; }

 private:
  storage::KvStore* const store_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_JOB_STORE_H_
