// The coordinator-side analyses of DESIGN.md §4, run once every analysis pass
// of a hook is stored: decoder drift to the final and previous checkpoint,
// per-checkpoint quantiles, the three-phase fits, formation steps, the
// token-level / concept-level classification and each feature's 2-D PCA
// trajectory. The results are written next to the feature points (and as
// per-feature and per-layer summaries) and served from storage.
#ifndef SAETRACK_SERVER_INTERNAL_SUMMARISER_H_
#define SAETRACK_SERVER_INTERNAL_SUMMARISER_H_

#include <atomic>
#include <cstdint>
#include <thread>

#include "absl/status/status.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/result_store.h"
#include "server/internal/task_scheduler.h"
#include "storage/kv_store.h"

namespace saetrack::server {

struct SummariserOptions {
  // Decoder directions held at once for the PCA trajectories; larger chains
  // are read in blocks of features.
  int64_t pca_memory_budget_bytes = int64_t{1} << 30;
  // Features whose updated points and summaries go in one write batch.
  int features_per_batch = 1024;
};

// Takes summary tasks from the scheduler on its own thread and completes
// them. A summary is a pure function of stored results, so one interrupted
// by a crash is simply computed again after the restart. Does not own its
// collaborators (all must outlive it). Thread-safe.
class Summariser {
 public:
  Summariser(TaskScheduler* scheduler, ResultStore* results,
             storage::KvStore* store, const SummariserOptions& options);
  // Stops the thread.
  ~Summariser();

  Summariser(const Summariser&) = delete;
  Summariser& operator=(const Summariser&) = delete;

  void Start();
  // Returns once the thread has finished its current summary.
  void Stop();

  // Computes and stores the summary of `work` (its feature points and
  // summaries in batches, then the drift summary with the task's completion
  // in one batch). Errors: kDataLoss / kNotFound for missing or malformed
  // stored results, storage errors.
  absl::Status Run(const SummaryWork& work);

 private:
  void Loop();

  TaskScheduler* const scheduler_;
  ResultStore* const results_;
  storage::KvStore* const store_;
  const SummariserOptions options_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_SUMMARISER_H_
