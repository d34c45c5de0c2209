// How much of the language model's next-token loss an SAE preserves when
// its reconstruction replaces the activation it was trained on (the "CE loss
// recovered" / "splice" evaluation of SAELens and SAE-Track): the model's
// cross-entropy clean, with the hook activation replaced by the SAE's
// reconstruction, and with it replaced by zeros, plus the KL divergence of
// the spliced next-token distributions from the clean ones.
#ifndef SAETRACK_ENGINE_EVAL_LM_EVALUATION_H_
#define SAETRACK_ENGINE_EVAL_LM_EVALUATION_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "engine/lm/language_model.h"
#include "engine/training_engine.h"

namespace saetrack::engine {

// Evaluates `model` on `contexts` with the activation at `hook` replaced by
// reconstruct(activation).
//
// contexts: [num_contexts, ctx] int64 token ids (as GatherContexts returns
//   them), ctx >= 2, on any device: each chunk is moved to the model's
//   device (the device of its weights for GptNeoxModel and Gpt2Model; other
//   LanguageModel implementations get the contexts' own device).
// reconstruct: maps hook activations [n, d_model] (float32, on the model's
//   device; n = tokens of one chunk) to the SAE's reconstruction, same
//   shape, dtype and device.
// contexts_per_forward: contexts per forward pass (>= 1). Each chunk runs
//   three forward passes (clean, spliced, zero-ablated) and holds their
//   log-probabilities in float64 ([chunk, ctx - 1, vocab] each), so this
//   bounds memory. Everything runs under NoGradGuard.
//
// Conventions (those of LanguageModel::CrossEntropy): position t of a context
// predicts token t + 1, so each context contributes ctx - 1 predictions, and
// the result's `tokens` counts those predictions (num_contexts * (ctx - 1)).
// ce_clean, ce_spliced and ce_zero_ablated are mean cross-entropies in nats
// over them; kl_divergence is the mean over them of
//   KL(clean || spliced) = sum_v p_clean(v) (log p_clean(v) - log
//   p_spliced(v)).
// Log-softmax and all sums are computed in float64 (from the models' float32
// logits), so the result does not depend on contexts_per_forward beyond the
// float32 forward passes themselves.
// loss_recovered = (ce_zero_ablated - ce_spliced) / (ce_zero_ablated -
// ce_clean); 1 when the SAE is perfect, 0 when it is no better than zeros.
// When |ce_zero_ablated - ce_clean| < 1e-9 (zero-ablating the hook does not
// change the loss, so the ratio means nothing) loss_recovered is 0.
// Non-finite reconstructions propagate into the results (NaN), they are not
// an error: a diverged SAE should show up in its metrics.
//
// Errors: kInvalidArgument for contexts that are not a 2-D int64 tensor with
// at least one context of at least 2 tokens, a token id outside
// [0, vocab_size) (naming the context and position), contexts longer than a
// GPT-2 model's max_position_embeddings, contexts_per_forward < 1, a hook
// layer outside [0, num_layers()), an empty `reconstruct`, or a
// reconstruction of the wrong shape, dtype or device; kResourceExhausted
// when LibTorch runs out of memory; kInternal for other LibTorch errors.
// Never throws.
absl::StatusOr<LmEvaluation> EvaluateWithSplice(
    const LanguageModel& model, const torch::Tensor& contexts,
    const HookPoint& hook,
    const std::function<torch::Tensor(const torch::Tensor&)>& reconstruct,
    int64_t contexts_per_forward);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_EVAL_LM_EVALUATION_H_
