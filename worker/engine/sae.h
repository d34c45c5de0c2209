// The ReLU sparse autoencoder of SAE-Track (DESIGN.md §3) and its trainer.
//
//   f     = ReLU((x - b_dec) W_enc + b_enc)      W_enc [d_in, d_sae]
//   x_hat = f W_dec + b_dec                      W_dec [d_sae, d_in]
//   loss  = sum_b ||x_hat_b - x_b||^2 / sum_b ||x_b - mean_batch(x)||^2
//         + l1_coefficient * mean_b ||f_b||_1
//
// The reconstruction term is the batch's fraction of variance unexplained
// (sums over batch and dimensions in numerator and denominator, so it is
// scale-free); the sparsity term is the L1 norm of the codes summed over
// features and averaged over the batch.
#ifndef SAETRACK_WORKER_ENGINE_SAE_H_
#define SAETRACK_WORKER_ENGINE_SAE_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::engine {

// SAE weights. Owns its tensors (float32, one device). The trainer updates
// them in place.
struct ReluSae {
  torch::Tensor W_enc;  // [d_in, d_sae]
  torch::Tensor b_enc;  // [d_sae]
  torch::Tensor W_dec;  // [d_sae, d_in], rows of unit norm
  torch::Tensor b_dec;  // [d_in]

  int64_t d_in() const { return W_enc.size(0); }
  int64_t d_sae() const { return W_enc.size(1); }

  // Codes [n, d_sae] for activations [n, d_in].
  torch::Tensor Encode(const torch::Tensor& x) const;
  // Reconstructions [n, d_in] for codes [n, d_sae].
  torch::Tensor Decode(const torch::Tensor& f) const;

  // A deep copy (on the same device).
  ReluSae Clone() const;
};

// A from-scratch SAE: W_enc and W_dec Kaiming-uniform (as torch's
// kaiming_uniform_, fan_in = size(1)), decoder rows normalised to unit norm,
// b_enc = 0, b_dec = geometric median of `sample` [n, d_in]. Deterministic
// for `seed`.
ReluSae InitSaeFromScratch(int64_t d_sae, const torch::Tensor& sample,
                           uint64_t seed);

// The geometric median of the rows of `points` [n, d] by Weiszfeld's
// algorithm, at most `max_iterations` steps, stopping early once a step moves
// the estimate by less than `tolerance` times its norm.
torch::Tensor GeometricMedian(const torch::Tensor& points,
                              int max_iterations = 100,
                              double tolerance = 1e-5);

// Serialises to safetensors bytes in SAELens layout (W_enc, b_enc, W_dec,
// b_dec; F32). Deserialising reproduces the tensors bit-for-bit.
std::string SaeToSafetensors(const ReluSae& sae);

// Parses SaeToSafetensors output onto `device`. Errors: kDataLoss for a
// malformed file (naming tensor and byte offset); kInvalidArgument when a
// tensor is missing, not F32, or the four shapes are inconsistent.
absl::StatusOr<ReluSae> SaeFromSafetensors(std::string bytes,
                                           const torch::Device& device);

struct SaeLoss {
  torch::Tensor total;        // scalar, differentiable
  double reconstruction = 0;  // normalised reconstruction term
  double sparsity = 0;        // l1_coefficient * mean L1
};

// The loss of the header comment on one batch [n, d_in].
SaeLoss ComputeSaeLoss(const ReluSae& sae, const torch::Tensor& x,
                       double l1_coefficient);

struct SaeTrainerOptions {
  double l1_coefficient = 8e-5;
  // Adam learning rate after warm-up; it rises linearly from lr/warmup_steps
  // over the first warmup_steps steps and is constant after.
  double lr = 4e-4;
  int warmup_steps = 0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
};

// Trains an SAE with Adam (fresh optimiser state), keeping decoder rows at
// unit norm: before each Adam step the gradient component parallel to each
// decoder row is removed, and after it the rows are renormalised. Not
// thread-safe; borrows `sae`, which must outlive the trainer.
class SaeTrainer {
 public:
  SaeTrainer(ReluSae* sae, const SaeTrainerOptions& options);
  ~SaeTrainer();

  // One optimisation step on the batch [n, d_in]; returns the loss before the
  // step.
  SaeLoss Step(const torch::Tensor& batch);

  int64_t steps() const { return steps_; }

 private:
  ReluSae* sae_;
  SaeTrainerOptions options_;
  std::unique_ptr<torch::optim::Adam> optimizer_;
  int64_t steps_ = 0;
};

// Held-out evaluation of an SAE.
struct SaeEvaluation {
  double mse = 0;                // mean over tokens of ||x_hat - x||^2 / d_in
  double fvu = 0;                // sum ||x_hat - x||^2 / sum ||x - mean(x)||^2
  double l0 = 0;                 // mean number of active features per token
  double dead_fraction = 0;      // features that never fired
  std::vector<float> frequency;  // per feature: fraction of tokens > 0
  std::vector<float> mean_activation;  // per feature: mean of f_i
  std::vector<float> max_activation;   // per feature
  std::vector<float> encoder_norm;     // per feature: ||W_enc[:, i]||
};

// Evaluates on `activations` [n, d_in] in chunks of at most `chunk_rows`
// rows (fewer for very wide SAEs, to bound memory). REQUIRES: n > 0.
SaeEvaluation EvaluateSae(const ReluSae& sae, const torch::Tensor& activations,
                          int64_t chunk_rows = 4096);

// cos(W_dec[i], reference.W_dec[i]) per feature. REQUIRES: equal shapes.
std::vector<float> DecoderCosines(const ReluSae& sae, const ReluSae& reference);

}  // namespace saetrack::engine

#endif  // SAETRACK_WORKER_ENGINE_SAE_H_
