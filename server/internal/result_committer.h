// Writes the scheduler's decisions and a task's results to the store.
#ifndef SAETRACK_SERVER_INTERNAL_RESULT_COMMITTER_H_
#define SAETRACK_SERVER_INTERNAL_RESULT_COMMITTER_H_

#include "absl/status/status.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/job_state_machine.h"
#include "storage/kv_store.h"

namespace saetrack::server {

// Writes synced batches: a transition's records (RecordChanges) with what
// goes in the same batch (a request id, a counter, a task's results). The
// caller holds none of the scheduler's locks while it writes (TaskScheduler
// pins the records being written instead), so concurrent commits proceed
// side by side and RocksDB groups their syncs.
//
// Does not own the store or metrics (both must outlive it). Thread-safe.
class ResultCommitter {
 public:
  ResultCommitter(storage::KvStore* store, CoordinatorMetrics* metrics)
      : store_(store), metrics_(metrics) {}

  ResultCommitter(const ResultCommitter&) = delete;
  ResultCommitter& operator=(const ResultCommitter&) = delete;

  // Adds the records of `changes` to `batch` and writes it, synced: when
  // this returns OK all of it is durable; on error none of it was written
  // (RocksDB applies a batch atomically). Errors: the store's.
  absl::Status Commit(storage::WriteBatch batch,
                      const RecordChanges& changes) const;

 private:
  storage::KvStore* const store_;
  CoordinatorMetrics* const metrics_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_RESULT_COMMITTER_H_
