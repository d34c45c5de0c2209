#include "engine/sae/sae.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/training_engine.h"
#include "format/safetensors.h"

namespace saetrack::engine {
namespace {

// Guards divisions by norms and variances that can be zero.
constexpr double kTiny = 1e-12;
// Largest code matrix EvaluateSae materialises at once (256 MiB of floats).
constexpr int64_t kMaxCodeElementsPerChunk = int64_t{1} << 26;

torch::Tensor KaimingUniform(std::vector<int64_t> shape,
                             at::Generator& generator) {
  // torch.nn.init.kaiming_uniform_ defaults: a = 0, fan_in = size(1),
  // gain = sqrt(2), bound = gain * sqrt(3 / fan_in).
  const double bound = std::sqrt(6.0 / static_cast<double>(shape[1]));
  return (torch::rand(shape, generator, torch::kFloat32) * 2 - 1) * bound;
}

torch::Tensor NormaliseRows(const torch::Tensor& matrix) {
  return matrix / matrix.norm(2, /*dim=*/1, /*keepdim=*/true).clamp_min(kTiny);
}

std::vector<float> ToVector(const torch::Tensor& tensor) {
  torch::Tensor cpu =
      tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(cpu.data_ptr<float>(),
                            cpu.data_ptr<float>() + cpu.numel());
}

}  // namespace

SaeWeights SaeWeights::Clone() const {
  return SaeWeights{W_enc.detach().clone(), b_enc.detach().clone(),
                    W_dec.detach().clone(), b_dec.detach().clone()};
}

SaeWeights SaeWeights::ZerosLike() const {
  return SaeWeights{torch::zeros_like(W_enc), torch::zeros_like(b_enc),
                    torch::zeros_like(W_dec), torch::zeros_like(b_dec)};
}

torch::Tensor Matmul(const torch::Tensor& a, const torch::Tensor& b,
                     MatmulPrecision precision) {
  if (precision == MatmulPrecision::kFp32) return torch::mm(a, b);
  return torch::mm(a.to(torch::kBFloat16), b.to(torch::kBFloat16))
      .to(torch::kFloat32);
}

torch::Tensor AddMatmul(const torch::Tensor& bias, const torch::Tensor& a,
                        const torch::Tensor& b, MatmulPrecision precision) {
  if (precision == MatmulPrecision::kFp32) return torch::addmm(bias, a, b);
  return Matmul(a, b, precision) + bias;
}

torch::Tensor NormalisedReconstructionError(const torch::Tensor& x_hat,
                                            const torch::Tensor& x) {
  return (x_hat - x).pow(2).sum() /
         (x - x.mean(0, /*keepdim=*/true)).pow(2).sum().clamp_min(kTiny);
}

torch::Tensor CentredTokenNorms(const torch::Tensor& x) {
  return (x - x.mean(0, /*keepdim=*/true))
      .norm(2, 1, /*keepdim=*/true)
      .clamp_min(kTiny);
}

torch::Tensor PaperReconstructionError(const torch::Tensor& x_hat,
                                       const torch::Tensor& x) {
  return ((x_hat - x).pow(2) / CentredTokenNorms(x)).mean();
}

torch::Tensor Sae::PreActivations(const SaeWeights& weights,
                                  const torch::Tensor& x) const {
  return AddMatmul(weights.b_enc, x - weights.b_dec, weights.W_enc, precision_);
}

torch::Tensor Sae::PreActivations(const torch::Tensor& x) const {
  return PreActivations(weights_, x);
}

torch::Tensor Sae::Decode(const torch::Tensor& f) const {
  return AddMatmul(weights_.b_dec, f, weights_.W_dec, precision_);
}

torch::Tensor Sae::Reconstruct(const torch::Tensor& x) const {
  return Decode(Encode(x));
}

SaeLoss Sae::LossAndGradients(const torch::Tensor& x,
                              const StepContext& context, SaeWeights* gradients,
                              torch::Tensor* fired) const {
  return AutogradLossAndGradients(x, context, gradients, fired);
}

namespace {

SaeLoss ToLoss(const SaeLossTerms& terms) {
  SaeLoss loss;
  loss.reconstruction = terms.reconstruction.item<double>();
  if (terms.sparsity.defined()) loss.sparsity = terms.sparsity.item<double>();
  if (terms.auxiliary.defined()) {
    loss.auxiliary = terms.auxiliary.item<double>();
  }
  loss.total = loss.reconstruction + loss.sparsity + loss.auxiliary;
  return loss;
}

}  // namespace

SaeLoss Sae::AutogradLossAndGradients(const torch::Tensor& x,
                                      const StepContext& context,
                                      SaeWeights* gradients,
                                      torch::Tensor* fired) const {
  // Leaves that share storage with the weights: autograd writes their .grad
  // and the weights themselves never carry autograd state.
  SaeWeights leaves{weights_.W_enc.detach().requires_grad_(),
                    weights_.b_enc.detach().requires_grad_(),
                    weights_.W_dec.detach().requires_grad_(),
                    weights_.b_dec.detach().requires_grad_()};
  torch::AutoGradMode enable_grad(true);
  const SaeLossTerms terms = LossTerms(leaves, x, context, fired);
  torch::Tensor total = terms.reconstruction;
  if (terms.sparsity.defined()) total = total + terms.sparsity;
  if (terms.auxiliary.defined()) total = total + terms.auxiliary;
  total.backward();
  auto grad_or_zeros = [](const torch::Tensor& leaf) {
    return leaf.grad().defined() ? leaf.grad() : torch::zeros_like(leaf);
  };
  *gradients =
      SaeWeights{grad_or_zeros(leaves.W_enc), grad_or_zeros(leaves.b_enc),
                 grad_or_zeros(leaves.W_dec), grad_or_zeros(leaves.b_dec)};
  if (fired != nullptr) *fired = fired->detach();
  torch::NoGradGuard no_grad;
  return ToLoss(terms);
}

SaeLoss Sae::Loss(const torch::Tensor& x, const StepContext& context) const {
  torch::NoGradGuard no_grad;
  torch::Tensor fired;
  return ToLoss(LossTerms(weights_, x, context, &fired));
}

torch::Tensor GeometricMedian(const torch::Tensor& points, int max_iterations,
                              double tolerance) {
  torch::NoGradGuard no_grad;
  torch::Tensor x = points.to(torch::kFloat64);
  torch::Tensor median = x.mean(0);
  for (int iteration = 0; iteration < max_iterations; ++iteration) {
    // Weiszfeld: the weighted mean with weights 1 / distance. Clamping the
    // distance keeps a point that coincides with the estimate from dividing
    // by zero.
    torch::Tensor weights = 1.0 / (x - median).norm(2, 1).clamp_min(kTiny);
    torch::Tensor next = (weights.unsqueeze(1) * x).sum(0) / weights.sum();
    const double moved = (next - median).norm().item<double>();
    const double scale = next.norm().item<double>();
    median = next;
    if (moved <= tolerance * std::max(scale, kTiny)) break;
  }
  return median.to(points.scalar_type());
}

SaeWeights InitSaeFromScratch(int64_t d_sae, const torch::Tensor& sample,
                              uint64_t seed) {
  torch::NoGradGuard no_grad;
  const int64_t d_in = sample.size(1);
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const torch::Device device = sample.device();
  SaeWeights sae;
  sae.W_enc = KaimingUniform({d_in, d_sae}, generator).to(device);
  sae.W_dec =
      NormaliseRows(KaimingUniform({d_sae, d_in}, generator)).to(device);
  sae.b_enc =
      torch::zeros({d_sae}, torch::dtype(torch::kFloat32).device(device));
  sae.b_dec = GeometricMedian(sample.to(torch::kFloat32)).to(device);
  return sae;
}

std::string SaeToSafetensors(const SaeWeights& sae) {
  format::SafetensorsWriter writer;
  const std::pair<const char*, const torch::Tensor*> tensors[] = {
      {"W_enc", &sae.W_enc},
      {"b_enc", &sae.b_enc},
      {"W_dec", &sae.W_dec},
      {"b_dec", &sae.b_dec}};
  for (const auto& [name, tensor] : tensors) {
    torch::Tensor cpu =
        tensor->detach().to(torch::kCPU, torch::kFloat32).contiguous();
    // Cannot fail: names are unique and the shape matches the data.
    const absl::Status status = writer.AddF32(
        name, std::vector<int64_t>(cpu.sizes().begin(), cpu.sizes().end()),
        cpu.data_ptr<float>());
    (void)status;
  }
  return writer.Serialize();
}

absl::StatusOr<SaeWeights> SaeFromSafetensors(std::string bytes,
                                              const torch::Device& device) {
  SAETRACK_ASSIGN_OR_RETURN(
      format::SafetensorsFile file,
      format::SafetensorsFile::FromBytes(std::move(bytes), "SAE weights"));
  SaeWeights sae;
  const std::pair<const char*, torch::Tensor*> tensors[] = {
      {"W_enc", &sae.W_enc},
      {"b_enc", &sae.b_enc},
      {"W_dec", &sae.W_dec},
      {"b_dec", &sae.b_dec}};
  for (const auto& [name, out] : tensors) {
    const format::TensorView* view = file.Find(name);
    if (view == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("SAE weights: no tensor named \"", name, "\""));
    }
    if (view->dtype != format::Dtype::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SAE weights: tensor \"", name, "\" (at byte ", view->file_offset,
          ") has dtype ", format::DtypeName(view->dtype), ", expected F32"));
    }
    torch::Tensor tensor = torch::empty(view->shape, torch::kFloat32);
    std::memcpy(tensor.data_ptr<float>(), view->bytes.data(),
                view->bytes.size());
    *out = tensor.to(device);
  }
  const bool consistent = sae.W_enc.dim() == 2 && sae.W_dec.dim() == 2 &&
                          sae.b_enc.dim() == 1 && sae.b_dec.dim() == 1 &&
                          sae.W_dec.size(0) == sae.W_enc.size(1) &&
                          sae.W_dec.size(1) == sae.W_enc.size(0) &&
                          sae.b_enc.size(0) == sae.W_enc.size(1) &&
                          sae.b_dec.size(0) == sae.W_enc.size(0);
  if (!consistent) {
    auto shape = [](const torch::Tensor& t) {
      return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
    };
    return absl::InvalidArgumentError(
        absl::StrCat("SAE weights: inconsistent shapes W_enc ",
                     shape(sae.W_enc), ", b_enc ", shape(sae.b_enc), ", W_dec ",
                     shape(sae.W_dec), ", b_dec ", shape(sae.b_dec),
                     "; expected [d_in, d_sae], [d_sae], [d_sae, d_in], "
                     "[d_in]"));
  }
  return sae;
}

SaeEvaluation EvaluateSae(const Sae& sae, const torch::Tensor& activations,
                          int64_t chunk_rows) {
  torch::NoGradGuard no_grad;
  const int64_t n = activations.size(0);
  const int64_t d_sae = sae.d_sae();
  // Bound the codes held at once (chunk_rows x d_sae) for wide SAEs.
  chunk_rows = std::max<int64_t>(
      1, std::min(chunk_rows, kMaxCodeElementsPerChunk / d_sae));
  const auto accumulate_options =
      torch::dtype(torch::kFloat64).device(activations.device());
  const torch::Tensor mean = activations.to(torch::kFloat64).mean(0);
  double squared_error = 0;
  double total_variance = 0;
  double active = 0;
  torch::Tensor fired = torch::zeros({d_sae}, accumulate_options);
  torch::Tensor activation_sum = torch::zeros({d_sae}, accumulate_options);
  torch::Tensor activation_max = torch::zeros(
      {d_sae}, torch::dtype(torch::kFloat32).device(activations.device()));
  for (int64_t start = 0; start < n; start += chunk_rows) {
    const torch::Tensor x =
        activations.narrow(0, start, std::min(chunk_rows, n - start));
    const torch::Tensor f = sae.Encode(x);
    const torch::Tensor x_hat = sae.Decode(f);
    squared_error +=
        (x_hat - x).to(torch::kFloat64).pow(2).sum().item<double>();
    total_variance +=
        (x.to(torch::kFloat64) - mean).pow(2).sum().item<double>();
    const torch::Tensor positive = (f > 0).to(torch::kFloat64);
    active += positive.sum().item<double>();
    fired += positive.sum(0);
    activation_sum += f.to(torch::kFloat64).sum(0);
    activation_max = torch::maximum(activation_max, std::get<0>(f.max(0)));
  }
  SaeEvaluation evaluation;
  const double tokens = std::max<int64_t>(n, 1);
  evaluation.mse = squared_error / (tokens * static_cast<double>(sae.d_in()));
  evaluation.fvu = squared_error / std::max(total_variance, kTiny);
  evaluation.l0 = active / tokens;
  evaluation.dead_fraction =
      (fired == 0).to(torch::kFloat64).mean().item<double>();
  evaluation.frequency = ToVector(fired / tokens);
  evaluation.mean_activation = ToVector(activation_sum / tokens);
  evaluation.max_activation = ToVector(activation_max);
  evaluation.encoder_norm = ToVector(sae.weights().W_enc.norm(2, 0));
  return evaluation;
}

double HeldOutFvu(const Sae& sae, const torch::Tensor& activations,
                  int64_t chunk_rows) {
  torch::NoGradGuard no_grad;
  const int64_t n = activations.size(0);
  const torch::Tensor mean = activations.to(torch::kFloat64).mean(0);
  double squared_error = 0;
  double total_variance = 0;
  for (int64_t start = 0; start < n; start += chunk_rows) {
    const torch::Tensor x =
        activations.narrow(0, start, std::min(chunk_rows, n - start));
    squared_error += (sae.Reconstruct(x) - x)
                         .to(torch::kFloat64)
                         .pow(2)
                         .sum()
                         .item<double>();
    total_variance +=
        (x.to(torch::kFloat64) - mean).pow(2).sum().item<double>();
  }
  return squared_error / std::max(total_variance, kTiny);
}

std::vector<int64_t> DensityHistogram(const std::vector<float>& frequency) {
  std::vector<int64_t> bins(kDensityBins, 0);
  for (const float f : frequency) {
    if (!(f > 0)) {
      ++bins[0];
      continue;
    }
    const int bin = static_cast<int>(
        std::floor((std::log10(f) - kDensityLog10Min) / kDensityLog10Width));
    ++bins[1 + std::clamp(bin, 0, kDensityBins - 2)];
  }
  return bins;
}

SaeWeights FoldActivationScale(const SaeWeights& weights, double scale) {
  torch::NoGradGuard no_grad;
  return SaeWeights{weights.W_enc * scale, weights.b_enc.clone(),
                    weights.W_dec / scale, weights.b_dec / scale};
}

SaeWeights UnfoldActivationScale(const SaeWeights& weights, double scale) {
  return FoldActivationScale(weights, 1.0 / scale);
}

double ActivationScaleOf(const SaeWeights& weights) {
  torch::NoGradGuard no_grad;
  const double median_norm = weights.W_dec.norm(2, 1).median().item<double>();
  return median_norm > kTiny && std::isfinite(median_norm) ? 1.0 / median_norm
                                                           : 1.0;
}

double ActivationScale(const torch::Tensor& sample) {
  torch::NoGradGuard no_grad;
  const double mean_norm =
      sample.to(torch::kFloat64).norm(2, 1).mean().item<double>();
  if (!(mean_norm > 0) || !std::isfinite(mean_norm)) return 1.0;
  return std::sqrt(static_cast<double>(sample.size(1))) / mean_norm;
}

std::vector<float> DecoderCosines(const SaeWeights& sae,
                                  const SaeWeights& reference) {
  torch::NoGradGuard no_grad;
  const torch::Tensor dot = (sae.W_dec * reference.W_dec).sum(1);
  const torch::Tensor norms = sae.W_dec.norm(2, 1) * reference.W_dec.norm(2, 1);
  return ToVector(dot / norms.clamp_min(kTiny));
}

}  // namespace saetrack::engine
