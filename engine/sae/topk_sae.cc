#include "engine/sae/topk_sae.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace saetrack::engine {
namespace {

// Below this k / d_sae the gather decoder beats the dense product.
constexpr int64_t kSparseDecodeRatio = 16;

}  // namespace

TopKSae::TopKSae(SaeSpec spec, SaeWeights weights, MatmulPrecision precision)
    : Sae(std::move(spec), std::move(weights), precision),
      aux_k_(this->spec().aux_k > 0 ? this->spec().aux_k
                                    : 2 * int64_t{this->spec().k}),
      dense_decode_(int64_t{this->spec().k} * kSparseDecodeRatio > d_sae()) {}

std::pair<torch::Tensor, torch::Tensor> TopKSae::TopCodes(
    const torch::Tensor& pre, int64_t k) const {
  auto [values, indices] = pre.topk(k, /*dim=*/1);
  return {torch::relu(values), indices};
}

torch::Tensor TopKSae::DecodeSparse(const torch::Tensor& W_dec,
                                    const torch::Tensor& values,
                                    const torch::Tensor& indices) const {
  const int64_t rows = indices.size(0);
  const int64_t k = indices.size(1);
  const torch::Tensor offsets = torch::arange(
      0, rows * k, k, torch::dtype(torch::kLong).device(indices.device()));
  return std::get<0>(torch::embedding_bag(
      W_dec, indices.reshape({-1}), offsets, /*scale_grad_by_freq=*/false,
      /*mode=*/0 /* sum */, /*sparse=*/false, values.reshape({-1})));
}

torch::Tensor TopKSae::Encode(const torch::Tensor& x) const {
  auto [values, indices] = TopCodes(PreActivations(x), spec().k);
  return torch::zeros({x.size(0), d_sae()}, values.options())
      .scatter_(1, indices, values);
}

torch::Tensor TopKSae::Reconstruct(const torch::Tensor& x) const {
  if (dense_decode_) return Decode(Encode(x));
  auto [values, indices] = TopCodes(PreActivations(x), spec().k);
  return DecodeSparse(weights().W_dec, values, indices) + weights().b_dec;
}

SaeLossTerms TopKSae::LossTerms(const SaeWeights& weights,
                                const torch::Tensor& x,
                                const StepContext& context,
                                torch::Tensor* fired) const {
  const torch::Tensor pre = PreActivations(weights, x);
  auto [values, indices] = TopCodes(pre, spec().k);
  torch::Tensor x_hat;
  if (dense_decode_) {
    const torch::Tensor f = torch::zeros({x.size(0), d_sae()}, values.options())
                                .scatter(1, indices, values);
    x_hat = AddMatmul(weights.b_dec, f, weights.W_dec, precision());
  } else {
    x_hat = DecodeSparse(weights.W_dec, values, indices) + weights.b_dec;
  }
  SaeLossTerms terms;
  terms.reconstruction = NormalisedReconstructionError(x_hat, x);
  if (context.dead.defined()) {
    const int64_t dead_count = context.dead.sum().item<int64_t>();
    if (dead_count > 0 && spec().aux_coefficient > 0) {
      const torch::Tensor residual = (x - x_hat).detach();
      const torch::Tensor dead_pre = pre.masked_fill(
          context.dead.logical_not(), -std::numeric_limits<float>::infinity());
      auto [aux_values, aux_indices] =
          TopCodes(dead_pre, std::min(aux_k_, dead_count));
      const torch::Tensor residual_hat =
          DecodeSparse(weights.W_dec, aux_values, aux_indices);
      terms.auxiliary = spec().aux_coefficient *
                        NormalisedReconstructionError(residual_hat, residual);
    }
  }
  if (fired != nullptr) {
    *fired =
        torch::zeros({d_sae()}, torch::dtype(torch::kBool).device(x.device()))
            .index_fill_(0, indices.detach().masked_select(values > 0), true);
  }
  return terms;
}

}  // namespace saetrack::engine
