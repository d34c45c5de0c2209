// One-to-one matching of two dictionaries' features by decoder cosine
// similarity (DESIGN.md §3, the trust checks): how many features two SAEs
// share, whatever their indices.
#ifndef SAETRACK_ANALYSIS_MATCHING_H_
#define SAETRACK_ANALYSIS_MATCHING_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::analysis {

// A maximum-weight assignment of the rows of an n x m similarity matrix
// (row-major, n <= m) to distinct columns: column_of_row[i] is row i's
// column. Hungarian algorithm (shortest augmenting paths with potentials),
// O(n^2 m) time, O(n + m) memory besides the matrix. Errors:
// kInvalidArgument when n > m, the size is not n * m, or a value is not
// finite (naming its row and column).
absl::StatusOr<std::vector<int>> MaxWeightAssignment(
    const std::vector<double>& similarity, int n, int m);

// How well two dictionaries' features correspond.
struct DictionaryMatch {
  // Features matched and how: "hungarian" (all features of the smaller
  // dictionary, one to one, maximum total cosine) or "best" (above
  // max_hungarian features, where the O(n^3) assignment is too slow: an evenly
  // spaced subset of max_hungarian features of the smaller dictionary, each
  // to its most similar feature of the other, not one to one).
  int matched = 0;
  const char* method = "hungarian";
  // Quantiles and thresholds of the matched pairs' cosines.
  double median_cosine = 0;
  double fraction_above_0_9 = 0;
  double fraction_above_0_7 = 0;
  // cosine of each matched pair, by feature of `a`.
  std::vector<double> cosines;
};

// Decoder rows of two dictionaries (row-major [rows, d], float32) matched by
// cosine similarity. Zero rows have cosine 0 to everything. Errors:
// kInvalidArgument when the widths differ, a size is not a multiple of d, or
// there are no rows.
absl::StatusOr<DictionaryMatch> MatchDictionaries(const std::vector<float>& a,
                                                  const std::vector<float>& b,
                                                  int d,
                                                  int max_hungarian = 2048);

}  // namespace saetrack::analysis

#endif  // SAETRACK_ANALYSIS_MATCHING_H_
