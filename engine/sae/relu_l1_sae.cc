#include "engine/sae/relu_l1_sae.h"

#include <ATen/ATen.h>

namespace saetrack::engine {
namespace {

// Guards divisions by variances and norms that can be zero.
constexpr double kTiny = 1e-12;
// exp(pre) of a dead feature overflows float32 beyond ~88.
constexpr double kMaxGhostPreActivation = 30.0;

bool AnyDead(const StepContext& context) {
  return context.dead.defined() && context.dead.any().item<bool>();
}

}  // namespace

torch::Tensor ReluL1Sae::Encode(const torch::Tensor& x) const {
  return torch::relu(PreActivations(x));
}

torch::Tensor GhostGradLoss(const SaeWeights& weights, const torch::Tensor& x,
                            const torch::Tensor& x_hat,
                            const torch::Tensor& pre, const torch::Tensor& dead,
                            const torch::Tensor& reconstruction) {
  const torch::Tensor dead_index = dead.nonzero().flatten();
  if (dead_index.numel() == 0) return {};
  const torch::Tensor residual = (x - x_hat).detach();
  const torch::Tensor ghost_codes =
      pre.index_select(1, dead_index).clamp_max(kMaxGhostPreActivation).exp();
  torch::Tensor ghost_out =
      torch::mm(ghost_codes, weights.W_dec.index_select(0, dead_index));
  const torch::Tensor scale =
      (residual.norm(2, 1, /*keepdim=*/true) /
       (2 * ghost_out.norm(2, 1, /*keepdim=*/true)).clamp_min(kTiny))
          .detach();
  ghost_out = ghost_out * scale;
  const torch::Tensor ghost_error =
      NormalisedReconstructionError(ghost_out, residual);
  return ghost_error * (reconstruction / ghost_error.clamp_min(kTiny)).detach();
}

SaeLossTerms ReluL1Sae::LossTerms(const SaeWeights& weights,
                                  const torch::Tensor& x,
                                  const StepContext& context,
                                  torch::Tensor* fired) const {
  const torch::Tensor pre = PreActivations(weights, x);
  const torch::Tensor f = torch::relu(pre);
  const torch::Tensor x_hat =
      AddMatmul(weights.b_dec, f, weights.W_dec, precision());
  SaeLossTerms terms;
  terms.reconstruction = NormalisedReconstructionError(x_hat, x);
  // f >= 0, so its L1 norm is its sum.
  terms.sparsity = spec().l1_coefficient * f.sum(1).mean();
  if (context.ghost_grads && context.dead.defined()) {
    terms.auxiliary = GhostGradLoss(weights, x, x_hat, pre, context.dead,
                                    terms.reconstruction);
  }
  if (fired != nullptr) *fired = (f.detach().amax(0) > 0);
  return terms;
}

SaeLoss ReluL1Sae::LossAndGradients(const torch::Tensor& x,
                                    const StepContext& context,
                                    SaeWeights* gradients,
                                    torch::Tensor* fired) const {
  if (context.ghost_grads && AnyDead(context)) {
    return AutogradLossAndGradients(x, context, gradients, fired);
  }
  torch::NoGradGuard no_grad;
  const SaeWeights& w = weights();
  const MatmulPrecision p = precision();
  const double batch = static_cast<double>(x.size(0));
  const double l1 = spec().l1_coefficient;

  // Forward. `f` reuses the pre-activation buffer (ReLU in place).
  const torch::Tensor x_centred = x - w.b_dec;
  torch::Tensor f = AddMatmul(w.b_enc, x_centred, w.W_enc, p).relu_();
  torch::Tensor error = AddMatmul(w.b_dec, f, w.W_dec, p).sub_(x);
  const torch::Tensor variance =
      (x - x.mean(0, /*keepdim=*/true)).pow(2).sum().clamp_min(kTiny);
  const torch::Tensor squared_error = error.pow(2).sum();
  const torch::Tensor l1_sum = f.sum();

  // Backward. d loss / d x_hat = 2 (x_hat - x) / variance, in place.
  const torch::Tensor d_x_hat = error.mul_(2.0 / variance.item<double>());
  gradients->W_dec = Matmul(f.t(), d_x_hat, p);
  // d loss / d f = d_x_hat W_dec^T + l1 / batch, then through the ReLU:
  // zero where f == 0 (the subgradient 0 at the kink, as autograd).
  torch::Tensor d_pre = Matmul(d_x_hat, w.W_dec.t(), p).add_(l1 / batch);
  d_pre = at::threshold_backward(d_pre, f, 0);
  gradients->W_enc = Matmul(x_centred.t(), d_pre, p);
  gradients->b_enc = d_pre.sum(0);
  // b_dec enters the decoder (+) and the encoder input (-): the encoder part
  // sums over the batch before the product, a GEMV instead of a GEMM.
  gradients->b_dec = d_x_hat.sum(0) - torch::mv(w.W_enc, gradients->b_enc);
  if (fired != nullptr) *fired = f.amax(0) > 0;

  SaeLoss loss;
  const double variance_value = variance.item<double>();
  loss.reconstruction = squared_error.item<double>() / variance_value;
  loss.sparsity = l1 * l1_sum.item<double>() / batch;
  loss.total = loss.reconstruction + loss.sparsity;
  return loss;
}

}  // namespace saetrack::engine
