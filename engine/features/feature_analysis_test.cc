#include "engine/features/feature_analysis.h"

#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::engine {
namespace {

// f = ReLU(x): each feature reads one input dimension.
std::unique_ptr<Sae> IdentitySae(int64_t d) {
  SaeSpec spec;
  return *MakeSae(spec, SaeWeights{torch::eye(d), torch::zeros({d}),
                                   torch::eye(d), torch::zeros({d})});
}

TEST(TopActivatingPositionsTest, MatchesBruteForceAcrossChunks) {
  at::Generator generator = at::detail::createCPUGenerator(1);
  torch::Tensor x = torch::randn({300, 6}, generator, torch::kFloat32);
  x.select(1, 5).clamp_max_(0);  // feature 5 never fires
  x.select(1, 4).fill_(-1);
  x[7][4] = 2.0;  // feature 4 fires once
  const std::unique_ptr<Sae> sae = IdentitySae(6);
  const TopActivations whole = TopActivatingPositions(*sae, x, 5, 4096);
  const TopActivations chunked = TopActivatingPositions(*sae, x, 5, 37);
  EXPECT_TRUE(torch::equal(whole.positions, chunked.positions));
  EXPECT_TRUE(torch::equal(whole.values, chunked.values));
  for (int f = 0; f < 4; ++f) {
    auto [values, index] = x.select(1, f).sort(true, 0, true);
    EXPECT_TRUE(torch::equal(whole.positions[f], index.narrow(0, 0, 5))) << f;
    EXPECT_TRUE(torch::allclose(whole.values[f], values.narrow(0, 0, 5)));
  }
  EXPECT_EQ(whole.positions[4][0].item<int64_t>(), 7);
  EXPECT_EQ(whole.values[4][0].item<float>(), 2.0f);
  EXPECT_TRUE((whole.positions[4].narrow(0, 1, 4) == -1).all().item<bool>());
  EXPECT_TRUE((whole.positions[5] == -1).all().item<bool>());
  EXPECT_TRUE((whole.values[5] == 0).all().item<bool>());
}

TEST(GroupMeanPairwiseCosineTest, MatchesBruteForce) {
  at::Generator generator = at::detail::createCPUGenerator(2);
  torch::Tensor v = torch::randn({4, 5, 3}, generator, torch::kFloat32);
  v[1][2].zero_();  // a zero vector
  torch::Tensor valid = torch::ones({4, 5}, torch::kBool);
  valid[2].narrow(0, 3, 2).fill_(false);
  valid[3].narrow(0, 1, 4).fill_(false);  // one valid row: NaN
  const torch::Tensor got = GroupMeanPairwiseCosine(v, valid);
  for (int g = 0; g < 3; ++g) {
    double sum = 0;
    int pairs = 0;
    for (int i = 0; i < 5; ++i) {
      for (int j = i + 1; j < 5; ++j) {
        if (!valid[g][i].item<bool>() || !valid[g][j].item<bool>()) continue;
        ++pairs;
        const double ni = v[g][i].norm().item<double>();
        const double nj = v[g][j].norm().item<double>();
        if (ni == 0 || nj == 0) continue;
        sum += (v[g][i] * v[g][j]).sum().item<double>() / (ni * nj);
      }
    }
    EXPECT_NEAR(got[g].item<double>(), sum / pairs, 1e-6) << g;
  }
  EXPECT_TRUE(std::isnan(got[3].item<double>()));
}

TEST(MeasureProgressTest, ClusteredTopPositionsScoreAboveRandom) {
  // Rows 0..9 all point the same way (feature 0 fires there); the rest are
  // random. Feature 0's top positions are those rows, so its activation-space
  // progress is 1 minus the random baseline.
  at::Generator generator = at::detail::createCPUGenerator(3);
  torch::Tensor x = torch::randn({200, 4}, generator, torch::kFloat32);
  x.narrow(0, 0, 10).copy_(
      torch::tensor({5.0f, 1.0f, 0.0f, 0.0f}).expand({10, 4}));
  x.select(1, 0).narrow(0, 10, 190).clamp_max_(1.0);
  const std::unique_ptr<Sae> sae = IdentitySae(4);
  const TopActivations top = TopActivatingPositions(*sae, x, 10);
  EXPECT_TRUE((top.positions[0] < 10).all().item<bool>());
  const torch::Tensor random = torch::arange(0, 200, 2, torch::kLong);
  const ProgressMeasure p = MeasureProgress(*sae, x, top.positions, random);
  ASSERT_EQ(p.activation_space.size(), 4u);
  EXPECT_NEAR(p.activation_space[0], 1.0 - p.activation_baseline, 1e-5);
  EXPECT_NEAR(p.feature_space[0], 1.0 - p.feature_baseline, 1e-5);
  EXPECT_GT(p.activation_space[0], 0.5);
  EXPECT_LT(std::abs(p.activation_baseline), 0.3);
  for (int f = 1; f < 4; ++f) {
    EXPECT_LT(p.activation_space[f], p.activation_space[0]) << f;
  }
}

TEST(SameTokenPositionsTest, DrawsAnotherPositionOfTheSameToken) {
  // Token 7 at positions 0, 3, 5, 9; token 2 only at position 1.
  const torch::Tensor tokens =
      torch::tensor({7, 2, 4, 7, 4, 7, 4, 4, 4, 7}, torch::kLong);
  const torch::Tensor positions =
      torch::tensor({{0, 3, 5, 9}, {1, 2, -1, -1}}, torch::kLong);
  std::vector<int> seen(10, 0);
  for (uint64_t seed = 0; seed < 40; ++seed) {
    const torch::Tensor q = SameTokenPositions(positions, tokens, seed);
    ASSERT_EQ(q.sizes(), positions.sizes());
    for (int j = 0; j < 4; ++j) {
      const int64_t p = positions[0][j].item<int64_t>();
      const int64_t got = q[0][j].item<int64_t>();
      ASSERT_NE(got, p) << "drew the position itself";
      ASSERT_EQ(tokens[got].item<int64_t>(), 7);
      ++seen[got];
    }
    EXPECT_EQ(q[1][0].item<int64_t>(), -1);  // token 2 occurs only there
    const int64_t other = q[1][1].item<int64_t>();
    EXPECT_NE(other, 2);
    EXPECT_EQ(tokens[other].item<int64_t>(), 4);
    EXPECT_EQ(q[1][2].item<int64_t>(), -1);  // padding stays padding
  }
  // Every other position of token 7 gets drawn.
  for (int p : {0, 3, 5, 9}) EXPECT_GT(seen[p], 0) << p;
  // Deterministic for a seed.
  EXPECT_TRUE(torch::equal(SameTokenPositions(positions, tokens, 5),
                           SameTokenPositions(positions, tokens, 5)));
}

// A feature whose top contexts are alike only because they hold one token
// scores near 0 with the same-token baseline, far above 0 with random
// positions; one whose top contexts share more than their tokens stays high.
TEST(MeasureProgressTest, TokenControlledBaselineSeparatesTokenFromContext) {
  at::Generator generator = at::detail::createCPUGenerator(4);
  const int64_t n = 400;
  torch::Tensor x = torch::randn({n, 4}, generator, torch::kFloat32) * 0.1;
  torch::Tensor tokens = torch::randint(10, 50, {n}, generator, torch::kLong);
  // Token 1 at rows 0..39: every one of them is the same vector, and feature
  // 0 fires on it.
  tokens.narrow(0, 0, 40).fill_(1);
  x.narrow(0, 0, 40).copy_(
      torch::tensor({5.0f, 0.0f, 0.0f, 1.0f}).expand({40, 4}));
  // Token 2 at rows 40..79: feature 1 fires strongly only on rows 40..49,
  // which share a direction; the other rows of token 2 point elsewhere.
  tokens.narrow(0, 40, 40).fill_(2);
  x.narrow(0, 40, 10).copy_(
      torch::tensor({0.0f, 5.0f, 1.0f, 0.0f}).expand({10, 4}));
  x.narrow(0, 50, 30).copy_(torch::randn({30, 4}, generator, torch::kFloat32) *
                            torch::tensor({0.0f, 0.1f, 1.0f, 1.0f}));
  x.select(1, 0).narrow(0, 40, n - 40).clamp_max_(0.5);
  const std::unique_ptr<Sae> sae = IdentitySae(4);
  const TopActivations top = TopActivatingPositions(*sae, x, 10);
  EXPECT_TRUE((top.positions[1] >= 40).all().item<bool>());
  EXPECT_TRUE((top.positions[1] < 50).all().item<bool>());
  const torch::Tensor random = torch::arange(0, n, 2, torch::kLong);
  const torch::Tensor same = SameTokenPositions(top.positions, tokens, 1);
  const ProgressMeasure p =
      MeasureProgress(*sae, x, top.positions, random, same);
  ASSERT_EQ(p.token_controlled.size(), 4u);
  EXPECT_GT(p.activation_space[0], 0.5);
  EXPECT_NEAR(p.token_controlled[0], 0.0, 1e-5);
  EXPECT_GT(p.activation_space[1], 0.5);
  EXPECT_GT(p.token_controlled[1], 0.4);
  // Without them: no token-controlled values.
  EXPECT_TRUE(
      MeasureProgress(*sae, x, top.positions, random).token_controlled.empty());
}

TEST(ContextWindowTest, StaysInsideTheContext) {
  const torch::Tensor contexts =
      torch::arange(0, 12, torch::kLong).reshape({2, 6});
  int offset = -1;
  EXPECT_THAT(ContextWindow(contexts, 8, 3, 2, &offset),
              ::testing::ElementsAre(6, 7, 8, 9, 10));
  EXPECT_EQ(offset, 2);
  EXPECT_THAT(ContextWindow(contexts, 5, 1, 4, &offset),
              ::testing::ElementsAre(4, 5));
  EXPECT_EQ(offset, 1);
}

}  // namespace
}  // namespace saetrack::engine
