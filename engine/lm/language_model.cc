#include "engine/lm/language_model.h"

#include <algorithm>
#include <exception>
#include <new>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/lm/gpt2.h"
#include "engine/lm/gpt_neox.h"
#include "base/absl_compat.h"
#include "base/status_macros.h"

namespace saetrack::engine {

using format::AsAbsl;

absl::StatusOr<HookSite> ParseHookSite(std::string_view name) {
  if (name == "resid_pre") return HookSite::kResidPre;
  if (name == "resid_post") return HookSite::kResidPost;
  if (name == "attn_out") return HookSite::kAttnOut;
  if (name == "mlp_out") return HookSite::kMlpOut;
  return absl::InvalidArgumentError(
      absl::StrCat("hook site \"", AsAbsl(name),
                   "\" is not one of resid_pre, resid_post, attn_out, "
                   "mlp_out"));
}

const char* HookSiteName(HookSite site) {
  switch (site) {
    case HookSite::kResidPre:
      return "resid_pre";
    case HookSite::kResidPost:
      return "resid_post";
    case HookSite::kAttnOut:
      return "attn_out";
    case HookSite::kMlpOut:
      return "mlp_out";
  }
  return "?";
}

torch::Tensor NextTokenCrossEntropy(const torch::Tensor& logits,
                                    const torch::Tensor& tokens) {
  const int64_t seq = tokens.size(1);
  TORCH_CHECK(seq >= 2, "next-token loss needs at least 2 tokens, got ", seq);
  const torch::Tensor predictions =
      logits.narrow(1, 0, seq - 1).reshape({-1, logits.size(-1)});
  const torch::Tensor targets = tokens.narrow(1, 1, seq - 1).reshape({-1});
  return torch::nn::functional::cross_entropy(predictions, targets);
}

torch::Tensor LanguageModel::Forward(const torch::Tensor& tokens,
                                     int last_layer,
                                     const SiteVisitor& visit) const {
  TORCH_CHECK(last_layer < num_layers(), "layer ", last_layer,
              " is out of range: the model has ", num_layers(), " layers");
  torch::Tensor x = Embed(tokens);
  for (int layer = 0; layer <= last_layer; ++layer) {
    x = visit(layer, HookSite::kResidPre, std::move(x));
    x = Block(layer, x, [&](HookSite site, torch::Tensor activation) {
      return visit(layer, site, std::move(activation));
    });
    x = visit(layer, HookSite::kResidPost, std::move(x));
  }
  return x;
}

std::vector<torch::Tensor> LanguageModel::RunToHooks(
    const torch::Tensor& tokens, const std::vector<HookPoint>& hooks) const {
  std::vector<torch::Tensor> out(hooks.size());
  // The deepest block that must run: resid_pre of layer L is the stream
  // leaving block L - 1, so block L itself is not needed for it.
  int last_layer = -1;
  for (const HookPoint& hook : hooks) {
    last_layer =
        std::max(last_layer, hook.site == HookSite::kResidPre ? hook.layer - 1
                                                              : hook.layer);
  }
  const torch::Tensor stream =
      Forward(tokens, last_layer,
              [&](int layer, HookSite site, torch::Tensor activation) {
                for (size_t i = 0; i < hooks.size(); ++i) {
                  if (hooks[i].layer == layer && hooks[i].site == site) {
                    out[i] = activation;
                  }
                }
                return activation;
              });
  for (size_t i = 0; i < hooks.size(); ++i) {
    if (hooks[i].site == HookSite::kResidPre &&
        hooks[i].layer == last_layer + 1) {
      out[i] = stream;
    }
  }
  return out;
}

torch::Tensor LanguageModel::Logits(const torch::Tensor& tokens) const {
  const SiteVisitor read_only = [](int, HookSite, torch::Tensor activation) {
    return activation;
  };
  return Unembed(FinalNorm(Forward(tokens, num_layers() - 1, read_only)));
}

torch::Tensor LanguageModel::LogitsWithReplacement(
    const torch::Tensor& tokens, const HookPoint& hook,
    const ActivationReplacement& replacement) const {
  // A layer past the last would never call the replacement and silently
  // return the clean logits.
  TORCH_CHECK(hook.layer >= 0 && hook.layer < num_layers(), "hook layer ",
              hook.layer, " is out of range [0, ", num_layers(), ")");
  const torch::Tensor resid = Forward(
      tokens, num_layers() - 1,
      [&](int layer, HookSite site, torch::Tensor activation) {
        if (layer != hook.layer || site != hook.site) return activation;
        torch::Tensor replaced = replacement(activation);
        TORCH_CHECK(replaced.sizes() == activation.sizes(), "replacement at ",
                    HookSiteName(site), " of layer ", layer, " has shape ",
                    replaced.sizes(), ", expected ", activation.sizes());
        return replaced;
      });
  return Unembed(FinalNorm(resid));
}

std::vector<torch::Tensor> LanguageModel::HiddenStates(
    const torch::Tensor& tokens) const {
  std::vector<torch::Tensor> states;
  const torch::Tensor last =
      Forward(tokens, num_layers() - 1,
              [&](int, HookSite site, torch::Tensor activation) {
                if (site == HookSite::kResidPre) states.push_back(activation);
                return activation;
              });
  states.push_back(FinalNorm(last));
  return states;
}

double LanguageModel::CrossEntropy(const torch::Tensor& tokens) const {
  torch::NoGradGuard no_grad;
  return NextTokenCrossEntropy(Logits(tokens), tokens).item<double>();
}

double LanguageModel::CrossEntropyWithReplacement(
    const torch::Tensor& tokens, const HookPoint& hook,
    const ActivationReplacement& replacement) const {
  torch::NoGradGuard no_grad;
  return NextTokenCrossEntropy(LogitsWithReplacement(tokens, hook, replacement),
                               tokens)
      .item<double>();
}

namespace {

template <typename Model>
absl::StatusOr<std::unique_ptr<LanguageModel>> LoadAs(
    const std::string& dir, const torch::Device& device) {
  SAETRACK_ASSIGN_OR_RETURN(Model model, Model::Load(dir, device));
  return std::unique_ptr<LanguageModel>(
      std::make_unique<Model>(std::move(model)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LanguageModel>> LoadLanguageModel(
    const std::string& dir, const torch::Device& device) {
  SAETRACK_ASSIGN_OR_RETURN(const format::ModelConfig config,
                            format::LoadModelConfig(dir));
  // Moving weights to the device can fail inside LibTorch (out of memory, a
  // broken CUDA context); no exception leaves the loader.
  try {
    if (config.architecture == "gpt_neox") {
      return LoadAs<GptNeoxModel>(dir, device);
    }
    if (config.architecture == "gpt2") return LoadAs<Gpt2Model>(dir, device);
  } catch (const c10::Error& error) {
    const std::string what = error.what_without_backtrace();
    if (what.find("out of memory") != std::string::npos) {
      return absl::ResourceExhaustedError(
          absl::StrCat("loading ", dir, ": ", what));
    }
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", what));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("loading ", dir, ": out of memory"));
  }
  // ParseModelConfig accepts only the architectures above.
  return absl::InternalError(
      absl::StrCat(dir, ": no model implementation for architecture \"",
                   config.architecture, "\""));
}

}  // namespace saetrack::engine
