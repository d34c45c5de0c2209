// Ground truth for the trust checks (DESIGN.md §3): activations made of
// sparse combinations of known directions. SAEs trained with the paper's loss
// on them must find the same features whatever their seed and move far from
// their random initialisation -- and the verdicts must call an SAE that
// trained for a handful of steps what it is.
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "analysis/matching.h"
#include "analysis/quality.h"
#include "engine/sae/sae.h"
#include "engine/sae/sae_trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack {
namespace {

using engine::ActivationScale;
using engine::DecoderCosines;
using engine::InitSaeFromScratch;
using engine::MakeSae;
using engine::Sae;
using engine::SaeSpec;
using engine::SaeTrainer;
using engine::SaeTrainerOptions;
using engine::SaeWeights;
using ::testing::HasSubstr;

constexpr int64_t kFeatures = 32;
constexpr int64_t kDim = 24;

// `rows` activations: each the sum of 1-4 of `directions` [k, d] with
// magnitudes in [1, 3], plus a little isotropic noise; deterministic.
torch::Tensor Planted(const torch::Tensor& directions, int64_t rows,
                      uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  const int64_t k = directions.size(0);
  const torch::Tensor active =
      torch::rand({rows, k}, g, torch::kFloat32) < (2.5 / k);
  const torch::Tensor magnitude =
      1 + 2 * torch::rand({rows, k}, g, torch::kFloat32);
  return torch::mm(active.to(torch::kFloat32) * magnitude, directions) +
         0.02 * torch::randn({rows, directions.size(1)}, g, torch::kFloat32);
}

torch::Tensor Directions(uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  const torch::Tensor d = torch::randn({kFeatures, kDim}, g, torch::kFloat32);
  return d / d.norm(2, 1, /*keepdim=*/true);
}

std::vector<float> Rows(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(),
                            c.data_ptr<float>() + c.numel());
}

double Median(std::vector<float> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

struct Trained {
  SaeWeights init;
  std::unique_ptr<Sae> sae;
};

// A relu_l1 SAE (the paper's loss, ghost grads) trained from scratch on the
// normalised activations for `steps` steps of 256 rows.
Trained TrainFromScratch(const torch::Tensor& train, uint64_t seed, int steps) {
  Trained out;
  out.init = InitSaeFromScratch(kFeatures, train.narrow(0, 0, 2048), seed);
  SaeSpec spec;
  spec.l1_coefficient = 5e-3;
  out.sae = *MakeSae(spec, out.init.Clone());
  SaeTrainerOptions options;
  options.lr = 3e-3;
  options.warmup_steps = 20;
  options.dead_window_tokens = 8192;
  options.ghost_grads = true;
  SaeTrainer trainer(out.sae.get(), options);
  at::Generator g = at::detail::createCPUGenerator(seed ^ 0xBA7C4);
  for (int step = 0; step < steps; ++step) {
    const torch::Tensor index =
        torch::randint(train.size(0), {256}, g, torch::kInt64);
    trainer.Step(train.index_select(0, index));
  }
  return out;
}

class PlantedSaeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    torch::manual_seed(0);
    directions_ = new torch::Tensor(Directions(3));
    const torch::Tensor raw = Planted(*directions_, 32768, 4);
    train_ = new torch::Tensor(raw * ActivationScale(raw));
  }
  static void TearDownTestSuite() {
    delete directions_;
    delete train_;
  }
  static torch::Tensor* directions_;
  static torch::Tensor* train_;
};
torch::Tensor* PlantedSaeTest::directions_ = nullptr;
torch::Tensor* PlantedSaeTest::train_ = nullptr;

TEST_F(PlantedSaeTest, SeedsAgreeAndTrainingMovesFarFromInitialisation) {
  const Trained a = TrainFromScratch(*train_, 11, 3000);
  const Trained b = TrainFromScratch(*train_, 12, 3000);
  const analysis::DictionaryMatch seeds = *analysis::MatchDictionaries(
      Rows(a.sae->weights().W_dec), Rows(b.sae->weights().W_dec), kDim);
  const analysis::DictionaryMatch chance = *analysis::MatchDictionaries(
      Rows(a.init.W_dec), Rows(b.init.W_dec), kDim);
  const analysis::DictionaryMatch truth = *analysis::MatchDictionaries(
      Rows(a.sae->weights().W_dec), Rows(*directions_), kDim);
  const double cos_init_a = Median(DecoderCosines(a.sae->weights(), a.init));
  const double cos_init_b = Median(DecoderCosines(b.sae->weights(), b.init));
  RecordProperty("seed_match_median", std::to_string(seeds.median_cosine));
  EXPECT_GE(seeds.median_cosine, 0.9)
      << "chance level " << chance.median_cosine;
  EXPECT_LT(chance.median_cosine, 0.6);
  EXPECT_GE(truth.median_cosine, 0.9);
  EXPECT_LE(cos_init_a, 0.5);
  EXPECT_LE(cos_init_b, 0.5);

  analysis::ReferencePoint point;
  point.match_median = seeds.median_cosine;
  point.match_above_0_9 = seeds.fraction_above_0_9;
  point.random_median = chance.median_cosine;
  point.chain_median_cos_init = cos_init_a;
  point.reference_median_cos_init = cos_init_b;
  const std::vector<analysis::QualityVerdict> verdicts =
      analysis::QualityVerdicts({point});
  ASSERT_EQ(verdicts.size(), 2u);
  EXPECT_TRUE(verdicts[0].passed) << verdicts[0].verdict;
  EXPECT_TRUE(verdicts[1].passed) << verdicts[1].verdict;
}

TEST_F(PlantedSaeTest, UnderTrainedSaesAreFlagged) {
  // A few dozen steps: the dictionaries are still their initialisations.
  const Trained a = TrainFromScratch(*train_, 11, 30);
  const Trained b = TrainFromScratch(*train_, 12, 30);
  const analysis::DictionaryMatch seeds = *analysis::MatchDictionaries(
      Rows(a.sae->weights().W_dec), Rows(b.sae->weights().W_dec), kDim);
  const analysis::DictionaryMatch chance = *analysis::MatchDictionaries(
      Rows(a.init.W_dec), Rows(b.init.W_dec), kDim);
  analysis::ReferencePoint point;
  point.match_median = seeds.median_cosine;
  point.random_median = chance.median_cosine;
  point.chain_median_cos_init =
      Median(DecoderCosines(a.sae->weights(), a.init));
  point.reference_median_cos_init =
      Median(DecoderCosines(b.sae->weights(), b.init));
  EXPECT_GE(point.chain_median_cos_init, 0.9);
  const std::vector<analysis::QualityVerdict> verdicts =
      analysis::QualityVerdicts({point});
  ASSERT_EQ(verdicts.size(), 2u);
  EXPECT_FALSE(verdicts[0].passed);
  EXPECT_THAT(verdicts[0].verdict, HasSubstr("determined by the seed"));
  EXPECT_FALSE(verdicts[1].passed);
  EXPECT_THAT(verdicts[1].verdict, HasSubstr("have not left"));
}

}  // namespace
}  // namespace saetrack
