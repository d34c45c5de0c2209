// SaeTrainer: trains any Sae (sae.h) with Adam and the decoder constraint of
// DESIGN.md §3, tracks dead features, and saves / restores its whole state.
#ifndef SAETRACK_ENGINE_SAE_SAE_TRAINER_H_
#define SAETRACK_ENGINE_SAE_SAE_TRAINER_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "engine/sae/sae.h"

namespace saetrack::engine {

struct SaeTrainerOptions {
  // Adam learning rate after warm-up; it rises linearly from lr/warmup_steps
  // over the first warmup_steps steps and is constant after.
  double lr = 4e-4;
  int warmup_steps = 0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  // A feature is dead when it has not fired on any of the last
  // dead_window_tokens training tokens; 0 never declares one dead.
  int64_t dead_window_tokens = 0;
  // relu_l1: ghost grads for dead features.
  bool ghost_grads = false;
};

// Adam (PyTorch's update, fresh state) on the SAE's four tensors. Before each
// update the gradient component parallel to each decoder row is removed and
// after it the rows are renormalised, so decoder rows stay unit vectors. Not
// thread-safe; borrows `sae`, which must outlive the trainer.
class SaeTrainer {
 public:
  SaeTrainer(Sae* sae, const SaeTrainerOptions& options);

  // One optimisation step on the batch [n >= 2, d_in]; returns the loss before
  // the step.
  SaeLoss Step(const torch::Tensor& batch);

  int64_t steps() const { return steps_; }
  int64_t tokens() const { return tokens_; }

  // [d_sae] bool: the dead features (see dead_window_tokens).
  torch::Tensor DeadMask() const;

  // The SAE's weights, Adam's moments and the counters as safetensors bytes,
  // with `metadata` (string pairs) stored beside them.
  std::string SaveState(
      const std::map<std::string, std::string>& metadata) const;
  // Restores SaveState output into this trainer and its SAE; `metadata`
  // receives the pairs. Errors: kDataLoss for a malformed file,
  // kInvalidArgument when its shapes do not match the SAE. Nothing changes on
  // error.
  absl::Status RestoreState(std::string bytes,
                            std::map<std::string, std::string>* metadata);

 private:
  Sae* sae_;
  SaeTrainerOptions options_;
  SaeWeights exp_avg_;
  SaeWeights exp_avg_sq_;
  // Per feature: training tokens since it last fired (float64, on device).
  torch::Tensor tokens_since_fired_;
  int64_t steps_ = 0;
  int64_t tokens_ = 0;
};

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_SAE_SAE_TRAINER_H_
