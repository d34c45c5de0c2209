#include "engine/lm/activation_cache.h"

#include <torch/torch.h>

#include <vector>

#include "engine/internal/reference_math.h"
#include "engine/lm/activations.h"
#include "engine/lm/gpt_neox.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::engine {
namespace {

using ::testing::HasSubstr;

constexpr int kVocab = 20;
constexpr int kLayers = 3;

class ActivationCacheTest : public ::testing::Test {
 protected:
  ActivationCacheTest()
      : model_(GptNeoxModel::RandomInit(
            reference::TinyModelConfig("gpt_neox", kVocab, kLayers), 3,
            torch::kCPU)),
        contexts_(torch::randint(
            kVocab, {6, 8}, at::detail::createCPUGenerator(2), torch::kInt64)) {
  }

  torch::Tensor Direct(const HookPoint& hook) const {
    return CollectActivations(model_, contexts_, hook, 4, torch::kCPU);
  }

  GptNeoxModel model_;
  torch::Tensor contexts_;
  const HookPoint early_{0, HookSite::kResidPre};
  const HookPoint middle_{1, HookSite::kMlpOut};
  const HookPoint deep_{2, HookSite::kResidPost};
};

TEST_F(ActivationCacheTest, OneForwardPassServesEveryHookOfACheckpoint) {
  ActivationCache cache(int64_t{1} << 30);
  const std::vector<HookPoint> hooks = {early_, middle_, deep_};
  const torch::Tensor a = cache.Take("ckpt-1", "train", model_, contexts_,
                                     middle_, hooks, 4, torch::kCPU);
  EXPECT_EQ(cache.forward_passes(), 1);
  EXPECT_EQ(cache.hits(), 0);
  // Two other hooks kept: 6 contexts x 8 tokens x d_model floats each.
  EXPECT_EQ(cache.kept_bytes(), 2 * 6 * 8 * model_.d_model() * 4);
  const torch::Tensor b = cache.Take("ckpt-1", "train", model_, contexts_,
                                     deep_, hooks, 4, torch::kCPU);
  const torch::Tensor c = cache.Take("ckpt-1", "train", model_, contexts_,
                                     early_, hooks, 4, torch::kCPU);
  EXPECT_EQ(cache.forward_passes(), 1);
  EXPECT_EQ(cache.hits(), 2);
  EXPECT_EQ(cache.kept_bytes(), 0);
  // Exactly what a forward pass for the hook alone gives.
  EXPECT_TRUE(torch::equal(a, Direct(middle_)));
  EXPECT_TRUE(torch::equal(b, Direct(deep_)));
  EXPECT_TRUE(torch::equal(c, Direct(early_)));
  EXPECT_FALSE(torch::equal(a, b));
}

TEST_F(ActivationCacheTest, EachKeptTensorIsHandedOutOnce) {
  ActivationCache cache(int64_t{1} << 30);
  const std::vector<HookPoint> hooks = {early_, deep_};
  cache.Take("ckpt-1", "train", model_, contexts_, early_, hooks, 4,
             torch::kCPU);
  cache.Take("ckpt-1", "train", model_, contexts_, deep_, hooks, 4,
             torch::kCPU);
  // A retried task of the first hook runs the model again.
  const torch::Tensor again = cache.Take("ckpt-1", "train", model_, contexts_,
                                         early_, hooks, 4, torch::kCPU);
  EXPECT_EQ(cache.forward_passes(), 2);
  EXPECT_TRUE(torch::equal(again, Direct(early_)));
}

TEST_F(ActivationCacheTest, SetsAndScopesAreKeptApart) {
  ActivationCache cache(int64_t{1} << 30);
  const std::vector<HookPoint> hooks = {early_, deep_};
  cache.Take("ckpt-1", "heldout", model_, contexts_, early_, hooks, 4,
             torch::kCPU);
  // Another set of the same checkpoint is computed, not taken from the
  // held-out one, and both stay kept.
  const torch::Tensor other = contexts_.flip(0).contiguous();
  cache.Take("ckpt-1", "train", model_, other, early_, hooks, 4, torch::kCPU);
  EXPECT_EQ(cache.forward_passes(), 2);
  EXPECT_EQ(cache.kept_bytes(), 2 * 6 * 8 * model_.d_model() * 4);
  const torch::Tensor deep_train = cache.Take("ckpt-1", "train", model_, other,
                                              deep_, hooks, 4, torch::kCPU);
  EXPECT_TRUE(torch::equal(
      deep_train, CollectActivations(model_, other, deep_, 4, torch::kCPU)));
  // The next checkpoint drops everything of the last one.
  cache.Take("ckpt-2", "heldout", model_, contexts_, early_, {early_}, 4,
             torch::kCPU);
  EXPECT_EQ(cache.kept_bytes(), 0);
  cache.Take("ckpt-2", "heldout", model_, contexts_, deep_, hooks, 4,
             torch::kCPU);
  EXPECT_EQ(cache.forward_passes(), 4);
}

TEST_F(ActivationCacheTest, KeepsNothingBeyondItsBudget) {
  // Room for one other hook's activations, not two.
  ActivationCache cache(6 * 8 * model_.d_model() * 4);
  const std::vector<HookPoint> hooks = {early_, middle_, deep_};
  cache.Take("ckpt-1", "train", model_, contexts_, early_, hooks, 4,
             torch::kCPU);
  EXPECT_EQ(cache.kept_bytes(), 6 * 8 * model_.d_model() * 4);
  const torch::Tensor middle = cache.Take("ckpt-1", "train", model_, contexts_,
                                          middle_, hooks, 4, torch::kCPU);
  const torch::Tensor deep = cache.Take("ckpt-1", "train", model_, contexts_,
                                        deep_, hooks, 4, torch::kCPU);
  EXPECT_EQ(cache.hits(), 1);
  EXPECT_EQ(cache.forward_passes(), 2);
  EXPECT_TRUE(torch::equal(middle, Direct(middle_)));
  EXPECT_TRUE(torch::equal(deep, Direct(deep_)));
}

TEST(ParseJobHooksTest, NamesTheFieldOfABadHook) {
  absl::StatusOr<std::vector<HookPoint>> hooks = ParseJobHooks(
      {{0, "resid_pre"}, {3, "mlp_out"}}, 4, "TrainInput.job_hooks");
  ASSERT_TRUE(hooks.ok()) << hooks.status();
  ASSERT_EQ(hooks->size(), 2u);
  EXPECT_EQ((*hooks)[1].layer, 3);
  EXPECT_EQ((*hooks)[1].site, HookSite::kMlpOut);
  EXPECT_THAT(ParseJobHooks({{0, "resid_pre"}, {4, "resid_pre"}}, 4,
                            "TrainInput.job_hooks")
                  .status()
                  .message(),
              HasSubstr("TrainInput.job_hooks[1]: layer 4 is out of range"));
  EXPECT_THAT(ParseJobHooks({{0, "resid_mid"}}, 4, "TrainInput.job_hooks")
                  .status()
                  .message(),
              HasSubstr("TrainInput.job_hooks[0]"));
  EXPECT_THAT(ParseJobHooks({{-1, "resid_pre"}}, 4, "TrainInput.job_hooks")
                  .status()
                  .message(),
              HasSubstr("layer -1"));
}

}  // namespace
}  // namespace saetrack::engine
