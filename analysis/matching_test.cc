#include "analysis/matching.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::analysis {
namespace {

using ::testing::HasSubstr;

// The best assignment by trying every permutation (small n only).
double BruteForceBest(const std::vector<double>& s, int n, int m) {
  std::vector<int> columns(m);
  std::iota(columns.begin(), columns.end(), 0);
  double best = -1e300;
  do {
    double total = 0;
    for (int i = 0; i < n; ++i) total += s[i * m + columns[i]];
    best = std::max(best, total);
  } while (std::next_permutation(columns.begin(), columns.end()));
  return best;
}

TEST(MatchingTest, AssignmentIsOptimalOnRandomMatrices) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> uniform(-1, 1);
  for (int trial = 0; trial < 40; ++trial) {
    const int n = 1 + trial % 5;
    const int m = n + trial % 3;
    std::vector<double> s(n * m);
    for (double& v : s) v = uniform(rng);
    const std::vector<int> assignment = *MaxWeightAssignment(s, n, m);
    ASSERT_EQ(assignment.size(), static_cast<size_t>(n));
    std::vector<int> sorted = assignment;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end())
        << "columns used twice";
    double total = 0;
    for (int i = 0; i < n; ++i) total += s[i * m + assignment[i]];
    EXPECT_NEAR(total, BruteForceBest(s, n, m), 1e-12) << "trial " << trial;
  }
}

TEST(MatchingTest, GreedyWouldFailButAssignmentDoesNot) {
  // Greedy takes (0,0)=0.9 and is left with (1,1)=0; optimal is 0.8 + 0.8.
  const std::vector<double> s = {0.9, 0.8, 0.8, 0.0};
  EXPECT_EQ(*MaxWeightAssignment(s, 2, 2), (std::vector<int>{1, 0}));
}

TEST(MatchingTest, RejectsBadInput) {
  EXPECT_THAT(MaxWeightAssignment({1, 2}, 2, 1).status().message(),
              HasSubstr("n <= m"));
  EXPECT_THAT(MaxWeightAssignment({1, 2, 3}, 1, 2).status().message(),
              HasSubstr("3 values for a 1 x 2 matrix"));
  EXPECT_THAT(
      MaxWeightAssignment({1, std::nan(""), 3, 4}, 2, 2).status().message(),
      HasSubstr("row 0, column 1"));
  EXPECT_FALSE(MatchDictionaries({1, 2, 3}, {1, 2}, 2).ok());
  EXPECT_FALSE(MatchDictionaries({}, {1, 2}, 2).ok());
}

// A permuted, sign-preserving, lightly perturbed copy of a dictionary is
// recovered one to one; an unrelated random dictionary is not.
TEST(MatchingTest, PermutedDictionaryMatchesRandomDoesNot) {
  const int rows = 64, d = 16;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> a(rows * d), b(rows * d), random(rows * d);
  for (float& v : a) v = normal(rng);
  for (float& v : random) v = normal(rng);
  std::vector<int> perm(rows);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int i = 0; i < rows; ++i) {
    for (int k = 0; k < d; ++k) {
      b[perm[i] * d + k] = 3 * a[i * d + k] + 0.05f * normal(rng);
    }
  }
  const DictionaryMatch same = *MatchDictionaries(a, b, d);
  EXPECT_STREQ(same.method, "hungarian");
  EXPECT_EQ(same.matched, rows);
  EXPECT_GT(same.median_cosine, 0.99);
  EXPECT_DOUBLE_EQ(same.fraction_above_0_9, 1.0);
  const DictionaryMatch unrelated = *MatchDictionaries(a, random, d);
  EXPECT_LT(unrelated.median_cosine, 0.6);
  EXPECT_LT(unrelated.fraction_above_0_9, 0.05);
  // Above max_hungarian, an evenly spaced subset is matched to its best.
  const DictionaryMatch subset = *MatchDictionaries(a, b, d, 16);
  EXPECT_STREQ(subset.method, "best");
  EXPECT_EQ(subset.matched, 16);
  EXPECT_GT(subset.median_cosine, 0.99);
}

}  // namespace
}  // namespace saetrack::analysis
