// Which runnable task a worker is given.
#ifndef SAETRACK_SERVER_INTERNAL_TASK_PICKER_H_
#define SAETRACK_SERVER_INTERNAL_TASK_PICKER_H_

#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "server/internal/job_state_machine.h"
#include "server/internal/records.pb.h"

namespace saetrack::server {

// What the picker knows about a worker.
struct WorkerInfo {
  // "cpu", "cuda" or empty (any job).
  std::string device;
  // 0: unknown (any job).
  int64_t memory_bytes = 0;
  int64_t registered_ms = 0;
  // The token name that registered it ("" without authentication).
  std::string owner;
  // The last task granted to the worker: its engine keeps the other hooks'
  // activations of that checkpoint. Empty job id: none.
  std::string last_job_id;
  int32_t last_checkpoint_index = -1;
  TaskKind last_kind = TASK_KIND_TRAIN;
};

// The best runnable task of `state` at `now_ms` for worker `worker_id`, or
// null. Only jobs the worker fits are considered: a job's spec.device must
// be empty, the worker's device empty, or equal; its
// spec.min_worker_memory_bytes at most the worker's memory_bytes (when
// known). Among those, the first by job priority (highest), then job age
// (oldest), then hook index wins, except that within the first job
// priority level that has a runnable task:
//  1. a task of the checkpoint (and kind) of the job the worker was last
//     granted comes first (its engine kept those activations), then
//  2. a task whose chain predecessor this worker trained (it still holds
//     that SAE and skips the download).
// Tasks for which `busy` is true are not candidates (a transition of them
// is being committed). Pure: reads `state` only.
const TaskRecord* PickTask(const JobStateMachine& state,
                           const std::string& worker_id,
                           const WorkerInfo& worker, int64_t now_ms,
                           absl::FunctionRef<bool(const TaskRecord&)> busy);

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_TASK_PICKER_H_
