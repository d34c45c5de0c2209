// The analysis pass of one checkpoint (DESIGN.md §4): the checkpoint's SAE
// and LM on the job's fixed analysis set — the held-out contexts, the same
// positions for every checkpoint — giving per-feature statistics, the top
// activating positions of this SAE, and the progress measure at positions
// chosen with the final SAE of the chain.
//
// The coordinator runs it once the chain is complete: first on the final
// checkpoint (reference_positions empty: its own top positions become the
// reference), then on every other checkpoint with those positions.
#ifndef SAETRACK_ENGINE_FEATURES_ANALYSIS_PASS_H_
#define SAETRACK_ENGINE_FEATURES_ANALYSIS_PASS_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/activation_cache.h"
#include "engine/training_engine.h"

namespace saetrack::engine {

// Errors: kInvalidArgument naming the AnalysisInput field; kNotFound /
// kDataLoss for missing or malformed files. Never throws.
// Activations are taken from `cache` (and the other input.job_hooks' kept
// there) when it is not null.
absl::StatusOr<AnalysisOutput> AnalyseCheckpoint(const AnalysisInput& input,
                                                 const torch::Device& device,
                                                 ActivationCache* cache);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_FEATURES_ANALYSIS_PASS_H_
