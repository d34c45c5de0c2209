#include "analysis/dynamics.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saetrack::analysis {
namespace {

// A breakpoint pair is skipped as (numerically) singular when the part of
// its two hinge columns orthogonal to {1, x} has a Gram determinant below
// this fraction of the product of their squared norms: the two hinges are
// then the same column up to rounding.
constexpr double kSingularPair = 1e-12;

// Breakpoints anywhere in the first interval (x0, x1] give the same column
// space, so the same rss, and so do breakpoints in [x(n−2), x(n−1)): the
// search takes a candidate only when its rss is below the best so far by
// more than this fraction of the total sum of squares, so that such ties,
// up to rounding, go to the first candidate in x order.
constexpr double kRssTie = 1e-9;

absl::Status ValidatePoints(const std::vector<double>& x,
                            const std::vector<double>& y, int min_points) {
  if (x.size() != y.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "phase fit: ", x.size(), " x values but ", y.size(), " y values"));
  }
  const int n = static_cast<int>(x.size());
  if (n < min_points) {
    return absl::InvalidArgumentError(absl::StrCat(
        "phase fit: needs at least ", min_points, " points, got ", n));
  }
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("phase fit: point ", i, " is not finite"));
    }
    if (i > 0 && !(x[i] > x[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("phase fit: x must increase strictly (point ", i, ")"));
    }
  }
  return absl::OkStatus();
}

// The least-squares search over candidate breakpoints, in O(1) per
// candidate and per candidate pair.
//
// With u = (x − mean x) / sd x and z = y − mean y, the fit of z on
// {1, u, hinge(c), hinge(d)} (hinge(c) = max(0, u − c)) leaves
//   rss = r·r − gᵀ G⁻¹ g,
// r the residual of the line fit, G the Gram matrix and g the inner products
// with r of the hinges' components orthogonal to {1, u} (Frisch–Waugh). Every
// inner product of a hinge with 1, u, z or another hinge is a polynomial in
// c and d over suffix sums from the first point past the breakpoint, so it
// costs O(1) once those sums are known. The sums are of v = u − u(n−1), the
// distance to the last point: hinges near the end are small, and sums of u
// there would lose their squares to cancellation (a pair of hinges that
// differ only at the last point would no longer look singular).
class BreakpointSearch {
 public:
  // REQUIRES: x and y validated, at least 2 points.
  BreakpointSearch(const std::vector<double>& x, const std::vector<double>& y)
      : n_(static_cast<int>(x.size())) {
    const double n = n_;
    double mean_x = 0, mean_y = 0;
    for (int i = 0; i < n_; ++i) {
      mean_x += x[i];
      mean_y += y[i];
    }
    mean_x /= n;
    mean_y /= n;
    double var_x = 0;
    for (double v : x) var_x += (v - mean_x) * (v - mean_x);
    const double sd_x = std::sqrt(var_x / n);

    std::vector<double> u(n_), z(n_);
    for (int i = 0; i < n_; ++i) {
      u[i] = (x[i] - mean_x) / sd_x;
      z[i] = y[i] - mean_y;
    }
    const double u_last = u.back();
    // Suffix sums over points k..n−1 of v, v², z and v·z.
    Sums sums;
    sums.v.assign(n_ + 1, 0);
    sums.vv.assign(n_ + 1, 0);
    sums.z.assign(n_ + 1, 0);
    sums.vz.assign(n_ + 1, 0);
    double zz = 0, uz = 0;
    for (int i = n_ - 1; i >= 0; --i) {
      const double v = u[i] - u_last;
      sums.v[i] = sums.v[i + 1] + v;
      sums.vv[i] = sums.vv[i + 1] + v * v;
      sums.z[i] = sums.z[i + 1] + z[i];
      sums.vz[i] = sums.vz[i + 1] + v * z[i];
      zz += z[i] * z[i];
      uz += u[i] * z[i];
    }
    line_rss_ = std::max(0.0, zz - uz * uz / n);  // Σu² = n, Σu = Σz = 0
    tie_ = kRssTie * zz;

    // The candidates in x order: mid(0,1), x1, mid(1,2), ..., mid(n−2,n−1),
    // each with the first point strictly to its right.
    for (int i = 1; i < n_; ++i) {
      const double mid = 0.5 * (x[i - 1] + x[i]);
      AddCandidate(mid, (mid - mean_x) / sd_x - u_last, i, sums, u_last, uz);
      if (i + 1 < n_) {
        AddCandidate(x[i], u[i] - u_last, i + 1, sums, u_last, uz);
      }
    }
  }

  int size() const { return static_cast<int>(c_.size()); }
  double x(int candidate) const { return x_[candidate]; }

  // The candidate of the best single breakpoint; −1 when none fits.
  int BestSingle() const {
    int best = -1;
    double best_rss = std::numeric_limits<double>::infinity();
    for (int a = 0; a < size(); ++a) {
      if (!(g_[a] > 0)) continue;  // the hinge lies in {1, u}
      const double rss = line_rss_ - r_[a] * r_[a] / g_[a];
      if (rss < best_rss - tie_) {
        best_rss = rss;
        best = a;
      }
    }
    return best;
  }

  // The candidates (a < b) of the best breakpoint pair; {−1, −1} when none
  // fits.
  std::pair<int, int> BestPair() const {
    std::pair<int, int> best = {-1, -1};
    double best_rss = std::numeric_limits<double>::infinity();
    const double inv_n = 1.0 / n_;
    const int m = size();
    for (int a = 0; a < m; ++a) {
      const double ca = c_[a], ga = g_[a], ra = r_[a];
      const double ha1 = h1_[a], hau = hu_[a];
      for (int b = a + 1; b < m; ++b) {
        // Σ over the points past b of (v − ca)(v − cb).
        const double cb = c_[b];
        const double hab = sv2_[b] - (ca + cb) * sv1_[b] + ca * cb * count_[b];
        const double gab = hab - (ha1 * h1_[b] + hau * hu_[b]) * inv_n;
        const double gb = g_[b];
        const double det = ga * gb - gab * gab;
        if (!(det > kSingularPair * ga * gb)) continue;
        const double rb = r_[b];
        const double reduction =
            (gb * ra * ra - 2 * gab * ra * rb + ga * rb * rb) / det;
        const double rss = line_rss_ - reduction;
        if (rss < best_rss - tie_) {
          best_rss = rss;
          best = {a, b};
        }
      }
    }
    return best;
  }

 private:
  struct Sums {
    std::vector<double> v, vv, z, vz;
  };

  // `c`: the breakpoint in v; `first`: the first point past it.
  void AddCandidate(double bx, double c, int first, const Sums& sums,
                    double u_last, double uz) {
    const double n = n_;
    const double count = n_ - first;
    const double h1 = sums.v[first] - c * count;           // hinge · 1
    const double hv = sums.vv[first] - c * sums.v[first];  // hinge · v
    const double hh = hv - c * h1;                         // hinge · hinge
    const double hu = hv + u_last * h1;                    // hinge · u
    const double hz = sums.vz[first] - c * sums.z[first];  // hinge · z
    x_.push_back(bx);
    c_.push_back(c);
    count_.push_back(count);
    sv1_.push_back(sums.v[first]);
    sv2_.push_back(sums.vv[first]);
    h1_.push_back(h1);
    hu_.push_back(hu);
    g_.push_back(hh - (h1 * h1 + hu * hu) / n);
    r_.push_back(hz - uz / n * hu);
  }

  int n_;
  double line_rss_ = 0;
  double tie_ = 0;  // rss differences up to this are ties
  // Per candidate, in x order.
  std::vector<double> x_;          // the breakpoint in x
  std::vector<double> c_;          // ... in v
  std::vector<double> count_;      // points past it
  std::vector<double> sv1_, sv2_;  // Σv, Σv² over those points
  std::vector<double> h1_, hu_;    // hinge · 1, hinge · u
  std::vector<double> g_;          // squared norm of the hinge ⟂ {1, u}
  std::vector<double> r_;          // its inner product with the line residual
};

// The least-squares fit of y on {1, x, hinges at `breakpoints`} computed
// directly (QR of the n x p design, x and y centred), with its residuals.
PhaseFit FitAt(const std::vector<double>& x, const std::vector<double>& y,
               const std::vector<double>& breakpoints) {
  const int n = static_cast<int>(x.size());
  const int p = 2 + static_cast<int>(breakpoints.size());
  double mean_x = 0, mean_y = 0;
  for (int i = 0; i < n; ++i) {
    mean_x += x[i];
    mean_y += y[i];
  }
  mean_x /= n;
  mean_y /= n;
  Eigen::MatrixXd design(n, p);
  Eigen::VectorXd target(n);
  for (int i = 0; i < n; ++i) {
    design(i, 0) = 1;
    design(i, 1) = x[i] - mean_x;
    for (int j = 0; j + 2 < p; ++j) {
      design(i, j + 2) = std::max(0.0, x[i] - breakpoints[j]);
    }
    target(i) = y[i] - mean_y;
  }
  const Eigen::VectorXd w = design.colPivHouseholderQr().solve(target);
  const Eigen::VectorXd residual = target - design * w;

  PhaseFit fit;
  fit.segments = p - 1;
  fit.rss = residual.squaredNorm();
  fit.intercept = mean_y + w(0) - w(1) * mean_x;
  double slopes[3];
  slopes[0] = w(1);
  for (int s = 1; s < 3; ++s) {
    slopes[s] = slopes[s - 1] + (s + 1 < p ? w(s + 1) : 0.0);
  }
  fit.slope1 = slopes[0];
  fit.slope2 = slopes[1];
  fit.slope3 = slopes[2];
  fit.breakpoint1 = breakpoints.size() > 0 ? breakpoints[0] : x.back();
  fit.breakpoint2 = breakpoints.size() > 1 ? breakpoints[1] : x.back();
  return fit;
}

absl::StatusOr<PhaseFit> FitWith(const std::vector<double>& x,
                                 const std::vector<double>& y, int segments,
                                 double resolution,
                                 const BreakpointSearch& search) {
  std::vector<double> breakpoints;
  if (segments == 2) {
    const int a = search.BestSingle();
    if (a < 0) {
      return absl::InvalidArgumentError("phase fit: no breakpoint fits");
    }
    breakpoints = {search.x(a)};
  } else if (segments == 3) {
    const auto [a, b] = search.BestPair();
    if (a < 0) {
      return absl::InvalidArgumentError("phase fit: no breakpoint pair fits");
    }
    breakpoints = {search.x(a), search.x(b)};
  }
  PhaseFit fit = FitAt(x, y, breakpoints);
  if (!std::isfinite(fit.rss)) {
    return absl::InvalidArgumentError("phase fit: the fit is not finite");
  }
  const double n = static_cast<double>(x.size());
  double mean = 0;
  for (double v : y) mean += v;
  mean /= n;
  double total = 0;
  for (double v : y) total += (v - mean) * (v - mean);
  fit.r_squared = total > 0 ? 1 - fit.rss / total : 1;
  const double variance = total > 0 ? total / n : 1;
  const double floor =
      std::max(kPhaseRssFloor * variance, resolution * resolution);
  fit.bic =
      n * std::log(std::max(fit.rss / n, floor)) + 2.0 * segments * std::log(n);
  return fit;
}

}  // namespace

int MinPointsToCompete(int segments) {
  return segments <= 1 ? 2 : 2 * segments + 1;
}

absl::StatusOr<PhaseFit> FitPiecewiseLinear(const std::vector<double>& x,
                                            const std::vector<double>& y,
                                            int segments, double resolution) {
  if (segments < 1 || segments > 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "phase fit: ", segments, " segments asked for, 1 to 3 are fitted"));
  }
  if (absl::Status s = ValidatePoints(x, y, segments + 1); !s.ok()) return s;
  return FitWith(x, y, segments, resolution, BreakpointSearch(x, y));
}

absl::StatusOr<PhaseModels> FitPhases(const std::vector<double>& x,
                                      const std::vector<double>& y,
                                      double resolution) {
  if (absl::Status s = ValidatePoints(x, y, MinPointsToCompete(1)); !s.ok()) {
    return s;
  }
  const BreakpointSearch search(x, y);
  PhaseModels models;
  models.points = static_cast<int>(x.size());
  for (int segments = 1; segments <= 3; ++segments) {
    if (models.points < MinPointsToCompete(segments)) break;
    absl::StatusOr<PhaseFit> fit = FitWith(x, y, segments, resolution, search);
    if (!fit.ok()) return fit.status();
    models.fits[segments - 1] = *fit;
    if (fit->bic < models.best().bic) models.chosen = segments;
  }
  return models;
}

std::vector<double> LogSteps(const std::vector<int64_t>& steps) {
  std::vector<double> x;
  x.reserve(steps.size());
  for (int64_t s : steps) x.push_back(std::log(static_cast<double>(s) + 1));
  return x;
}

std::optional<double> Quantile(std::vector<double> values, double q) {
  values.erase(std::remove_if(values.begin(), values.end(),
                              [](double v) { return !std::isfinite(v); }),
               values.end());
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const double position =
      std::clamp(q, 0.0, 1.0) * static_cast<double>(values.size() - 1);
  const size_t low = static_cast<size_t>(std::floor(position));
  const size_t high = std::min(low + 1, values.size() - 1);
  const double fraction = position - static_cast<double>(low);
  return values[low] + fraction * (values[high] - values[low]);
}

std::optional<int> FormationIndex(const std::vector<double>& progress,
                                  double tau) {
  if (progress.empty() || !(progress.back() > 0)) return std::nullopt;
  const double threshold = tau * progress.back();
  for (size_t t = 0; t < progress.size(); ++t) {
    if (progress[t] >= threshold) return static_cast<int>(t);
  }
  return static_cast<int>(progress.size() - 1);
}

TokenConcentration ClassifyTokens(const std::vector<int64_t>& top_tokens,
                                  double threshold) {
  TokenConcentration result;
  if (top_tokens.empty()) return result;
  std::map<int64_t, int> counts;
  for (int64_t token : top_tokens) ++counts[token];
  int best = 0;
  for (const auto& [token, count] : counts) {
    if (count > best) {  // ties: the smallest token id, deterministically
      best = count;
      result.top_token = token;
    }
  }
  result.share = static_cast<double>(best) / top_tokens.size();
  result.token_level = result.share >= threshold;
  return result;
}

std::optional<double> MeanPairwiseCosine(
    const std::vector<std::vector<float>>& vectors) {
  const size_t n = vectors.size();
  if (n < 2) return std::nullopt;
  std::vector<double> norms(n);
  for (size_t i = 0; i < n; ++i) {
    double s = 0;
    for (float v : vectors[i]) s += static_cast<double>(v) * v;
    norms[i] = std::sqrt(s);
  }
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      if (norms[i] == 0 || norms[j] == 0) continue;
      double dot = 0;
      const size_t d = std::min(vectors[i].size(), vectors[j].size());
      for (size_t k = 0; k < d; ++k) {
        dot += static_cast<double>(vectors[i][k]) * vectors[j][k];
      }
      sum += dot / (norms[i] * norms[j]);
    }
  }
  return sum / (static_cast<double>(n) * (n - 1) / 2);
}

absl::StatusOr<Trajectory2d> PcaTrajectory(
    const std::vector<std::vector<float>>& rows) {
  if (rows.empty()) {
    return absl::InvalidArgumentError("PCA trajectory: no rows");
  }
  const int n = static_cast<int>(rows.size());
  const size_t d = rows[0].size();
  for (int i = 0; i < n; ++i) {
    if (rows[i].size() != d) {
      return absl::InvalidArgumentError(absl::StrCat("PCA trajectory: row ", i,
                                                     " has ", rows[i].size(),
                                                     " values, row 0 has ", d));
    }
  }
  std::vector<double> mean(d, 0);
  for (const auto& row : rows) {
    for (size_t k = 0; k < d; ++k) mean[k] += row[k];
  }
  for (double& m : mean) m /= n;
  // The Gram matrix of the centred rows: n x n, small for a chain, and its
  // eigenvectors scaled by sqrt(eigenvalue) are the principal coordinates.
  Eigen::MatrixXd gram(n, n);
  for (int i = 0; i < n; ++i) {
    for (int j = i; j < n; ++j) {
      double dot = 0;
      for (size_t k = 0; k < d; ++k) {
        dot += (rows[i][k] - mean[k]) * (rows[j][k] - mean[k]);
      }
      gram(i, j) = gram(j, i) = dot;
    }
  }
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(gram);
  if (eigen.info() != Eigen::Success) {
    // Only for non-finite rows: NaN coordinates and nothing explained, as
    // the hand-written Jacobi solver this replaced gave.
    Trajectory2d result;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    result.points.assign(n, {nan, nan});
    return result;
  }
  // Eigen sorts the eigenvalues ascending; the axes are taken largest first.
  const Eigen::VectorXd& values = eigen.eigenvalues();
  const Eigen::MatrixXd& vectors = eigen.eigenvectors();
  double trace = 0;
  for (int i = 0; i < n; ++i) trace += std::max(0.0, values[i]);

  Trajectory2d result;
  result.points.assign(n, {0.0, 0.0});
  for (int axis = 0; axis < std::min(2, n); ++axis) {
    const int e = n - 1 - axis;
    const double lambda = std::max(0.0, values[e]);
    const double scale = std::sqrt(lambda);
    // Sign convention: the last point's coordinate is non-negative.
    const double sign = vectors(n - 1, e) < 0 ? -1.0 : 1.0;
    for (int i = 0; i < n; ++i) {
      const double coordinate = sign * scale * vectors(i, e);
      if (axis == 0) {
        result.points[i].first = coordinate;
      } else {
        result.points[i].second = coordinate;
      }
    }
    const double explained = trace > 0 ? lambda / trace : 0;
    (axis == 0 ? result.explained1 : result.explained2) = explained;
  }
  return result;
}

}  // namespace saetrack::analysis
