#include "engine/sae/sae_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "format/safetensors.h"

namespace saetrack::engine {
namespace {

constexpr double kTiny = 1e-12;
constexpr char kStepsKey[] = "saetrack.steps";
constexpr char kTokensKey[] = "saetrack.tokens";

// The tensors of a trainer state, by name.
std::vector<std::pair<std::string, torch::Tensor*>> StateTensors(
    SaeWeights* weights, SaeWeights* exp_avg, SaeWeights* exp_avg_sq,
    torch::Tensor* tokens_since_fired) {
  std::vector<std::pair<std::string, torch::Tensor*>> out;
  const std::pair<const char*, SaeWeights*> groups[] = {
      {"", weights}, {"adam_m.", exp_avg}, {"adam_v.", exp_avg_sq}};
  for (const auto& [prefix, w] : groups) {
    out.emplace_back(absl::StrCat(prefix, "W_enc"), &w->W_enc);
    out.emplace_back(absl::StrCat(prefix, "b_enc"), &w->b_enc);
    out.emplace_back(absl::StrCat(prefix, "W_dec"), &w->W_dec);
    out.emplace_back(absl::StrCat(prefix, "b_dec"), &w->b_dec);
  }
  out.emplace_back("tokens_since_fired", tokens_since_fired);
  return out;
}

void AdamUpdate(torch::Tensor& param, const torch::Tensor& grad,
                torch::Tensor& exp_avg, torch::Tensor& exp_avg_sq, double lr,
                double beta1, double beta2, double epsilon, int64_t step) {
  // PyTorch's Adam (no weight decay, no amsgrad).
  exp_avg.mul_(beta1).add_(grad, 1 - beta1);
  exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
  const double bias1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bias2 = 1 - std::pow(beta2, static_cast<double>(step));
  const torch::Tensor denom =
      (exp_avg_sq.sqrt() / std::sqrt(bias2)).add_(epsilon);
  param.addcdiv_(exp_avg, denom, -lr / bias1);
}

}  // namespace

SaeTrainer::SaeTrainer(Sae* sae, const SaeTrainerOptions& options)
    : sae_(sae),
      options_(options),
      exp_avg_(sae->weights().ZerosLike()),
      exp_avg_sq_(sae->weights().ZerosLike()),
      tokens_since_fired_(torch::zeros(
          {sae->d_sae()}, torch::dtype(torch::kFloat64)
                              .device(sae->weights().W_enc.device()))) {}

torch::Tensor SaeTrainer::DeadMask() const {
  if (options_.dead_window_tokens <= 0) {
    return torch::zeros_like(tokens_since_fired_, torch::kBool);
  }
  return tokens_since_fired_ >=
         static_cast<double>(options_.dead_window_tokens);
}

SaeLoss SaeTrainer::Step(const torch::Tensor& batch) {
  torch::NoGradGuard no_grad;
  StepContext context;
  if (options_.dead_window_tokens > 0 &&
      tokens_ >= options_.dead_window_tokens) {
    context.dead = DeadMask();
  }
  context.ghost_grads = options_.ghost_grads;
  SaeWeights grads;
  torch::Tensor fired;
  const SaeLoss loss = sae_->LossAndGradients(batch, context, &grads, &fired);

  SaeWeights& w = sae_->mutable_weights();
  // Rows have unit norm, so (g . d) d is the part of the gradient that would
  // only change a row's length, which the renormalisation below undoes
  // anyway; removing it keeps Adam's moments on the sphere.
  grads.W_dec.sub_((grads.W_dec * w.W_dec).sum(1, /*keepdim=*/true) * w.W_dec);

  ++steps_;
  const double warmup = std::min(
      1.0, static_cast<double>(steps_) /
               static_cast<double>(std::max(1, options_.warmup_steps)));
  const double lr = options_.lr * warmup;
  const std::pair<torch::Tensor*, torch::Tensor*> pairs[] = {
      {&w.W_enc, &grads.W_enc},
      {&w.b_enc, &grads.b_enc},
      {&w.W_dec, &grads.W_dec},
      {&w.b_dec, &grads.b_dec}};
  torch::Tensor* m[] = {&exp_avg_.W_enc, &exp_avg_.b_enc, &exp_avg_.W_dec,
                        &exp_avg_.b_dec};
  torch::Tensor* v[] = {&exp_avg_sq_.W_enc, &exp_avg_sq_.b_enc,
                        &exp_avg_sq_.W_dec, &exp_avg_sq_.b_dec};
  for (int i = 0; i < 4; ++i) {
    AdamUpdate(*pairs[i].first, *pairs[i].second, *m[i], *v[i], lr,
               options_.adam_beta1, options_.adam_beta2, options_.adam_epsilon,
               steps_);
  }
  w.W_dec.div_(w.W_dec.norm(2, 1, /*keepdim=*/true).clamp_min(kTiny));

  tokens_ += batch.size(0);
  tokens_since_fired_.add_(static_cast<double>(batch.size(0)))
      .masked_fill_(fired, 0);
  return loss;
}

std::string SaeTrainer::SaveState(
    const std::map<std::string, std::string>& metadata) const {
  format::SafetensorsWriter writer;
  for (const auto& [key, value] : metadata) writer.SetMetadata(key, value);
  writer.SetMetadata(kStepsKey, absl::StrCat(steps_));
  writer.SetMetadata(kTokensKey, absl::StrCat(tokens_));
  SaeWeights weights = sae_->weights();
  SaeWeights m = exp_avg_, v = exp_avg_sq_;
  torch::Tensor since = tokens_since_fired_;
  for (const auto& [name, tensor] : StateTensors(&weights, &m, &v, &since)) {
    torch::Tensor cpu = tensor->detach().to(torch::kCPU).contiguous();
    const format::Dtype dtype = cpu.scalar_type() == torch::kFloat64
                                    ? format::Dtype::kF64
                                    : format::Dtype::kF32;
    cpu = cpu.to(dtype == format::Dtype::kF64 ? torch::kFloat64
                                              : torch::kFloat32);
    // Cannot fail: unique names, shape matches the bytes.
    (void)writer.Add(
        name, dtype,
        std::vector<int64_t>(cpu.sizes().begin(), cpu.sizes().end()),
        std::string_view(static_cast<const char*>(cpu.data_ptr()),
                         cpu.nbytes()));
  }
  return writer.Serialize();
}

absl::Status SaeTrainer::RestoreState(
    std::string bytes, std::map<std::string, std::string>* metadata) {
  SAETRACK_ASSIGN_OR_RETURN(
      format::SafetensorsFile file,
      format::SafetensorsFile::FromBytes(std::move(bytes), "trainer state"));
  int64_t steps = 0, tokens = 0;
  const auto& meta = file.metadata();
  auto steps_it = meta.find(kStepsKey);
  auto tokens_it = meta.find(kTokensKey);
  if (steps_it == meta.end() || tokens_it == meta.end() ||
      !absl::SimpleAtoi(steps_it->second, &steps) ||
      !absl::SimpleAtoi(tokens_it->second, &tokens) || steps < 0 ||
      tokens < 0) {
    return absl::DataLossError(
        "trainer state: __metadata__ lacks valid saetrack.steps / "
        "saetrack.tokens");
  }
  SaeWeights weights = sae_->weights().Clone();
  SaeWeights m = exp_avg_.Clone(), v = exp_avg_sq_.Clone();
  torch::Tensor since = tokens_since_fired_.clone();
  for (const auto& [name, tensor] : StateTensors(&weights, &m, &v, &since)) {
    const format::TensorView* view = file.Find(name);
    const torch::ScalarType type = tensor->scalar_type();
    const format::Dtype want =
        type == torch::kFloat64 ? format::Dtype::kF64 : format::Dtype::kF32;
    if (view == nullptr || view->dtype != want ||
        view->shape != std::vector<int64_t>(tensor->sizes().begin(),
                                            tensor->sizes().end())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trainer state: tensor \"", name,
          "\" is missing or does not match the SAE (expected ",
          format::DtypeName(want), " [", tensor->size(0),
          tensor->dim() > 1 ? absl::StrCat(", ", tensor->size(1)) : "", "])"));
    }
    torch::Tensor cpu = torch::empty(view->shape, type);
    std::memcpy(cpu.data_ptr(), view->bytes.data(), view->bytes.size());
    *tensor = cpu.to(tensor->device());
  }
  sae_->mutable_weights() = std::move(weights);
  exp_avg_ = std::move(m);
  exp_avg_sq_ = std::move(v);
  tokens_since_fired_ = std::move(since);
  steps_ = steps;
  tokens_ = tokens;
  if (metadata != nullptr) *metadata = meta;
  return absl::OkStatus();
}

}  // namespace saetrack::engine
