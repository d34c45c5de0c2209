// relu_l1: the SAE of the SAE-Track paper (DESIGN.md §3).
//
//   f    = ReLU(pre)
//   loss = normalised reconstruction error + l1_coefficient * mean_b ||f_b||_1
//        [+ ghost-grad term for dead features, first SAE of a chain]
#ifndef SAETRACK_ENGINE_SAE_RELU_L1_SAE_H_
#define SAETRACK_ENGINE_SAE_RELU_L1_SAE_H_

#include <torch/torch.h>

#include "engine/sae/sae.h"

namespace saetrack::engine {

class ReluL1Sae : public Sae {
 public:
  using Sae::Sae;

  torch::Tensor Encode(const torch::Tensor& x) const override;

  // Hand-written backward: five GEMMs (autograd needs a sixth for b_dec's
  // gradient through the encoder, which is a GEMV once summed over the batch)
  // and no autograd graph. Steps with ghost grads (dead features present) take
  // the autograd path.
  SaeLoss LossAndGradients(const torch::Tensor& x, const StepContext& context,
                           SaeWeights* gradients,
                           torch::Tensor* fired) const override;

  SaeLossTerms LossTerms(const SaeWeights& weights, const torch::Tensor& x,
                         const StepContext& context,
                         torch::Tensor* fired) const override;
};

// The ghost-grad term (Jermyn & Templeton, 2024; as in SAELens) for features
// `dead` [d_sae] bool: the dead features' exp(pre-activations), decoded
// without b_dec and scaled per token to half the norm of the reconstruction
// residual, are fitted to that residual; the term is rescaled to the size of
// the reconstruction error, so it revives dead features without changing the
// live ones. Differentiable in `weights`; undefined when nothing is dead.
torch::Tensor GhostGradLoss(const SaeWeights& weights, const torch::Tensor& x,
                            const torch::Tensor& x_hat,
                            const torch::Tensor& pre, const torch::Tensor& dead,
                            const torch::Tensor& reconstruction);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_SAE_RELU_L1_SAE_H_
