#include "engine/eval/lm_evaluation.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/lm/gpt2.h"
#include "engine/lm/gpt_neox.h"
#include "engine/internal/reference_math.h"

namespace saetrack::engine {
namespace {

using ::testing::HasSubstr;

constexpr int kVocab = 20;
constexpr int kLayers = 2;
constexpr int kContextLength = 8;
constexpr int kNumContexts = 5;

// Contexts following t -> 3t + 1 (mod 20), a permutation, so the next token
// is a function of the current one: a model can learn it, and zero-ablating
// its residual stream destroys what it learned.
torch::Tensor Contexts(int64_t num_contexts = kNumContexts,
                       int64_t length = kContextLength) {
  std::vector<int64_t> ids;
  for (int64_t c = 0; c < num_contexts; ++c) {
    int64_t token = (7 * c + 2) % kVocab;
    for (int64_t t = 0; t < length; ++t) {
      ids.push_back(token);
      token = (3 * token + 1) % kVocab;
    }
  }
  return torch::tensor(ids, torch::kInt64).reshape({num_contexts, length});
}

// A few Adam steps on Contexts(), so that the clean model is much better
// than the zero-ablated one (a random model need not be).
template <typename Model>
void Train(Model& model) {
  std::vector<torch::Tensor> parameters;
  for (auto& [name, tensor] : model.NamedParameters()) {
    parameters.push_back(tensor.requires_grad_(true));
  }
  torch::optim::Adam optimizer(parameters, torch::optim::AdamOptions(1e-2));
  const torch::Tensor tokens = Contexts(16);
  for (int step = 0; step < 60; ++step) {
    optimizer.zero_grad();
    NextTokenCrossEntropy(model.Logits(tokens), tokens).backward();
    optimizer.step();
  }
  for (torch::Tensor& parameter : parameters) {
    parameter.requires_grad_(false);
    parameter.mutable_grad() = torch::Tensor();
  }
}

GptNeoxModel TrainedNeox(const torch::Device& device = torch::kCPU) {
  GptNeoxModel model = GptNeoxModel::RandomInit(
      reference::TinyModelConfig("gpt_neox", kVocab, kLayers), 3, torch::kCPU);
  reference::Perturb(model.NamedParameters(), /*seed=*/4, /*scale=*/0.2);
  Train(model);
  if (device.is_cpu()) return model;
  // Same weights on another device: RandomInit there, then copy.
  GptNeoxModel moved = GptNeoxModel::RandomInit(model.config(), 3, device);
  torch::NoGradGuard no_grad;
  const auto source = model.NamedParameters();
  const auto target = moved.NamedParameters();
  for (size_t i = 0; i < source.size(); ++i) {
    target[i].second.copy_(source[i].second);
  }
  return moved;
}

torch::Tensor Identity(const torch::Tensor& x) { return x; }
torch::Tensor Zeros(const torch::Tensor& x) { return torch::zeros_like(x); }
torch::Tensor Half(const torch::Tensor& x) { return x * 0.5; }

// The activation as LanguageModel's replacement sees it ([batch, seq, d]),
// mapped like EvaluateWithSplice's reconstruct sees it ([n, d]).
ActivationReplacement AsReplacement(
    const std::function<torch::Tensor(const torch::Tensor&)>& reconstruct) {
  return [reconstruct](const torch::Tensor& activation) {
    return reconstruct(activation.reshape({-1, activation.size(-1)}))
        .reshape(activation.sizes());
  };
}

class LmEvaluationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = new GptNeoxModel(TrainedNeox()); }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }

  absl::StatusOr<LmEvaluation> Evaluate(
      const std::function<torch::Tensor(const torch::Tensor&)>& reconstruct,
      HookPoint hook = {1, HookSite::kResidPre},
      int64_t contexts_per_forward = kNumContexts) {
    return EvaluateWithSplice(*model_, contexts_, hook, reconstruct,
                              contexts_per_forward);
  }

  static GptNeoxModel* model_;
  const torch::Tensor contexts_ = Contexts();
};

GptNeoxModel* LmEvaluationTest::model_ = nullptr;

TEST_F(LmEvaluationTest, TheTrainedModelLearnedTheSequence) {
  // Guards the premise of the other tests.
  const double clean = model_->CrossEntropy(contexts_);
  const double ablated = model_->CrossEntropyWithReplacement(
      contexts_, {1, HookSite::kResidPre}, Zeros);
  EXPECT_LT(clean, 1.0);
  EXPECT_GT(ablated, clean + 1.0);
}

TEST_F(LmEvaluationTest, IdentityReconstructionIsTheCleanModel) {
  for (HookSite site : {HookSite::kResidPre, HookSite::kAttnOut,
                        HookSite::kMlpOut, HookSite::kResidPost}) {
    for (int layer = 0; layer < kLayers; ++layer) {
      absl::StatusOr<LmEvaluation> result = Evaluate(Identity, {layer, site});
      ASSERT_TRUE(result.ok()) << result.status();
      const std::string where = std::string(HookSiteName(site)) + " of layer " +
                                std::to_string(layer);
      EXPECT_NEAR(result->ce_spliced, result->ce_clean, 1e-12) << where;
      EXPECT_NEAR(result->kl_divergence, 0.0, 1e-12) << where;
      EXPECT_DOUBLE_EQ(result->loss_recovered, 1.0) << where;
      EXPECT_EQ(result->tokens, kNumContexts * (kContextLength - 1)) << where;
    }
  }
}

TEST_F(LmEvaluationTest, ZeroReconstructionIsTheZeroAblation) {
  absl::StatusOr<LmEvaluation> result = Evaluate(Zeros);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NEAR(result->ce_spliced, result->ce_zero_ablated, 1e-12);
  EXPECT_NEAR(result->loss_recovered, 0.0, 1e-12);
  EXPECT_GT(result->kl_divergence, 0.1);
}

TEST_F(LmEvaluationTest, PerturbationLandsBetweenAndMatchesCrossEntropy) {
  const HookPoint hook{1, HookSite::kResidPre};
  absl::StatusOr<LmEvaluation> result = Evaluate(Half, hook);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(result->ce_clean, result->ce_spliced);
  EXPECT_LT(result->ce_spliced, result->ce_zero_ablated);
  EXPECT_GT(result->loss_recovered, 0.0);
  EXPECT_LT(result->loss_recovered, 1.0);
  EXPECT_GT(result->kl_divergence, 0.0);
  EXPECT_NEAR(result->loss_recovered,
              (result->ce_zero_ablated - result->ce_spliced) /
                  (result->ce_zero_ablated - result->ce_clean),
              1e-12);

  // The same numbers from LanguageModel directly (float32 there, float64
  // here: agreement to float32 rounding).
  EXPECT_NEAR(result->ce_clean, model_->CrossEntropy(contexts_), 1e-5);
  EXPECT_NEAR(
      result->ce_spliced,
      model_->CrossEntropyWithReplacement(contexts_, hook, AsReplacement(Half)),
      1e-5);
  EXPECT_NEAR(result->ce_zero_ablated,
              model_->CrossEntropyWithReplacement(contexts_, hook, Zeros),
              1e-5);

  // KL from torch's kl_div over the same predicted positions.
  torch::NoGradGuard no_grad;
  const auto log_probs = [](const torch::Tensor& logits) {
    return torch::log_softmax(
        logits.narrow(1, 0, kContextLength - 1).to(torch::kFloat64), -1);
  };
  const torch::Tensor clean = log_probs(model_->Logits(contexts_));
  const torch::Tensor spliced = log_probs(
      model_->LogitsWithReplacement(contexts_, hook, AsReplacement(Half)));
  const double kl =
      torch::nn::functional::kl_div(spliced, clean,
                                    torch::nn::functional::KLDivFuncOptions()
                                        .reduction(torch::kSum)
                                        .log_target(true))
          .item<double>() /
      (kNumContexts * (kContextLength - 1));
  EXPECT_NEAR(result->kl_divergence, kl, 1e-9);
}

TEST_F(LmEvaluationTest, ChunkingDoesNotChangeTheResult) {
  absl::StatusOr<LmEvaluation> all =
      Evaluate(Half, {1, HookSite::kResidPre}, kNumContexts);
  ASSERT_TRUE(all.ok()) << all.status();
  for (int64_t per_forward : {1, 2, 3, 100}) {
    absl::StatusOr<LmEvaluation> chunked =
        Evaluate(Half, {1, HookSite::kResidPre}, per_forward);
    ASSERT_TRUE(chunked.ok()) << chunked.status();
    EXPECT_NEAR(chunked->ce_clean, all->ce_clean, 1e-6) << per_forward;
    EXPECT_NEAR(chunked->ce_spliced, all->ce_spliced, 1e-6) << per_forward;
    EXPECT_NEAR(chunked->ce_zero_ablated, all->ce_zero_ablated, 1e-6)
        << per_forward;
    EXPECT_NEAR(chunked->kl_divergence, all->kl_divergence, 1e-6)
        << per_forward;
    EXPECT_NEAR(chunked->loss_recovered, all->loss_recovered, 1e-6)
        << per_forward;
    EXPECT_EQ(chunked->tokens, all->tokens) << per_forward;
  }
}

TEST_F(LmEvaluationTest, ReconstructSeesFlatActivationsOfEachChunk) {
  std::vector<std::vector<int64_t>> shapes;
  absl::StatusOr<LmEvaluation> result = Evaluate(
      [&](const torch::Tensor& x) {
        shapes.push_back(x.sizes().vec());
        EXPECT_EQ(x.scalar_type(), torch::kFloat32);
        return x;
      },
      {0, HookSite::kMlpOut}, 2);
  ASSERT_TRUE(result.ok()) << result.status();
  // Chunks of 2, 2 and 1 contexts; once per chunk (the spliced pass).
  const std::vector<std::vector<int64_t>> expected = {
      {2 * kContextLength, 16}, {2 * kContextLength, 16}, {kContextLength, 16}};
  EXPECT_EQ(shapes, expected);
}

TEST_F(LmEvaluationTest, BadInputIsInvalidArgument) {
  const auto expect_invalid = [&](const absl::StatusOr<LmEvaluation>& result,
                                  const std::string& what) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr(what));
  };
  const HookPoint hook{1, HookSite::kResidPre};
  expect_invalid(
      EvaluateWithSplice(*model_, contexts_.reshape({-1}), hook, Identity, 1),
      "2-D");
  expect_invalid(
      EvaluateWithSplice(*model_, contexts_.unsqueeze(0), hook, Identity, 1),
      "2-D");
  expect_invalid(
      EvaluateWithSplice(*model_, torch::Tensor(), hook, Identity, 1),
      "undefined");
  expect_invalid(EvaluateWithSplice(*model_, contexts_.to(torch::kInt32), hook,
                                    Identity, 1),
                 "int64");
  expect_invalid(
      EvaluateWithSplice(*model_, contexts_.narrow(1, 0, 1), hook, Identity, 1),
      "at least 2");
  expect_invalid(
      EvaluateWithSplice(*model_, contexts_.narrow(0, 0, 0), hook, Identity, 1),
      "no contexts");
  expect_invalid(EvaluateWithSplice(*model_, contexts_, hook, Identity, 0),
                 "contexts_per_forward");
  expect_invalid(
      EvaluateWithSplice(*model_, contexts_, {kLayers, HookSite::kResidPre},
                         Identity, 1),
      "hook layer 2 is out of range");
  expect_invalid(EvaluateWithSplice(*model_, contexts_,
                                    {-1, HookSite::kResidPre}, Identity, 1),
                 "hook layer -1");
  expect_invalid(EvaluateWithSplice(*model_, contexts_, hook, nullptr, 1),
                 "reconstruct");

  torch::Tensor beyond_vocab = contexts_.clone();
  beyond_vocab[3][5] = kVocab;
  expect_invalid(
      EvaluateWithSplice(*model_, beyond_vocab, hook, Identity, 1),
      "token id 20 at context 3, position 5 is outside the vocabulary [0, 20)");
  torch::Tensor negative = contexts_.clone();
  negative[0][1] = -1;
  expect_invalid(EvaluateWithSplice(*model_, negative, hook, Identity, 1),
                 "token id -1 at context 0, position 1");
}

TEST_F(LmEvaluationTest, BadReconstructionIsAnErrorNotAnException) {
  const HookPoint hook{1, HookSite::kMlpOut};
  absl::StatusOr<LmEvaluation> result =
      Evaluate([](const torch::Tensor& x) { return x.narrow(1, 0, 8); }, hook);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("mlp_out of layer 1"));
  EXPECT_THAT(result.status().message(), HasSubstr("[40, 8]"));

  result = Evaluate(
      [](const torch::Tensor& x) { return x.to(torch::kFloat64); }, hook);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("Double"));

  result = Evaluate(
      [](const torch::Tensor&) -> torch::Tensor {
        throw std::runtime_error("SAE exploded");
      },
      hook);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(result.status().message(), HasSubstr("SAE exploded"));
}

TEST(LmEvaluationGpt2Test, SplicesAndChecksLearnedPositions) {
  Gpt2Model model = Gpt2Model::RandomInit(
      reference::TinyModelConfig("gpt2", kVocab, kLayers), 3, torch::kCPU);
  reference::Perturb(model.NamedParameters(), /*seed=*/4, /*scale=*/0.2);
  Train(model);
  const torch::Tensor contexts = Contexts();
  absl::StatusOr<LmEvaluation> identity =
      EvaluateWithSplice(model, contexts, {0, HookSite::kAttnOut}, Identity, 2);
  ASSERT_TRUE(identity.ok()) << identity.status();
  EXPECT_NEAR(identity->ce_spliced, identity->ce_clean, 1e-12);
  EXPECT_NEAR(identity->ce_clean, model.CrossEntropy(contexts), 1e-5);
  EXPECT_DOUBLE_EQ(identity->loss_recovered, 1.0);

  // 17 positions for a model with 16 learned ones.
  absl::StatusOr<LmEvaluation> too_long = EvaluateWithSplice(
      model, Contexts(2, 17), {0, HookSite::kAttnOut}, Identity, 2);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_long.status().message(),
              HasSubstr("max_position_embeddings (16)"));
}

// With no loss gap the ratio is undefined; the header promises 0.
TEST(LmEvaluationGapTest, NoLossGapGivesZeroLossRecovered) {
  // A model whose output ignores the hooked activation: zero every weight,
  // so every logit is 0 whatever the residual stream holds.
  GptNeoxModel model = GptNeoxModel::RandomInit(
      reference::TinyModelConfig("gpt_neox", kVocab, kLayers), 3, torch::kCPU);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : model.NamedParameters()) tensor.zero_();
  }
  absl::StatusOr<LmEvaluation> result =
      EvaluateWithSplice(model, Contexts(), {1, HookSite::kResidPre}, Half, 5);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NEAR(result->ce_clean, std::log(kVocab), 1e-9);
  EXPECT_NEAR(result->ce_zero_ablated, result->ce_clean, 1e-12);
  EXPECT_EQ(result->loss_recovered, 0.0);
}

// Contexts on the CPU (as GatherContexts returns them) with a model on the
// GPU: the chunks go to the model's device.
TEST(LmEvaluationCudaTest, MovesContextsToTheModelsDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const GptNeoxModel cpu = TrainedNeox(torch::kCPU);
  const GptNeoxModel gpu = TrainedNeox(torch::kCUDA);
  const torch::Tensor contexts = Contexts();
  absl::StatusOr<LmEvaluation> on_cpu =
      EvaluateWithSplice(cpu, contexts, {1, HookSite::kResidPre}, Half, 2);
  absl::StatusOr<LmEvaluation> on_gpu = EvaluateWithSplice(
      gpu, contexts, {1, HookSite::kResidPre},
      [](const torch::Tensor& x) {
        EXPECT_TRUE(x.is_cuda());
        return x * 0.5;
      },
      2);
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  ASSERT_TRUE(on_gpu.ok()) << on_gpu.status();
  // TF32 and other kernels: agreement to float32-ish precision only.
  EXPECT_NEAR(on_gpu->ce_clean, on_cpu->ce_clean, 1e-3);
  EXPECT_NEAR(on_gpu->ce_spliced, on_cpu->ce_spliced, 1e-3);
  EXPECT_NEAR(on_gpu->ce_zero_ablated, on_cpu->ce_zero_ablated, 1e-3);
  EXPECT_NEAR(on_gpu->kl_divergence, on_cpu->kl_divergence, 1e-3);
}

}  // namespace
}  // namespace saetrack::engine
