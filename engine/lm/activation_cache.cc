#include "engine/lm/activation_cache.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace saetrack::engine {
namespace {

std::string HookName(const HookPoint& hook) {
  return absl::StrCat(hook.layer, ".", HookSiteName(hook.site));
}

bool SameHook(const HookPoint& a, const HookPoint& b) {
  return a.layer == b.layer && a.site == b.site;
}

}  // namespace

std::vector<torch::Tensor> CollectActivationsAt(
    const LanguageModel& model, const torch::Tensor& contexts,
    const std::vector<HookPoint>& hooks, int64_t contexts_per_forward,
    const torch::Device& device) {
  // NoGradGuard rather than InferenceMode: the result feeds the SAE
  // trainer's autograd graph, which refuses inference tensors.
  torch::NoGradGuard no_grad;
  const int64_t n = contexts.size(0);
  const int64_t hidden = model.d_model();
  std::vector<std::vector<torch::Tensor>> chunks(hooks.size());
  for (int64_t start = 0; start < n; start += contexts_per_forward) {
    const torch::Tensor batch =
        contexts.narrow(0, start, std::min(contexts_per_forward, n - start))
            .to(device);
    std::vector<torch::Tensor> at = model.RunToHooks(batch, hooks);
    for (size_t h = 0; h < hooks.size(); ++h) {
      chunks[h].push_back(at[h].reshape({-1, hidden}));
    }
  }
  std::vector<torch::Tensor> out;
  out.reserve(hooks.size());
  for (std::vector<torch::Tensor>& hook_chunks : chunks) {
    out.push_back(torch::cat(hook_chunks));
  }
  return out;
}

torch::Tensor ActivationCache::Take(
    const std::string& scope, const std::string& set,
    const LanguageModel& model, const torch::Tensor& contexts,
    const HookPoint& hook, const std::vector<HookPoint>& also,
    int64_t contexts_per_forward, const torch::Device& device) {
  if (scope != scope_) {
    kept_.clear();
    kept_bytes_ = 0;
    scope_ = scope;
  }
  const std::string key = absl::StrCat(set, "|", HookName(hook));
  if (auto it = kept_.find(key); it != kept_.end()) {
    torch::Tensor out = std::move(it->second);
    kept_bytes_ -= out.numel() * static_cast<int64_t>(out.element_size());
    kept_.erase(it);
    ++hits_;
    return out.to(device);
  }
  // This hook first, then every other one not kept already.
  std::vector<HookPoint> hooks = {hook};
  for (const HookPoint& other : also) {
    const bool listed =
        std::any_of(hooks.begin(), hooks.end(),
                    [&](const HookPoint& h) { return SameHook(h, other); });
    if (!listed && kept_.count(absl::StrCat(set, "|", HookName(other))) == 0) {
      hooks.push_back(other);
    }
  }
  std::vector<torch::Tensor> at = CollectActivationsAt(
      model, contexts, hooks, contexts_per_forward, device);
  ++forward_passes_;
  for (size_t h = 1; h < hooks.size(); ++h) {
    const int64_t bytes =
        at[h].numel() * static_cast<int64_t>(at[h].element_size());
    if (kept_bytes_ + bytes > max_bytes_) continue;
    kept_bytes_ += bytes;
    kept_.emplace(absl::StrCat(set, "|", HookName(hooks[h])), std::move(at[h]));
  }
  return std::move(at[0]);
}

absl::StatusOr<std::vector<HookPoint>> ParseJobHooks(
    const std::vector<std::pair<int, std::string>>& job_hooks, int num_layers,
    const std::string& field) {
  std::vector<HookPoint> hooks;
  hooks.reserve(job_hooks.size());
  for (size_t i = 0; i < job_hooks.size(); ++i) {
    const auto& [layer, site_name] = job_hooks[i];
    absl::StatusOr<HookSite> site = ParseHookSite(site_name);
    if (!site.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "]: ", site.status().message()));
    }
    if (layer < 0 || layer >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, "[", i, "]: layer ", layer, " is out of range: the model has ",
          num_layers, " layers"));
    }
    hooks.push_back(HookPoint{layer, *site});
  }
  return hooks;
}

std::string ActivationScope(const std::string& model_dir,
                            const std::string& tokens_path,
                            const std::string& token_dtype,
                            int context_length) {
  return absl::StrCat(model_dir.size(), ":", model_dir, "|", tokens_path.size(),
                      ":", tokens_path, "|", token_dtype, "|", context_length);
}

}  // namespace saetrack::engine
