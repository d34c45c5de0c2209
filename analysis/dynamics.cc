#include "analysis/dynamics.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saetrack::analysis {
namespace {

// Solves the 4x4 system a·w = b by Gaussian elimination with partial
// pivoting; false when it is (numerically) singular.
bool Solve4(std::array<std::array<double, 4>, 4> a, std::array<double, 4> b,
            std::array<double, 4>* w) {
  for (int col = 0; col < 4; ++col) {
    int pivot = col;
    for (int row = col + 1; row < 4; ++row) {
      if (std::abs(a[row][col]) > std::abs(a[pivot][col])) pivot = row;
    }
    if (std::abs(a[pivot][col]) < 1e-12) return false;
    std::swap(a[col], a[pivot]);
    std::swap(b[col], b[pivot]);
    for (int row = col + 1; row < 4; ++row) {
      const double f = a[row][col] / a[col][col];
      for (int k = col; k < 4; ++k) a[row][k] -= f * a[col][k];
      b[row] -= f * b[col];
    }
  }
  for (int row = 3; row >= 0; --row) {
    double sum = b[row];
    for (int k = row + 1; k < 4; ++k) sum -= a[row][k] * (*w)[k];
    (*w)[row] = sum / a[row][row];
  }
  return true;
}

// Eigen-decomposition of the symmetric matrix `m` (n x n, row-major) by
// cyclic Jacobi rotations: eigenvalues on return in `values`, eigenvectors as
// the columns of `vectors`.
void JacobiEigen(std::vector<double> m, int n, std::vector<double>* values,
                 std::vector<double>* vectors) {
  std::vector<double>& v = *vectors;
  v.assign(static_cast<size_t>(n) * n, 0);
  for (int i = 0; i < n; ++i) v[i * n + i] = 1;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int p = 0; p < n; ++p) {
      for (int q = p + 1; q < n; ++q) off += m[p * n + q] * m[p * n + q];
    }
    if (off < 1e-24) break;
    for (int p = 0; p < n; ++p) {
      for (int q = p + 1; q < n; ++q) {
        const double apq = m[p * n + q];
        if (std::abs(apq) < 1e-300) continue;
        const double theta = (m[q * n + q] - m[p * n + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) /
                         (std::abs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1);
        const double s = t * c;
        for (int k = 0; k < n; ++k) {
          const double mkp = m[k * n + p];
          const double mkq = m[k * n + q];
          m[k * n + p] = c * mkp - s * mkq;
          m[k * n + q] = s * mkp + c * mkq;
        }
        for (int k = 0; k < n; ++k) {
          const double mpk = m[p * n + k];
          const double mqk = m[q * n + k];
          m[p * n + k] = c * mpk - s * mqk;
          m[q * n + k] = s * mpk + c * mqk;
        }
        for (int k = 0; k < n; ++k) {
          const double vkp = v[k * n + p];
          const double vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  values->resize(n);
  for (int i = 0; i < n; ++i) (*values)[i] = m[i * n + i];
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
      std::array<std::array<double, 4>, 4> ata{};
      std::array<double, 4> aty{};
      for (int k = 0; k < n; ++k) {
        const std::array<double, 4> row = {1.0, x[k], std::max(0.0, x[k] - b1),
                                           std::max(0.0, x[k] - b2)};
        for (int r = 0; r < 4; ++r) {
          aty[r] += row[r] * y[k];
          for (int c = 0; c < 4; ++c) ata[r][c] += row[r] * row[c];
        }
      }
      std::array<double, 4> w{};
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
  std::vector<double> gram(static_cast<size_t>(n) * n, 0);
  for (int i = 0; i < n; ++i) {
    for (int j = i; j < n; ++j) {
      double dot = 0;
      for (size_t k = 0; k < d; ++k) {
        dot += (rows[i][k] - mean[k]) * (rows[j][k] - mean[k]);
      }
      gram[i * n + j] = gram[j * n + i] = dot;
    }
  }
  std::vector<double> values, vectors;
  JacobiEigen(gram, n, &values, &vectors);
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return values[a] > values[b]; });
  double trace = 0;
  for (double v : values) trace += std::max(0.0, v);

  Trajectory2d result;
  result.points.assign(n, {0.0, 0.0});
  for (int axis = 0; axis < std::min(2, n); ++axis) {
    const int e = order[axis];
    const double lambda = std::max(0.0, values[e]);
    const double scale = std::sqrt(lambda);
    const double sign = vectors[(n - 1) * n + e] < 0 ? -1.0 : 1.0;
    for (int i = 0; i < n; ++i) {
      const double coordinate = sign * scale * vectors[i * n + e];
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
