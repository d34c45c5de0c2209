// Feature dynamics over a chain of SAEs (DESIGN.md §4), as plain numeric
// functions: the coordinator runs them over stored results and stores what
// they return. No torch, no storage, no RPC: everything here is a pure
// function of its arguments and deterministic.
#ifndef SAETRACK_ANALYSIS_DYNAMICS_H_
#define SAETRACK_ANALYSIS_DYNAMICS_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::analysis {

// A continuous three-segment piecewise-linear fit
//
//   y(x) = a + s1·x + (s2 − s1)·max(0, x − b1) + (s3 − s2)·max(0, x − b2)
//
// found by exhaustive least squares over the breakpoint pair (b1 < b2).
struct PhaseFit {
  double breakpoint1 = 0;  // b1, in x units
  double breakpoint2 = 0;  // b2
  double slope1 = 0;       // slope of each segment
  double slope2 = 0;
  double slope3 = 0;
  double intercept = 0;  // a
  double rss = 0;        // residual sum of squares
  double r_squared = 0;  // 1 − rss / total sum of squares (1 when y is flat)
};

// Fits the curve to points (x[i], y[i]). Candidate breakpoints are the data's
// x values and the midpoints between neighbours, excluding the two ends, so
// each segment spans at least one interval. Errors: kInvalidArgument when
// the sizes differ, fewer than 4 points are given, x is not strictly
// increasing, or a value is not finite (naming the index).
absl::StatusOr<PhaseFit> FitThreePhases(const std::vector<double>& x,
                                        const std::vector<double>& y);

// The x axis of the phase fit for training steps: log(step + 1).
std::vector<double> LogSteps(const std::vector<int64_t>& steps);

// Quantile q in [0, 1] of `values` (linear interpolation between order
// statistics, NumPy's default); NaNs are ignored. nullopt when no finite value.
std::optional<double> Quantile(std::vector<double> values, double q);

// The first index t with progress[t] ≥ tau · progress.back(), or nullopt when
// progress is empty or its final value is not positive (the feature never
// formed a structure to measure against).
std::optional<int> FormationIndex(const std::vector<double>& progress,
                                  double tau);

// Token-level vs concept-level: the share of the most common token id among
// a feature's top-k context tokens, and whether it reaches `threshold`.
struct TokenConcentration {
  int64_t top_token = -1;
  double share = 0;  // 0 for no tokens
  bool token_level = false;
};
TokenConcentration ClassifyTokens(const std::vector<int64_t>& top_tokens,
                                  double threshold);

// Mean cosine similarity over all unordered pairs of `vectors` (rows of equal
// length); zero vectors count as cosine 0. nullopt for fewer than two rows.
std::optional<double> MeanPairwiseCosine(
    const std::vector<std::vector<float>>& vectors);

// A 2-D PCA of `rows` (one row per checkpoint): the rows are centred and
// projected on the two leading principal axes. Signs are fixed so that each
// axis's last coordinate is ≥ 0 (the final checkpoint lies on the positive
// side), making results reproducible.
struct Trajectory2d {
  std::vector<std::pair<double, double>> points;  // one per row
  double explained1 = 0;  // fraction of the total variance on each axis
  double explained2 = 0;
};
// Errors: kInvalidArgument for no rows or rows of different lengths.
absl::StatusOr<Trajectory2d> PcaTrajectory(
    const std::vector<std::vector<float>>& rows);

}  // namespace saetrack::analysis

#endif  // SAETRACK_ANALYSIS_DYNAMICS_H_
