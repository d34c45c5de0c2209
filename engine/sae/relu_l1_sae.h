// relu_l1: the SAE of the SAE-Track paper (DESIGN.md §3).
//
//   f    = ReLU(pre)
//   loss = PaperReconstructionError(x_hat, x)
//        + l1_coefficient * mean_b sum_j f_bj ||W_dec[j]||
//        [+ ghost-grad term for dead features, first SAE of a chain]
//
// as the paper's reference code computes it: both terms scale linearly with
// the activations, so one l1_coefficient means the same at every checkpoint
// (the activations are normalised as well, DESIGN.md §3).
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
  // the autograd path. Tests check it against autograd and finite
  // differences.
  SaeLoss LossAndGradients(const torch::Tensor& x, const StepContext& context,
                           SaeWeights* gradients,
                           torch::Tensor* fired) const override;

  SaeLossTerms LossTerms(const SaeWeights& weights, const torch::Tensor& x,
                         const StepContext& context,
                         torch::Tensor* fired) const override;
};

// The ghost-grad term (Jermyn & Templeton, 2024) for features `dead`
// [d_sae] bool, as the paper's reference code computes it: the dead
// features' exp(pre-activations), decoded without b_dec and scaled per token
// to half the norm of the reconstruction residual r, are fitted to r with the
// per-element error (g_bk - r_bk)^2 / ||r_b||; each element is rescaled
// (detached) to the size of the same element of the reconstruction error
// (x_hat_bk - x_bk)^2 / ||x_b - mean_batch(x)||, then averaged. It revives dead
// features without changing the live ones. Differentiable in `weights`;
// undefined when nothing is dead.
torch::Tensor GhostGradLoss(const SaeWeights& weights, const torch::Tensor& x,
                            const torch::Tensor& x_hat,
                            const torch::Tensor& pre,
                            const torch::Tensor& dead);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_SAE_RELU_L1_SAE_H_
