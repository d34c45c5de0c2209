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
