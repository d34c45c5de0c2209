#include "analysis/matching.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "analysis/dynamics.h"

namespace saetrack::analysis {
namespace {

// Rows scaled to unit norm (zero rows stay zero).
std::vector<double> UnitRows(const std::vector<float>& rows, int d) {
  std::vector<double> out(rows.begin(), rows.end());
  for (size_t start = 0; start < out.size(); start += d) {
    double norm = 0;
    for (int k = 0; k < d; ++k) norm += out[start + k] * out[start + k];
    norm = std::sqrt(norm);
    if (norm > 0) {
      for (int k = 0; k < d; ++k) out[start + k] /= norm;
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<int>> MaxWeightAssignment(
    const std::vector<double>& similarity, int n, int m) {
  if (n < 0 || m < 0 || n > m) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MaxWeightAssignment: needs 0 <= n <= m, got n ", n, ", m ", m));
  }
  if (similarity.size() != static_cast<size_t>(n) * m) {
    return absl::InvalidArgumentError(
        absl::StrCat("MaxWeightAssignment: ", similarity.size(),
                     " values for a ", n, " x ", m, " matrix"));
  }
  for (size_t i = 0; i < similarity.size(); ++i) {
    if (!std::isfinite(similarity[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("MaxWeightAssignment: value at row ", i / m, ", column ",
                       i % m, " is not finite"));
    }
  }
  // Minimises the cost -similarity. 1-based potentials u (rows), v
  // (columns); row_of[j] is column j's row (0: none).
  const double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0), v(m + 1, 0), min_to(m + 1);
  std::vector<int> row_of(m + 1, 0), way(m + 1, 0);
  std::vector<char> used(m + 1);
  for (int i = 1; i <= n; ++i) {
    row_of[0] = i;
    int j0 = 0;
    std::fill(min_to.begin(), min_to.end(), kInf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[j0] = 1;
      const int i0 = row_of[j0];
      const double* row = &similarity[static_cast<size_t>(i0 - 1) * m];
      double delta = kInf;
      int j1 = 0;
      for (int j = 1; j <= m; ++j) {
        if (used[j]) continue;
        const double reduced = -row[j - 1] - u[i0] - v[j];
        if (reduced < min_to[j]) {
          min_to[j] = reduced;
          way[j] = j0;
        }
        if (min_to[j] < delta) {
          delta = min_to[j];
          j1 = j;
        }
      }
      for (int j = 0; j <= m; ++j) {
        if (used[j]) {
          u[row_of[j]] += delta;
          v[j] -= delta;
        } else {
          min_to[j] -= delta;
        }
      }
      j0 = j1;
    } while (row_of[j0] != 0);
    do {
      const int j1 = way[j0];
      row_of[j0] = row_of[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<int> column_of_row(n, -1);
  for (int j = 1; j <= m; ++j) {
    if (row_of[j] != 0) column_of_row[row_of[j] - 1] = j - 1;
  }
  return column_of_row;
}

absl::StatusOr<DictionaryMatch> MatchDictionaries(const std::vector<float>& a,
                                                  const std::vector<float>& b,
                                                  int d, int max_hungarian) {
  if (d <= 0 || a.empty() || b.empty() || a.size() % d != 0 ||
      b.size() % d != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MatchDictionaries: decoders of ", a.size(), " and ", b.size(),
        " values are not non-empty [rows, ", d, "] matrices"));
  }
  const bool swap = a.size() > b.size();
  std::vector<double> rows = UnitRows(swap ? b : a, d);
  const std::vector<double> columns = UnitRows(swap ? a : b, d);
  const int all_rows = static_cast<int>(rows.size() / d);
  const bool hungarian = all_rows <= max_hungarian;
  if (!hungarian) {
    std::vector<double> subset(static_cast<size_t>(max_hungarian) * d);
    for (int i = 0; i < max_hungarian; ++i) {
      const int64_t source = static_cast<int64_t>(i) * all_rows / max_hungarian;
      std::copy_n(&rows[source * d], d, &subset[static_cast<size_t>(i) * d]);
    }
    rows = std::move(subset);
  }
  const int n = static_cast<int>(rows.size() / d);
  const int m = static_cast<int>(columns.size() / d);
  const auto cosine = [&](int i, int j) {
    double dot = 0;
    const double* x = &rows[static_cast<size_t>(i) * d];
    const double* y = &columns[static_cast<size_t>(j) * d];
    for (int k = 0; k < d; ++k) dot += x[k] * y[k];
    return dot;
  };
  DictionaryMatch match;
  match.matched = n;
  match.cosines.resize(n);
  if (hungarian) {
    std::vector<double> similarity(static_cast<size_t>(n) * m);
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < m; ++j) {
        similarity[static_cast<size_t>(i) * m + j] = cosine(i, j);
      }
    }
    absl::StatusOr<std::vector<int>> assignment =
        MaxWeightAssignment(similarity, n, m);
    if (!assignment.ok()) return assignment.status();
    for (int i = 0; i < n; ++i) {
      match.cosines[i] =
          similarity[static_cast<size_t>(i) * m + (*assignment)[i]];
    }
  } else {
    // Row by row: a large dictionary's n x m matrix would not fit.
    match.method = "best";
    for (int i = 0; i < n; ++i) {
      double best = -1;
      for (int j = 0; j < m; ++j) best = std::max(best, cosine(i, j));
      match.cosines[i] = best;
    }
  }
  match.median_cosine = Quantile(match.cosines, 0.5).value_or(0);
  int above_9 = 0, above_7 = 0;
  for (double c : match.cosines) {
    above_9 += c >= 0.9;
    above_7 += c >= 0.7;
  }
  match.fraction_above_0_9 = static_cast<double>(above_9) / n;
  match.fraction_above_0_7 = static_cast<double>(above_7) / n;
  return match;
}

}  // namespace saetrack::analysis
