// Feature dynamics over a chain of SAEs (DESIGN.md §4), as plain numeric
// functions: the coordinator runs them over stored results and stores what
// they return. No torch, no storage, no RPC: everything here is a pure
// function of its arguments and deterministic.
#ifndef SAETRACK_ANALYSIS_DYNAMICS_H_
#define SAETRACK_ANALYSIS_DYNAMICS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::analysis {

// A continuous piecewise-linear fit with one, two or three segments,
//
//   y(x) = a + s1·x + (s2 − s1)·max(0, x − b1) + (s3 − s2)·max(0, x − b2),
//
// found by least squares over the breakpoints (exhaustively over candidate
// breakpoints, see FitPiecewiseLinear). A fit with fewer than three segments
// puts its unused breakpoints at the last point's x and repeats its last
// slope in the unused ones, so the formula above holds for every fit and
// segment k always spans [b(k−1), b(k)] (empty for unused segments).
struct PhaseFit {
  int segments = 3;        // 1, 2 or 3
  double breakpoint1 = 0;  // b1, in x units
  double breakpoint2 = 0;  // b2
  double slope1 = 0;       // slope of each segment
  double slope2 = 0;
  double slope3 = 0;
  double intercept = 0;  // a
  double rss = 0;        // residual sum of squares
  double r_squared = 0;  // 1 − rss / total sum of squares (1 when y is flat)
  // The Bayesian information criterion of the fit on n points:
  //   n·ln(max(rss / n, kPhaseRssFloor · var(y), resolution²)) + k·ln(n),
  // k = 2·segments parameters (intercept, slopes and breakpoints) and
  // `resolution` the fit's argument of that name. var(y) is taken as 1 when
  // y is flat. Lower is better.
  double bic = 0;
};

// rss / n is floored at this fraction of the variance of y in the BIC, so
// that fits exact up to rounding (a noiseless line, a planted noiseless
// curve) compare by their number of parameters, not by rounding noise.
inline constexpr double kPhaseRssFloor = 1e-12;

// The number of points an s-segment fit needs to compete in FitPhases: more
// points than its 2·s parameters (5 for two segments, 7 for three), except
// that a line, the model of last resort, is fitted from 2 points.
int MinPointsToCompete(int segments);

// The best s-segment fit of points (x[i], y[i]), s = `segments` in 1..3.
// Candidate breakpoints are the data's x values and the midpoints between
// neighbours, excluding the two ends, so each segment spans at least one
// interval; ties go to the first candidate (pair) in x order. The search
// costs O(n) for two segments and O(n²) for three (O(1) per breakpoint pair,
// from prefix sums), then the winner is refitted directly in O(n).
// `resolution` is the precision of the y values (0 for exact values, the
// float spacing for cosines computed in float): residuals below it are
// rounding, and the BIC floors rss / n at its square.
// Errors: kInvalidArgument when `segments` is not 1, 2 or 3, the sizes
// differ, fewer than segments + 1 points are given, x is not strictly
// increasing, or a value is not finite (naming the index).
absl::StatusOr<PhaseFit> FitPiecewiseLinear(const std::vector<double>& x,
                                            const std::vector<double>& y,
                                            int segments,
                                            double resolution = 0);

// The 1-, 2- and 3-segment fits of the same points and the number of
// segments the BIC chooses.
struct PhaseModels {
  int points = 0;  // n
  // fits[s − 1]: the best s-segment fit; nullopt when fewer than
  // MinPointsToCompete(s) points were given (that model did not compete).
  std::array<std::optional<PhaseFit>, 3> fits;
  int chosen = 1;  // segments of the fit with the lowest BIC (ties: fewer)

  const PhaseFit& best() const { return *fits[chosen - 1]; }
};

// Fits every model that has enough points and chooses among them by BIC
// (`resolution` as for FitPiecewiseLinear). O(n²) in the number of points.
// Errors as FitPiecewiseLinear's, with at least 2 points required.
absl::StatusOr<PhaseModels> FitPhases(const std::vector<double>& x,
                                      const std::vector<double>& y,
                                      double resolution = 0);

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
