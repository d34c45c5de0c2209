#include "analysis/dynamics.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saetrack::analysis {
namespace {

// Solves the 4x4 normal equations a·w = b (a symmetric positive
// semi-definite) by a pivoted LDLᵀ; false when a is (numerically) singular:
// a pivot of D below 1e-12, the threshold of the Gaussian elimination this
// replaced.
bool Solve4(const Eigen::Matrix4d& a, const Eigen::Vector4d& b,
            Eigen::Vector4d* w) {
  const Eigen::LDLT<Eigen::Matrix4d> ldlt(a);
  if (ldlt.info() != Eigen::Success ||
      !(ldlt.vectorD().cwiseAbs().minCoeff() >= 1e-12)) {
    return false;
  }
  *w = ldlt.solve(b);
  return w->allFinite();
}

}  // namespace

absl::StatusOr<PhaseFit> FitThreePhases(const std::vector<double>& x,
                                        const std::vector<double>& y) {
  if (x.size() != y.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "phase fit: ", x.size(), " x values but ", y.size(), " y values"));
  }
  const int n = static_cast<int>(x.size());
  if (n < 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("phase fit: needs at least 4 points, got ", n));
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
  std::vector<double> candidates;
  for (int i = 1; i + 1 < n; ++i) {
    candidates.push_back(0.5 * (x[i - 1] + x[i]));
    candidates.push_back(x[i]);
  }
  candidates.push_back(0.5 * (x[n - 2] + x[n - 1]));

  double mean = 0;
  for (double v : y) mean += v;
  mean /= n;
  double total = 0;
  for (double v : y) total += (v - mean) * (v - mean);

  PhaseFit best;
  best.rss = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < candidates.size(); ++i) {
    for (size_t j = i + 1; j < candidates.size(); ++j) {
      const double b1 = candidates[i];
      const double b2 = candidates[j];
      Eigen::Matrix4d ata = Eigen::Matrix4d::Zero();
      Eigen::Vector4d aty = Eigen::Vector4d::Zero();
      for (int k = 0; k < n; ++k) {
        const double row[4] = {1.0, x[k], std::max(0.0, x[k] - b1),
                               std::max(0.0, x[k] - b2)};
        for (int r = 0; r < 4; ++r) {
          aty(r) += row[r] * y[k];
          for (int c = 0; c < 4; ++c) ata(r, c) += row[r] * row[c];
        }
      }
      Eigen::Vector4d w;
      if (!Solve4(ata, aty, &w)) continue;
      double rss = 0;
      for (int k = 0; k < n; ++k) {
        const double fit = w[0] + w[1] * x[k] +
                           w[2] * std::max(0.0, x[k] - b1) +
                           w[3] * std::max(0.0, x[k] - b2);
        rss += (y[k] - fit) * (y[k] - fit);
      }
      if (rss < best.rss - 1e-15) {
        best.rss = rss;
        best.breakpoint1 = b1;
        best.breakpoint2 = b2;
        best.intercept = w[0];
        best.slope1 = w[1];
        best.slope2 = w[1] + w[2];
        best.slope3 = w[1] + w[2] + w[3];
      }
    }
  }
  if (!std::isfinite(best.rss)) {
    return absl::InvalidArgumentError("phase fit: no breakpoint pair fits");
  }
  best.r_squared = total > 0 ? 1 - best.rss / total : 1;
  return best;
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
