// Which token contexts an SAE of a job sees, and the LM activations at them.
//
// The token file is split once: the first 90% feeds training, the last 10%
// is the held-out set. Training contexts are drawn with replacement from
// `seed`; held-out contexts sit at fixed, evenly spaced positions that depend
// only on the file length and the context length, so every checkpoint (and
// every SAE) of a job is evaluated on the same tokens.
#ifndef SAETRACK_ENGINE_LM_ACTIVATIONS_H_
#define SAETRACK_ENGINE_LM_ACTIVATIONS_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/activation_stream.h"
#include "engine/lm/language_model.h"
#include "format/token_file.h"
#include "format/token_split.h"

namespace saetrack::engine {

// The split and context positions live in worker/format/token_split.h
// (torch-free, so the coordinator can find a position's tokens too).
using format::HeldOutContexts;
using format::SampleTrainContexts;
using format::SplitTokens;
using format::TokenSplit;

// The token ids at `starts` as an int64 tensor [starts.size(),
// context_length] on CPU. Errors: kInvalidArgument naming the file and byte
// offset of the first token id >= vocab_size.
absl::StatusOr<torch::Tensor> GatherContexts(const format::TokenFile& tokens,
                                             const std::vector<int64_t>& starts,
                                             int context_length,
                                             int64_t vocab_size);

// Activations at `hook` for `contexts` [n, seq], as [n * seq, hidden] on the
// model's device, computed `contexts_per_forward` contexts at a time without
// autograd.
torch::Tensor CollectActivations(const LanguageModel& model,
                                 const torch::Tensor& contexts,
                                 const HookPoint& hook,
                                 int64_t contexts_per_forward,
                                 const torch::Device& device);

// An ActivationStream source over the contexts at `starts`: each call
// gathers the next `contexts_per_forward` of them, runs `model` to `hook`
// (without autograd) on `device` and returns the activations
// [contexts * context_length, d_model] in context order; then an undefined
// tensor. Errors: as GatherContexts. `model` and `tokens` must outlive the
// source.
ActivationSource ContextActivationSource(
    const LanguageModel& model, const format::TokenFile& tokens,
    std::vector<int64_t> starts, int context_length, const HookPoint& hook,
    int64_t contexts_per_forward, const torch::Device& device);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_LM_ACTIVATIONS_H_
