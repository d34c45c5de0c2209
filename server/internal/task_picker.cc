#include "server/internal/task_picker.h"

namespace saetrack::server {

const TaskRecord* PickTask(const JobStateMachine& state,
                           const std::string& worker_id,
                           const WorkerInfo& worker, int64_t now_ms,
                           absl::FunctionRef<bool(const TaskRecord&)> busy) {
  const TaskRecord* first = nullptr;
  const TaskRecord* chained = nullptr;
  const TaskRecord* same_checkpoint = nullptr;
  int32_t first_priority = 0;
  state.ForEachActiveJob([&](const JobStateMachine::JobEntry& entry) {
    const v1::JobSpec& spec = entry.job.spec();
    if (!worker.device.empty() && !spec.device().empty() &&
        worker.device != spec.device()) {
      return true;
    }
    if (worker.memory_bytes > 0 &&
        spec.min_worker_memory_bytes() > worker.memory_bytes) {
      return true;
    }
    const int32_t priority = spec.priority();
    // Jobs come in priority order: affinity never jumps a priority level.
    if (first != nullptr && priority != first_priority) return false;
    for (int h = 0; h < static_cast<int>(entry.chains.size()); ++h) {
      const TaskRecord* previous = nullptr;
      const TaskRecord* task =
          state.RunnableInHook(entry, h, now_ms, busy, &previous);
      if (task == nullptr) continue;
      // Another hook of the checkpoint this worker just worked on: its
      // activations are kept there (one LM forward pass per checkpoint).
      if (task->job_id() == worker.last_job_id &&
          task->checkpoint_index() == worker.last_checkpoint_index &&
          task->kind() == worker.last_kind) {
        same_checkpoint = task;
        return false;
      }
      // The next link of a chain this worker trained the previous one of.
      if (chained == nullptr && !worker_id.empty() && previous != nullptr &&
          previous->worker_id() == worker_id) {
        chained = task;
      }
      if (first == nullptr) {
        first = task;
        first_priority = priority;
      }
    }
    return true;
  });
  if (same_checkpoint != nullptr) return same_checkpoint;
  return chained != nullptr ? chained : first;
}

}  // namespace saetrack::server
