// Activations of one checkpoint at several hooks from one forward pass.
//
// A job with hooks at several layers trains one SAE per (hook, checkpoint),
// as separate tasks. Each needs the LM's activations on the same contexts
// (the same held-out positions, the same training contexts: they depend on
// the job's seed and token budget, not on the hook). An ActivationCache lets
// the first task of a checkpoint run the LM once for every hook of the job,
// up to the deepest, and keeps the other hooks' activations for the tasks
// that follow on the same worker (the scheduler hands a worker the other
// hooks of the checkpoint it just worked on; DESIGN.md §2).
//
// It holds one checkpoint at a time: a Take for another scope (another
// checkpoint, token file or context length) drops everything, so memory is
// bounded by one checkpoint's activation sets and nothing outlives the
// checkpoint's tasks. Each kept tensor is handed out once (a task that is
// retried recomputes).
#ifndef SAETRACK_ENGINE_LM_ACTIVATION_CACHE_H_
#define SAETRACK_ENGINE_LM_ACTIVATION_CACHE_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/language_model.h"

namespace saetrack::engine {

class ActivationCache {
 public:
  // Keeps at most max_bytes of other hooks' activations; beyond that they
  // are not kept (and their tasks run the LM again).
  explicit ActivationCache(int64_t max_bytes) : max_bytes_(max_bytes) {}
  ActivationCache(const ActivationCache&) = delete;
  ActivationCache& operator=(const ActivationCache&) = delete;

  // The activations at `hook` for `contexts` [n, seq] as [n * seq, hidden]
  // on `device`, as CollectActivations computes them. `scope` names the
  // checkpoint and data (model directory, token file, context length);
  // `set` names which contexts these are within it (e.g. "eval:64").
  // When they are not kept, runs the model once for `hook` and every hook
  // in `also` (duplicates of `hook` ignored), stopping after the deepest,
  // and keeps the others' under (scope, set). REQUIRES: every hook layer in
  // [0, model.num_layers()).
  torch::Tensor Take(const std::string& scope, const std::string& set,
                     const LanguageModel& model, const torch::Tensor& contexts,
                     const HookPoint& hook, const std::vector<HookPoint>& also,
                     int64_t contexts_per_forward, const torch::Device& device);

  // Forward passes over a context set run by Take, and Takes answered from
  // kept activations (for tests and benchmarks).
  int64_t forward_passes() const { return forward_passes_; }
  int64_t hits() const { return hits_; }
  int64_t kept_bytes() const { return kept_bytes_; }

 private:
  const int64_t max_bytes_;
  std::string scope_;
  // (set, hook name) -> activations.
  std::map<std::string, torch::Tensor> kept_;
  int64_t kept_bytes_ = 0;
  int64_t forward_passes_ = 0;
  int64_t hits_ = 0;
};

// Activations at each of `hooks` for `contexts` [n, seq], each [n * seq,
// hidden] on `device`, from one forward pass per chunk of
// `contexts_per_forward` contexts, stopping after the deepest hooked layer.
std::vector<torch::Tensor> CollectActivationsAt(
    const LanguageModel& model, const torch::Tensor& contexts,
    const std::vector<HookPoint>& hooks, int64_t contexts_per_forward,
    const torch::Device& device);

// `job_hooks` (layer, site name) as hook points. Errors: kInvalidArgument
// naming `field` for an unknown site or a layer outside [0, num_layers).
absl::StatusOr<std::vector<HookPoint>> ParseJobHooks(
    const std::vector<std::pair<int, std::string>>& job_hooks, int num_layers,
    const std::string& field);

// The ActivationCache scope of a checkpoint's activations on a token file.
std::string ActivationScope(const std::string& model_dir,
                            const std::string& tokens_path,
                            const std::string& token_dtype, int context_length);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_LM_ACTIVATION_CACHE_H_
