#include "engine/sae/relu_l1_sae.h"

#include <ATen/ATen.h>

namespace saetrack::engine {
namespace {

// Guards divisions by variances and norms that can be zero.
constexpr double kTiny = 1e-12;
// exp(pre) of a dead feature overflows float32 beyond ~88.
constexpr double kMaxGhostPreActivation = 30.0;
// The reference code's guard in the ghost-grad scale and rescaling.
constexpr double kGhostEpsilon = 1e-6;

bool AnyDead(const StepContext& context) {
  return context.dead.defined() && context.dead.any().item<bool>();
}

}  // namespace

torch::Tensor ReluL1Sae::Encode(const torch::Tensor& x) const {
  return torch::relu(PreActivations(x));
}

torch::Tensor GhostGradLoss(const SaeWeights& weights, const torch::Tensor& x,
                            const torch::Tensor& x_hat,
                            const torch::Tensor& pre,
                            const torch::Tensor& dead) {
  const torch::Tensor dead_index = dead.nonzero().flatten();
  if (dead_index.numel() == 0) return {};
  const torch::Tensor residual = (x - x_hat).detach();
  const torch::Tensor residual_norm =
      residual.norm(2, 1, /*keepdim=*/true).clamp_min(kTiny);
  const torch::Tensor ghost_codes =
      pre.index_select(1, dead_index).clamp_max(kMaxGhostPreActivation).exp();
  torch::Tensor ghost_out =
      torch::mm(ghost_codes, weights.W_dec.index_select(0, dead_index));
  const torch::Tensor scale =
      (residual_norm / (kGhostEpsilon + 2 * ghost_out.norm(2, 1, true)))
          .detach();
  ghost_out = ghost_out * scale;
  const torch::Tensor ghost_error =
      (ghost_out - residual).pow(2) / residual_norm;
  const torch::Tensor reconstruction_error =
      ((x_hat - x).pow(2) / CentredTokenNorms(x)).detach();
  return (ghost_error *
          (reconstruction_error / (ghost_error + kGhostEpsilon)).detach())
      .mean();
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
  terms.reconstruction = PaperReconstructionError(x_hat, x);
  // f >= 0, so |f_bj| = f_bj.
  terms.sparsity =
      spec().l1_coefficient * torch::mv(f, weights.W_dec.norm(2, 1)).mean();
  if (context.ghost_grads && context.dead.defined()) {
    terms.auxiliary = GhostGradLoss(weights, x, x_hat, pre, context.dead);
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
  const double elements = batch * static_cast<double>(x.size(1));
  const double l1 = spec().l1_coefficient;

  // Forward. `f` reuses the pre-activation buffer (ReLU in place).
  const torch::Tensor x_centred = x - w.b_dec;
  torch::Tensor f = AddMatmul(w.b_enc, x_centred, w.W_enc, p).relu_();
  torch::Tensor error = AddMatmul(w.b_dec, f, w.W_dec, p).sub_(x);
  const torch::Tensor token_norms = CentredTokenNorms(x);  // [n, 1]
  const torch::Tensor row_norms = w.W_dec.norm(2, 1);      // [d_sae]
  const torch::Tensor feature_sums = f.sum(0);             // [d_sae]
  const double reconstruction =
      (error.pow(2) / token_norms).sum().item<double>() / elements;
  const double sparsity =
      l1 * torch::dot(feature_sums, row_norms).item<double>() / batch;

  // Backward. d loss / d x_hat = 2 (x_hat - x) / (n d_in ||x_b - mean||),
  // in place.
  const torch::Tensor d_x_hat = error.div_(token_norms).mul_(2.0 / elements);
  // The L1 term's row norms: d/dW_dec[j] = l1 / n * sum_b f_bj * unit row j.
  gradients->W_dec = Matmul(f.t(), d_x_hat, p)
                         .add_(w.W_dec * (feature_sums * (l1 / batch) /
                                          row_norms.clamp_min(kTiny))
                                             .unsqueeze(1));
  // d loss / d f = d_x_hat W_dec^T + l1 / n * ||W_dec[j]||, then through the
  // ReLU: zero where f == 0 (the subgradient 0 at the kink, as autograd).
  torch::Tensor d_pre = Matmul(d_x_hat, w.W_dec.t(), p)
                            .add_(row_norms.unsqueeze(0) * (l1 / batch));
  d_pre = at::threshold_backward(d_pre, f, 0);
  gradients->W_enc = Matmul(x_centred.t(), d_pre, p);
  gradients->b_enc = d_pre.sum(0);
  // b_dec enters the decoder (+) and the encoder input (-): the encoder part
  // sums over the batch before the product, a GEMV instead of a GEMM.
  gradients->b_dec = d_x_hat.sum(0) - torch::mv(w.W_enc, gradients->b_enc);
  if (fired != nullptr) *fired = f.amax(0) > 0;

  SaeLoss loss;
  loss.reconstruction = reconstruction;
  loss.sparsity = sparsity;
  loss.total = loss.reconstruction + loss.sparsity;
  return loss;
}

}  // namespace saetrack::engine
