#include "engine/features/analysis_pass.h"

#include <algorithm>
#include <exception>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/features/feature_analysis.h"
#include "engine/lm/activation_cache.h"
#include "engine/lm/activations.h"
#include "engine/lm/language_model.h"
#include "engine/sae/sae.h"
#include "format/token_file.h"

namespace saetrack::engine {
namespace {

// Tokens per LM forward pass (as the training engine).
constexpr int64_t kTokensPerForward = 8192;

absl::Status InvalidField(const char* field, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("AnalysisInput.", field, " ", what));
}

template <typename T>
std::vector<T> ToVector(const torch::Tensor& t) {
  const torch::Tensor cpu = t.to(torch::kCPU).contiguous();
  return std::vector<T>(cpu.data_ptr<T>(), cpu.data_ptr<T>() + cpu.numel());
}

absl::StatusOr<AnalysisOutput> AnalyseOrThrow(const AnalysisInput& input,
                                              const torch::Device& device,
                                              ActivationCache* cache) {
  if (input.top_k < 2) return InvalidField("top_k", "must be at least 2");
  if (input.random_positions < 2) {
    return InvalidField("random_positions", "must be at least 2");
  }
  if (input.analysis_tokens <= 0) {
    return InvalidField("analysis_tokens", "must be positive");
  }
  if (input.context_length <= 0) {
    return InvalidField("context_length", "must be positive");
  }
  if (input.logit_effects_k < 0) {
    return InvalidField("logit_effects_k", "must be >= 0");
  }
  SAETRACK_ASSIGN_OR_RETURN(const HookSite site, ParseHookSite(input.site));
  SAETRACK_ASSIGN_OR_RETURN(const format::TokenDtype dtype,
                            format::ParseTokenDtype(input.token_dtype));
  SAETRACK_ASSIGN_OR_RETURN(const std::unique_ptr<LanguageModel> model,
                            LoadLanguageModel(input.model_dir, device));
  if (input.layer < 0 || input.layer >= model->num_layers()) {
    return InvalidField("layer", absl::StrCat(input.layer, " is out of range: ",
                                              input.model_dir, " has ",
                                              model->num_layers(), " layers"));
  }
  SAETRACK_ASSIGN_OR_RETURN(SaeWeights weights,
                            SaeFromSafetensors(input.sae_safetensors, device));
  if (weights.d_in() != model->d_model()) {
    return InvalidField(
        "sae_safetensors",
        absl::StrCat("has d_in ", weights.d_in(), ", but ", input.model_dir,
                     " has hidden_size ", model->d_model()));
  }
  SaeSpec spec;
  spec.architecture = input.sae_architecture;
  spec.k = input.k;
  SAETRACK_ASSIGN_OR_RETURN(std::unique_ptr<Sae> sae,
                            MakeSae(spec, std::move(weights)));
  const int64_t d_sae = sae->d_sae();
  if (!input.reference_positions.empty() &&
      static_cast<int64_t>(input.reference_positions.size()) !=
          d_sae * input.top_k) {
    return InvalidField("reference_positions",
                        absl::StrCat("has ", input.reference_positions.size(),
                                     " entries, expected d_sae * top_k = ",
                                     d_sae * input.top_k));
  }

  SAETRACK_ASSIGN_OR_RETURN(const format::TokenFile tokens,
                            format::TokenFile::Open(input.tokens_path, dtype));
  absl::StatusOr<TokenSplit> split =
      SplitTokens(tokens.size(), input.context_length);
  if (!split.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(input.tokens_path, ": ", split.status().message()));
  }
  const int64_t num_contexts =
      (input.analysis_tokens + input.context_length - 1) / input.context_length;
  SAETRACK_ASSIGN_OR_RETURN(
      const torch::Tensor contexts,
      GatherContexts(
          tokens, HeldOutContexts(*split, input.context_length, num_contexts),
          input.context_length, model->config().vocab_size));
  SAETRACK_ASSIGN_OR_RETURN(const std::vector<HookPoint> job_hooks,
                            ParseJobHooks(input.job_hooks, model->num_layers(),
                                          "AnalysisInput.job_hooks"));
  const HookPoint hook{input.layer, site};
  const int64_t contexts_per_forward =
      std::max<int64_t>(1, kTokensPerForward / input.context_length);
  const torch::Tensor activations =
      cache != nullptr
          ? cache->Take(
                ActivationScope(input.model_dir, input.tokens_path,
                                input.token_dtype, input.context_length),
                absl::StrCat("heldout:", num_contexts), *model, contexts, hook,
                job_hooks, contexts_per_forward, device)
          : CollectActivations(*model, contexts, hook, contexts_per_forward,
                               device);
  const int64_t n = activations.size(0);

  AnalysisOutput out;
  out.analysis_positions = n;
  out.d_sae = static_cast<int>(d_sae);
  out.top_k = input.top_k;
  const SaeEvaluation evaluation = EvaluateSae(*sae, activations);
  out.frequency = evaluation.frequency;
  out.mean_activation = evaluation.mean_activation;
  out.max_activation = evaluation.max_activation;

  const TopActivations top =
      TopActivatingPositions(*sae, activations, input.top_k);
  out.top_positions = ToVector<int64_t>(top.positions);
  out.top_values = ToVector<float>(top.values);
  const torch::Tensor flat_tokens = contexts.reshape({-1}).to(torch::kCPU);
  const torch::Tensor positions_cpu = top.positions.to(torch::kCPU);
  out.top_tokens = ToVector<int64_t>(torch::where(
      positions_cpu >= 0, flat_tokens.index({positions_cpu.clamp_min(0)}),
      torch::full_like(positions_cpu, -1)));

  torch::Tensor reference = top.positions;
  if (!input.reference_positions.empty()) {
    reference = torch::tensor(input.reference_positions, torch::kLong)
                    .reshape({d_sae, input.top_k});
    if ((reference >= n).any().item<bool>()) {
      return InvalidField(
          "reference_positions",
          absl::StrCat("holds a position beyond the analysis set's ", n,
                       " rows"));
    }
  }
  out.reference_positions = ToVector<int64_t>(reference);
  at::Generator generator = at::detail::createCPUGenerator(input.seed ^ 0xA11);
  const torch::Tensor random =
      torch::randint(n, {std::min<int64_t>(input.random_positions, n)},
                     generator, torch::kLong);
  const torch::Tensor same_token =
      SameTokenPositions(reference, flat_tokens, input.seed);
  const ProgressMeasure progress =
      MeasureProgress(*sae, activations, reference, random, same_token);
  out.progress_activation = progress.activation_space;
  out.progress_feature = progress.feature_space;
  out.progress_token_controlled = progress.token_controlled;
  out.activation_baseline = progress.activation_baseline;
  out.feature_baseline = progress.feature_baseline;

  if (input.logit_effects_k > 0) {
    const int64_t vocab = model->config().vocab_size;
    const int64_t k = std::min<int64_t>(input.logit_effects_k, vocab);
    const LogitEffects effects = ComputeLogitEffects(
        [&](const torch::Tensor& d) { return model->UnembedDirections(d); },
        vocab, sae->weights().W_dec, k);
    out.logit_effects_k = static_cast<int>(k);
    out.promoted_tokens =
        ToVector<int32_t>(effects.promoted_tokens.to(torch::kInt));
    out.promoted_values = ToVector<float>(effects.promoted_values);
    out.suppressed_tokens =
        ToVector<int32_t>(effects.suppressed_tokens.to(torch::kInt));
    out.suppressed_values = ToVector<float>(effects.suppressed_values);
  }
  return out;
}

}  // namespace

LogitEffects ComputeLogitEffects(
    const std::function<torch::Tensor(const torch::Tensor&)>& unembed,
    int64_t vocab, const torch::Tensor& decoder, int64_t k,
    int64_t chunk_elements) {
  torch::NoGradGuard no_grad;
  const int64_t d_sae = decoder.size(0);
  const int64_t chunk =
      std::max<int64_t>(1, chunk_elements / std::max<int64_t>(1, vocab));
  std::vector<torch::Tensor> promoted_tokens, promoted_values,
      suppressed_tokens, suppressed_values;
  for (int64_t begin = 0; begin < d_sae; begin += chunk) {
    const int64_t rows = std::min(chunk, d_sae - begin);
    torch::Tensor d = decoder.narrow(0, begin, rows).to(torch::kFloat);
    const torch::Tensor norm = d.norm(2, {1}, /*keepdim=*/true);
    d = torch::where(norm > 0, d / norm.clamp_min(1e-30), torch::zeros_like(d));
    const torch::Tensor logits = unembed(d).to(torch::kFloat);  // [rows, vocab]
    auto [top_values, top_tokens] =
        logits.topk(k, /*dim=*/1, /*largest=*/true, /*sorted=*/true);
    auto [low_values, low_tokens] =
        logits.topk(k, /*dim=*/1, /*largest=*/false, /*sorted=*/true);
    promoted_tokens.push_back(top_tokens.cpu());
    promoted_values.push_back(top_values.cpu());
    suppressed_tokens.push_back(low_tokens.cpu());
    suppressed_values.push_back(low_values.cpu());
  }
  if (d_sae == 0) {
    const torch::Tensor none_l = torch::empty({0, k}, torch::kLong);
    const torch::Tensor none_f = torch::empty({0, k}, torch::kFloat);
    return {none_l, none_f, none_l, none_f};
  }
  return {torch::cat(promoted_tokens), torch::cat(promoted_values),
          torch::cat(suppressed_tokens), torch::cat(suppressed_values)};
}

absl::StatusOr<AnalysisOutput> AnalyseCheckpoint(const AnalysisInput& input,
                                                 const torch::Device& device,
                                                 ActivationCache* cache) {
  try {
    return AnalyseOrThrow(input, device, cache);
  } catch (const c10::Error& error) {
    return absl::InternalError(
        absl::StrCat("LibTorch error: ", error.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory in the analysis pass");
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat("analysis error: ", error.what()));
  }
}

}  // namespace saetrack::engine
