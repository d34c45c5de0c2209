// The analysis pass of one checkpoint (DESIGN.md §4): the checkpoint's SAE
// and LM on the job's fixed analysis set — the held-out contexts, the same
// positions for every checkpoint — giving per-feature statistics, the top
// activating positions of this SAE, the progress measure at positions
// chosen with the final SAE of the chain, and (without the analysis set)
// the logit effects of its decoder directions through the checkpoint's
// unembedding.
//
// The coordinator runs it once the chain is complete: first on the final
// checkpoint (reference_positions empty: its own top positions become the
// reference), then on every other checkpoint with those positions.
#ifndef SAETRACK_ENGINE_FEATURES_ANALYSIS_PASS_H_
#define SAETRACK_ENGINE_FEATURES_ANALYSIS_PASS_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/activation_cache.h"
#include "engine/training_engine.h"

namespace saetrack::engine {

// The logit effects of every feature: with W_U the unembedding (`unembed`
// maps directions [n, d_in] to logits [n, vocab], e.g. LanguageModel::
// UnembedDirections) and d_i the decoder rows (decoder [d_sae, d_in], any
// scale), the logits W_U · d_i / |d_i| (the raw direction, no final layer
// norm), and per feature the k token ids of the largest logits (descending)
// and of the smallest (ascending) with their values. One GEMM per chunk of
// features, so memory stays bounded by `chunk_elements` floats of logits
// (64 MiB by default) whatever the vocab. Zero-norm rows give logits 0.
// REQUIRES: 0 < k <= vocab; unembed accepts decoder's d_in.
struct LogitEffects {
  torch::Tensor promoted_tokens;    // [d_sae, k] int64
  torch::Tensor promoted_values;    // [d_sae, k] float
  torch::Tensor suppressed_tokens;  // [d_sae, k] int64
  torch::Tensor suppressed_values;  // [d_sae, k] float
};
LogitEffects ComputeLogitEffects(
    const std::function<torch::Tensor(const torch::Tensor&)>& unembed,
    int64_t vocab, const torch::Tensor& decoder, int64_t k,
    int64_t chunk_elements = int64_t{16} << 20);

// Errors: kInvalidArgument naming the AnalysisInput field; kNotFound /
// kDataLoss for missing or malformed files. Never throws.
// Activations are taken from `cache` (and the other input.job_hooks' kept
// there) when it is not null.
absl::StatusOr<AnalysisOutput> AnalyseCheckpoint(const AnalysisInput& input,
                                                 const torch::Device& device,
                                                 ActivationCache* cache);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_FEATURES_ANALYSIS_PASS_H_
