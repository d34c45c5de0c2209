#include "engine/features/analysis_pass.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace saetrack::engine {
namespace {

// Vocab 5, d_in 3: the unembedding rows are the tokens' directions.
torch::Tensor TinyUnembedding() {
  return torch::tensor({1.0f, 0.0f, 0.0f,   //
                        0.0f, 1.0f, 0.0f,   //
                        0.0f, 0.0f, 1.0f,   //
                        -1.0f, 0.0f, 0.0f,  //
                        0.5f, 0.5f, 0.0f})
      .reshape({5, 3});
}

std::vector<int64_t> Row(const torch::Tensor& t, int64_t i) {
  const torch::Tensor r = t[i].to(torch::kLong).contiguous();
  return std::vector<int64_t>(r.data_ptr<int64_t>(),
                              r.data_ptr<int64_t>() + r.numel());
}

TEST(ComputeLogitEffectsTest, TopAndBottomTokensOfUnitDirections) {
  const torch::Tensor w_u = TinyUnembedding();
  // Feature 0 points along token 0 with a bit of token 1, at norm 10 (the
  // folded scale must not matter); feature 1 along -token 2 and token 1;
  // feature 2 is dead (zero row).
  const torch::Tensor decoder = torch::tensor({10.0f, 1.0f, 0.0f,  //
                                               0.0f, 0.6f, -0.8f,  //
                                               0.0f, 0.0f, 0.0f})
                                    .reshape({3, 3});
  const LogitEffects effects = ComputeLogitEffects(
      [&](const torch::Tensor& d) { return torch::matmul(d, w_u.t()); }, 5,
      decoder, 2);
  ASSERT_EQ(effects.promoted_tokens.sizes(), torch::IntArrayRef({3, 2}));
  ASSERT_EQ(effects.suppressed_values.sizes(), torch::IntArrayRef({3, 2}));
  // Feature 0: unit direction (10, 1, 0) / sqrt(101); logits per token
  // 0.995, 0.0995, 0, -0.995, 0.547.
  const float n0 = std::sqrt(101.0f);
  EXPECT_EQ(Row(effects.promoted_tokens, 0), (std::vector<int64_t>{0, 4}));
  EXPECT_NEAR(effects.promoted_values[0][0].item<float>(), 10 / n0, 1e-5);
  EXPECT_NEAR(effects.promoted_values[0][1].item<float>(), 5.5f / n0, 1e-5);
  EXPECT_EQ(Row(effects.suppressed_tokens, 0), (std::vector<int64_t>{3, 2}));
  EXPECT_NEAR(effects.suppressed_values[0][0].item<float>(), -10 / n0, 1e-5);
  EXPECT_NEAR(effects.suppressed_values[0][1].item<float>(), 0.0f, 1e-6);
  // Feature 1: (0, 0.6, -0.8), already unit; logits 0, 0.6, -0.8, 0, 0.3.
  EXPECT_EQ(Row(effects.promoted_tokens, 1), (std::vector<int64_t>{1, 4}));
  EXPECT_NEAR(effects.promoted_values[1][0].item<float>(), 0.6f, 1e-6);
  EXPECT_NEAR(effects.promoted_values[1][1].item<float>(), 0.3f, 1e-6);
  EXPECT_EQ(effects.suppressed_tokens[1][0].item<int64_t>(), 2);
  EXPECT_NEAR(effects.suppressed_values[1][0].item<float>(), -0.8f, 1e-6);
  // The dead feature's logits are all 0 (no NaN from a zero norm).
  EXPECT_TRUE(torch::all(effects.promoted_values[2] == 0).item<bool>());
  EXPECT_TRUE(torch::all(effects.suppressed_values[2] == 0).item<bool>());
}

TEST(ComputeLogitEffectsTest, ChunkingOverFeaturesGivesTheSameAnswer) {
  at::Generator generator = at::detail::createCPUGenerator(7);
  const torch::Tensor w_u = torch::randn({50, 8}, generator, torch::kFloat32);
  const torch::Tensor decoder =
      torch::randn({13, 8}, generator, torch::kFloat32) * 3;
  int calls = 0;
  auto unembed = [&](const torch::Tensor& d) {
    ++calls;
    EXPECT_LE(d.size(0), 2);  // 100 elements / vocab 50
    return torch::matmul(d, w_u.t());
  };
  const LogitEffects chunked =
      ComputeLogitEffects(unembed, 50, decoder, 4, /*chunk_elements=*/100);
  EXPECT_EQ(calls, 7);
  const torch::Tensor unit = decoder / decoder.norm(2, {1}, true);
  const torch::Tensor logits = torch::matmul(unit, w_u.t());
  const auto [values, tokens] = logits.topk(4, 1, true, true);
  EXPECT_TRUE(torch::equal(chunked.promoted_tokens, tokens));
  EXPECT_TRUE(torch::allclose(chunked.promoted_values, values, 1e-5, 1e-5));
  const auto [low_values, low_tokens] = logits.topk(4, 1, false, true);
  EXPECT_TRUE(torch::equal(chunked.suppressed_tokens, low_tokens));
  EXPECT_TRUE(
      torch::allclose(chunked.suppressed_values, low_values, 1e-5, 1e-5));
}

}  // namespace
}  // namespace saetrack::engine
