// Decoder drift along a chain (DESIGN.md §4): per feature and checkpoint the
// cosine of the decoder direction to the final checkpoint's and to the
// previous checkpoint's, then quantiles across features and the phase fits
// (one, two or three segments, chosen by BIC) of the median against
// log(step + 1).
//
// Decoders are read one checkpoint at a time through a callback, so a chain
// of 150 SAEs of 16,384 x 768 never has to fit in memory at once.
#ifndef SAETRACK_ANALYSIS_DRIFT_H_
#define SAETRACK_ANALYSIS_DRIFT_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/dynamics.h"

namespace saetrack::analysis {

// Returns the SAE weights (safetensors bytes with an F32 "W_dec"
// [d_sae, d_in]) of checkpoint `index` in chain order.
using SaeWeightsSource = std::function<absl::StatusOr<std::string>(int index)>;

struct DecoderDrift {
  // [checkpoint][feature], chain order. cos_to_previous[0] is all NaN.
  std::vector<std::vector<float>> cos_to_final;
  std::vector<std::vector<float>> cos_to_previous;
};

// Reads `num_checkpoints` decoders (the last is the final one, read first).
// Errors: the source's, kDataLoss for a malformed file, kInvalidArgument
// naming the checkpoint index when W_dec is missing, not F32, or of another
// shape than the final one's. A zero decoder row gives cosine 0.
absl::StatusOr<DecoderDrift> ComputeDecoderDrift(
    int num_checkpoints, const SaeWeightsSource& source);

// Quantiles of a per-feature quantity at one checkpoint.
struct Quantiles {
  double q10 = 0, q25 = 0, q50 = 0, q75 = 0, q90 = 0;
};

struct DriftSummary {
  std::vector<int64_t> steps;
  std::vector<Quantiles> to_final;     // per checkpoint
  std::vector<Quantiles> to_previous;  // per checkpoint; [0] all NaN
  // The phase fits (FitPhases with kCosResolution) of the median cos to
  // final against log(step + 1) and the number of segments BIC chose;
  // absent with fewer than kMinPhaseCheckpoints checkpoints.
  std::optional<PhaseModels> phases;
};

// The precision of a cosine computed and stored in float (its spacing just
// above 1): the resolution of every phase fit of cosines.
inline constexpr double kCosResolution = std::numeric_limits<float>::epsilon();

// Phases are fitted from this many checkpoints on (a line alone up to 4,
// see MinPointsToCompete for when two and three segments compete).
inline constexpr int kMinPhaseCheckpoints = 4;

// `steps` in chain order, one per checkpoint of `drift`. Errors:
// kInvalidArgument when sizes differ or steps do not increase.
absl::StatusOr<DriftSummary> SummariseDrift(const std::vector<int64_t>& steps,
                                            const DecoderDrift& drift);

// The phase fits (FitPhases with kCosResolution) of one feature's cos to
// final; nullopt with fewer than kMinPhaseCheckpoints checkpoints or a
// non-finite value. O(n²) in the number of checkpoints n.
std::optional<PhaseModels> FeaturePhases(const std::vector<int64_t>& steps,
                                         const DecoderDrift& drift,
                                         int feature);

// Per feature, the 2-D PCA trajectory (PcaTrajectory) of its unit decoder
// directions over `num_checkpoints` checkpoints (chain order as for
// ComputeDecoderDrift). Features are taken in blocks whose directions fit in
// `memory_budget_bytes`; every block reads each checkpoint once. Errors as
// ComputeDecoderDrift's.
absl::StatusOr<std::vector<Trajectory2d>> DecoderTrajectories(
    int num_checkpoints, const SaeWeightsSource& source,
    int64_t memory_budget_bytes = int64_t{1} << 30);

}  // namespace saetrack::analysis

#endif  // SAETRACK_ANALYSIS_DRIFT_H_
