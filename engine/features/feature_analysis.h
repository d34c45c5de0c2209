// Per-feature analyses on a fixed analysis set (DESIGN.md §4), computed by
// the worker with the LM and the SAEs at hand: where each feature fires most,
// and the paper's progress measure at a checkpoint.
//
// Positions index the rows of the analysis set's activations, i.e.
// context * context_length + offset for contexts gathered in order.
#ifndef SAETRACK_ENGINE_FEATURES_FEATURE_ANALYSIS_H_
#define SAETRACK_ENGINE_FEATURES_FEATURE_ANALYSIS_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "engine/sae/sae.h"

namespace saetrack::engine {

// The k positions where each feature's code is largest (and positive).
struct TopActivations {
  torch::Tensor positions;  // [d_sae, k] int64; -1 where fewer fired
  torch::Tensor values;     // [d_sae, k] float32, descending; 0 where -1
};

// Scans `activations` [n, d_in] in chunks of at most `chunk_rows` rows.
// REQUIRES: k >= 1.
TopActivations TopActivatingPositions(const Sae& sae,
                                      const torch::Tensor& activations, int k,
                                      int64_t chunk_rows = 4096);

// The paper's progress measure at one checkpoint: for feature i,
// P_i = mean pairwise cosine of the vectors at its top positions minus the
// mean pairwise cosine of the vectors at `random_positions`, with vectors
// taken from the checkpoint's activations (activation space) or from the
// checkpoint's SAE codes (feature space). Features with fewer than two
// positions get NaN.
//
// With `same_token_positions` (as SameTokenPositions returns), also the
// token-controlled measure in activation space: the mean pairwise cosine at
// the top positions minus that at positions holding the same tokens (one
// per top position) elsewhere in the analysis set. It is near 0 for a
// feature whose top contexts are alike only because they hold the same
// token, and positive when they share more than the token.
struct ProgressMeasure {
  std::vector<float> activation_space;  // per feature
  std::vector<float> feature_space;     // per feature
  std::vector<float> token_controlled;  // per feature; empty without them
  double activation_baseline = 0;       // random-position mean cosine
  double feature_baseline = 0;
};

// `positions` [d_sae, k] as TopActivatingPositions returns (usually chosen
// with the final SAE, then measured at every checkpoint); `random_positions`
// [r >= 2] int64; `same_token_positions` undefined or [d_sae, k].
ProgressMeasure MeasureProgress(
    const Sae& sae, const torch::Tensor& activations,
    const torch::Tensor& positions, const torch::Tensor& random_positions,
    const torch::Tensor& same_token_positions = torch::Tensor());

// For each entry of `positions` [d_sae, k] (-1: none), a position drawn
// uniformly (deterministically from `seed`) among the other positions of
// `tokens` [n] that hold the same token; -1 where the position is -1 or its
// token occurs only there.
torch::Tensor SameTokenPositions(const torch::Tensor& positions,
                                 const torch::Tensor& tokens, uint64_t seed);

// Mean pairwise cosine of each group of rows: vectors [g, k, d] with `valid`
// [g, k] bool; groups with fewer than two valid rows get NaN. Zero vectors
// count as cosine 0 with everything.
torch::Tensor GroupMeanPairwiseCosine(const torch::Tensor& vectors,
                                      const torch::Tensor& valid);

// The tokens of `contexts` [num_contexts, context_length] around position
// `position` (flattened index): up to `before` tokens before it, the token
// itself, up to `after` after, within its own context. `offset` receives the
// index of the position's token in the returned window.
std::vector<int64_t> ContextWindow(const torch::Tensor& contexts,
                                   int64_t position, int before, int after,
                                   int* offset);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_FEATURES_FEATURE_ANALYSIS_H_
