#include "engine/lm/activations.h"

#include <algorithm>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/lm/activation_cache.h"

namespace saetrack::engine {

absl::StatusOr<torch::Tensor> GatherContexts(const format::TokenFile& tokens,
                                             const std::vector<int64_t>& starts,
                                             int context_length,
                                             int64_t vocab_size) {
  torch::Tensor out = torch::empty(
      {static_cast<int64_t>(starts.size()), context_length}, torch::kInt64);
  int64_t* data = out.data_ptr<int64_t>();
  std::vector<uint32_t> ids(context_length);
  for (size_t row = 0; row < starts.size(); ++row) {
    SAETRACK_RETURN_IF_ERROR(tokens.ReadChecked(starts[row], context_length,
                                                vocab_size, ids.data()));
    for (int i = 0; i < context_length; ++i) {
      data[row * context_length + i] = ids[i];
    }
  }
  return out;
}

torch::Tensor CollectActivations(const LanguageModel& model,
                                 const torch::Tensor& contexts,
                                 const HookPoint& hook,
                                 int64_t contexts_per_forward,
                                 const torch::Device& device) {
  return CollectActivationsAt(model, contexts, {hook}, contexts_per_forward,
                              device)[0];
}

ActivationSource ContextActivationSource(
    const LanguageModel& model, const format::TokenFile& tokens,
    std::vector<int64_t> starts, int context_length, const HookPoint& hook,
    int64_t contexts_per_forward, const torch::Device& device) {
  // Shared so that the std::function stays copyable.
  auto remaining = std::make_shared<std::vector<int64_t>>(std::move(starts));
  auto next = std::make_shared<size_t>(0);
  return [&model, &tokens, remaining, next, context_length, hook,
          contexts_per_forward, device]() -> absl::StatusOr<torch::Tensor> {
    if (*next >= remaining->size()) return torch::Tensor();
    const size_t count = std::min<size_t>(
        static_cast<size_t>(contexts_per_forward), remaining->size() - *next);
    const std::vector<int64_t> chunk(remaining->begin() + *next,
                                     remaining->begin() + *next + count);
    *next += count;
    SAETRACK_ASSIGN_OR_RETURN(const torch::Tensor contexts,
                              GatherContexts(tokens, chunk, context_length,
                                             model.config().vocab_size));
    torch::NoGradGuard no_grad;
    return model.RunToHooks(contexts.to(device), {hook})[0].reshape(
        {-1, model.d_model()});
  };
}

}  // namespace saetrack::engine
