// Sparse autoencoders of SAE-Track (DESIGN.md §3): the weights every
// architecture shares, the Sae interface each architecture implements, and
// what is common to all of them (initialisation, serialisation, evaluation).
//
// Every architecture encodes with the same affine map and decodes linearly:
//
//   pre   = (x - b_dec) W_enc + b_enc           W_enc [d_in, d_sae]
//   f     = activation(pre)                      (ReLU, TopK, ...)
//   x_hat = f W_dec + b_dec                      W_dec [d_sae, d_in]
//
// and is trained on a reconstruction error plus the architecture's own terms:
// relu_l1 on the paper's (PaperReconstructionError), topk on the batch's
// fraction of variance unexplained (NormalisedReconstructionError). An
// architecture is one class (relu_l1_sae.h, topk_sae.h) registered by name in
// MakeSae; adding one touches nothing else.
#ifndef SAETRACK_ENGINE_SAE_SAE_H_
#define SAETRACK_ENGINE_SAE_SAE_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::engine {

// The four tensors of an SAE (float32, one device).
struct SaeWeights {
  torch::Tensor W_enc;  // [d_in, d_sae]
  torch::Tensor b_enc;  // [d_sae]
  torch::Tensor W_dec;  // [d_sae, d_in], rows of unit norm
  torch::Tensor b_dec;  // [d_in]

  int64_t d_in() const { return W_enc.size(0); }
  int64_t d_sae() const { return W_enc.size(1); }

  // A deep copy (on the same device).
  SaeWeights Clone() const;
  // Zero tensors of the same shapes.
  SaeWeights ZerosLike() const;
};

// Precision of the SAE's matrix products. kBf16 rounds both operands to
// bfloat16 and accumulates in fp32; weights, gradients and the optimiser
// stay fp32 (master weights).
enum class MatmulPrecision { kFp32, kBf16 };

// a · b (+ bias) at `precision`; the result is float32.
torch::Tensor Matmul(const torch::Tensor& a, const torch::Tensor& b,
                     MatmulPrecision precision);
torch::Tensor AddMatmul(const torch::Tensor& bias, const torch::Tensor& a,
                        const torch::Tensor& b, MatmulPrecision precision);

// What defines an SAE's activation and loss, besides its weights.
struct SaeSpec {
  // A name MakeSae knows: "relu_l1" or "topk".
  std::string architecture = "relu_l1";
  // relu_l1: coefficient of mean_b ||f_b||_1.
  double l1_coefficient = 8e-5;
  // topk: active latents per token, latents of the AuxK loss (0: 2k) and the
  // AuxK coefficient.
  int k = 32;
  int aux_k = 0;
  double aux_coefficient = 1.0 / 32;
};

// The training loss on one batch, split into its terms.
struct SaeLoss {
  double total = 0;
  double reconstruction = 0;  // the normalised reconstruction error
  double sparsity = 0;        // relu_l1: l1_coefficient * mean L1
  double auxiliary = 0;       // ghost grads (relu_l1) or AuxK (topk)
};

// The same terms as differentiable scalars (autograd reference path).
struct SaeLossTerms {
  torch::Tensor reconstruction;
  torch::Tensor sparsity;   // undefined when the architecture has none
  torch::Tensor auxiliary;  // undefined when not active this step
};

// What the trainer knows at a step beyond the batch.
struct StepContext {
  // [d_sae] bool: features that have not fired for the dead window. Undefined
  // while no window has passed.
  torch::Tensor dead;
  // relu_l1: add the ghost-grad term for dead features.
  bool ghost_grads = false;
};

class Sae {
 public:
  Sae(SaeSpec spec, SaeWeights weights, MatmulPrecision precision)
      : spec_(std::move(spec)),
        weights_(std::move(weights)),
        precision_(precision) {}
  virtual ~Sae() = default;

  const SaeSpec& spec() const { return spec_; }
  const SaeWeights& weights() const { return weights_; }
  SaeWeights& mutable_weights() { return weights_; }
  MatmulPrecision precision() const { return precision_; }
  int64_t d_in() const { return weights_.d_in(); }
  int64_t d_sae() const { return weights_.d_sae(); }

  // pre = (x - b_dec) W_enc + b_enc for x [n, d_in].
  torch::Tensor PreActivations(const torch::Tensor& x) const;
  // Dense codes f [n, d_sae].
  virtual torch::Tensor Encode(const torch::Tensor& x) const = 0;
  // f W_dec + b_dec for dense codes f [n, d_sae].
  torch::Tensor Decode(const torch::Tensor& f) const;
  // Decode(Encode(x)); architectures with sparse codes decode without
  // materialising them.
  virtual torch::Tensor Reconstruct(const torch::Tensor& x) const;

  // The loss on batch x [n >= 2, d_in] and its gradient with respect to each
  // weight tensor, written to `gradients` (same shapes; tensors replaced).
  // `fired` receives a [d_sae] bool tensor of the features that fired on any
  // row. The default differentiates LossTerms with autograd; architectures
  // override it with a hand-written backward where that is faster, and tests
  // check the two agree.
  virtual SaeLoss LossAndGradients(const torch::Tensor& x,
                                   const StepContext& context,
                                   SaeWeights* gradients,
                                   torch::Tensor* fired) const;

  // The loss terms as functions of `weights` (which may require grad), for
  // autograd. `fired` as above.
  virtual SaeLossTerms LossTerms(const SaeWeights& weights,
                                 const torch::Tensor& x,
                                 const StepContext& context,
                                 torch::Tensor* fired) const = 0;

  // LossAndGradients through autograd over LossTerms.
  SaeLoss AutogradLossAndGradients(const torch::Tensor& x,
                                   const StepContext& context,
                                   SaeWeights* gradients,
                                   torch::Tensor* fired) const;

  // The loss without gradients (evaluation, tests).
  SaeLoss Loss(const torch::Tensor& x, const StepContext& context = {}) const;

 protected:
  // pre-activations for `weights` (autograd-friendly).
  torch::Tensor PreActivations(const SaeWeights& weights,
                               const torch::Tensor& x) const;

 private:
  SaeSpec spec_;
  SaeWeights weights_;
  MatmulPrecision precision_;
};

// The SAE of `spec.architecture` with `weights`. Errors: kInvalidArgument for
// an unknown architecture or bad parameters (naming the SaeSpec field).
absl::StatusOr<std::unique_ptr<Sae>> MakeSae(
    const SaeSpec& spec, SaeWeights weights,
    MatmulPrecision precision = MatmulPrecision::kFp32);

// The architectures MakeSae knows, in a stable order.
std::vector<std::string> SaeArchitectures();

// The batch's fraction of variance unexplained, differentiable:
//
//   sum_b ||x_hat_b - x_b||^2 / sum_b ||x_b - mean_batch(x)||^2
//
// Scale-free.
torch::Tensor NormalisedReconstructionError(const torch::Tensor& x_hat,
                                            const torch::Tensor& x);

// The reconstruction error of the paper's reference code (DESIGN.md §3),
// differentiable: per element, the squared error divided by the token's
// centred L2 norm (not squared), averaged over batch × d_in:
//
//   mean_{b,k} (x_hat_bk - x_bk)^2 / ||x_b - mean_batch(x)||_2
//
// It scales linearly with the activations, as the L1 term does.
torch::Tensor PaperReconstructionError(const torch::Tensor& x_hat,
                                       const torch::Tensor& x);

// [n, 1]: each token's centred L2 norm ||x_b - mean_batch(x)||_2 (the
// denominator of PaperReconstructionError), floored away from zero.
torch::Tensor CentredTokenNorms(const torch::Tensor& x);

// A from-scratch SAE: W_enc and W_dec Kaiming-uniform (as torch's
// kaiming_uniform_, fan_in = size(1)), decoder rows normalised to unit norm,
// b_enc = 0, b_dec = geometric median of `sample` [n, d_in]. Deterministic
// for `seed`.
SaeWeights InitSaeFromScratch(int64_t d_sae, const torch::Tensor& sample,
                              uint64_t seed);

// The geometric median of the rows of `points` [n, d] by Weiszfeld's
// algorithm, at most `max_iterations` steps, stopping early once a step moves
// the estimate by less than `tolerance` times its norm.
torch::Tensor GeometricMedian(const torch::Tensor& points,
                              int max_iterations = 100,
                              double tolerance = 1e-5);

// Serialises to safetensors bytes in SAELens layout (W_enc, b_enc, W_dec,
// b_dec; F32). Deserialising reproduces the tensors bit-for-bit.
std::string SaeToSafetensors(const SaeWeights& weights);

// Parses SaeToSafetensors output onto `device`. Errors: kDataLoss for a
// malformed file (naming tensor and byte offset); kInvalidArgument when a
// tensor is missing, not F32, or the four shapes are inconsistent.
absl::StatusOr<SaeWeights> SaeFromSafetensors(std::string bytes,
                                              const torch::Device& device);

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
SaeEvaluation EvaluateSae(const Sae& sae, const torch::Tensor& activations,
                          int64_t chunk_rows = 4096);

// Only the FVU (cheaper: no per-feature statistics).
double HeldOutFvu(const Sae& sae, const torch::Tensor& activations,
                  int64_t chunk_rows = 4096);

// Counts of features per density bin (see kDensityLog10Min in
// training_engine.h) for per-feature firing frequencies.
std::vector<int64_t> DensityHistogram(const std::vector<float>& frequency);

// Activation normalisation (DESIGN.md §3, SAELens'
// `expected_average_only_in`): an SAE is trained on s·x with
// s = sqrt(d_in) / E||x|| of its checkpoint. FoldActivationScale turns such
// an SAE into one on raw activations x with the same codes and x_hat / s as
// its reconstruction: W_enc·s, b_enc, W_dec/s, b_dec/s. Its decoder rows then
// have norm 1/s, which is how ActivationScaleOf recovers s from stored
// weights (1 / the median row norm; 1 for unit rows) and UnfoldActivationScale
// undoes the fold. REQUIRES: scale > 0 and finite.
SaeWeights FoldActivationScale(const SaeWeights& weights, double scale);
SaeWeights UnfoldActivationScale(const SaeWeights& weights, double scale);
double ActivationScaleOf(const SaeWeights& weights);

// sqrt(d) / mean_b ||sample_b|| for sample [n, d]; 1 when the mean norm is 0.
double ActivationScale(const torch::Tensor& sample);

// cos(W_dec[i], reference.W_dec[i]) per feature. REQUIRES: equal shapes.
std::vector<float> DecoderCosines(const SaeWeights& sae,
                                  const SaeWeights& reference);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_SAE_SAE_H_
