// topk: k active latents per token (Gao et al., 2024).
//
//   f    = ReLU(TopK_k(pre))          (the k largest pre-activations of each
//                                       token, the rest zero)
//   loss = normalised reconstruction error
//        + aux_coefficient * AuxK
//
// AuxK: the reconstruction residual x - x_hat (a constant target) is
// reconstructed from the top aux_k pre-activations among dead latents alone
// (decoded without b_dec), with the same normalised error. It gives dead
// latents a gradient and is zero while none is dead.
//
// Codes have k non-zeros per row, so decoding gathers k decoder rows per
// token (embedding_bag with per-sample weights) instead of multiplying by the
// whole [n, d_sae] code matrix, when k is small relative to d_sae.
#ifndef SAETRACK_ENGINE_SAE_TOPK_SAE_H_
#define SAETRACK_ENGINE_SAE_TOPK_SAE_H_

#include <torch/torch.h>

#include "engine/sae/sae.h"

namespace saetrack::engine {

class TopKSae : public Sae {
 public:
  // REQUIRES: 0 < spec.k <= d_sae, 0 <= spec.aux_k (MakeSae checks).
  TopKSae(SaeSpec spec, SaeWeights weights, MatmulPrecision precision);

  torch::Tensor Encode(const torch::Tensor& x) const override;
  torch::Tensor Reconstruct(const torch::Tensor& x) const override;

  SaeLossTerms LossTerms(const SaeWeights& weights, const torch::Tensor& x,
                         const StepContext& context,
                         torch::Tensor* fired) const override;

  // Forces the dense (true) or the sparse (false) decoder; by default sparse
  // when k is at most a sixteenth of d_sae. Both compute the same function.
  void set_dense_decode(bool dense) { dense_decode_ = dense; }
  bool dense_decode() const { return dense_decode_; }

 private:
  // The top-k codes of each row: values (ReLU applied) and indices, [n, k].
  std::pair<torch::Tensor, torch::Tensor> TopCodes(const torch::Tensor& pre,
                                                   int64_t k) const;
  // sum_j values[b, j] * W_dec[indices[b, j]], [n, d_in].
  torch::Tensor DecodeSparse(const torch::Tensor& W_dec,
                             const torch::Tensor& values,
                             const torch::Tensor& indices) const;

  int64_t aux_k_;
  bool dense_decode_;
};

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_SAE_TOPK_SAE_H_
