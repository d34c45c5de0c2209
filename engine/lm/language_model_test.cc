#include "engine/lm/language_model.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/lm/gpt2.h"
#include "engine/lm/gpt_neox.h"
#include "engine/internal/reference_math.h"
#include "engine/lm/lm_trainer.h"

namespace saetrack::engine {
namespace {

using ::testing::HasSubstr;

constexpr int kVocab = 20;
constexpr int kLayers = 2;

std::string MakeTempDir(const std::string& name) {
  std::string pattern = ::testing::TempDir() + "/" + name + "_XXXXXX";
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return pattern;
}

template <typename Model>
void Perturb(Model& model) {
  torch::NoGradGuard no_grad;
  at::Generator generator = at::detail::createCPUGenerator(4);
  for (auto& [name, tensor] : model.NamedParameters()) {
    tensor.add_(torch::randn(tensor.sizes(), generator, torch::kFloat32) * 0.2);
  }
}

// Saves a perturbed random model of `architecture` to a temporary directory
// and loads it back through LoadLanguageModel.
std::unique_ptr<LanguageModel> SavedAndLoaded(const std::string& architecture) {
  const std::string dir = MakeTempDir(architecture);
  const format::ModelConfig config =
      reference::TinyModelConfig(architecture, kVocab, kLayers);
  absl::Status saved;
  if (architecture == "gpt2") {
    Gpt2Model model = Gpt2Model::RandomInit(config, 3, torch::kCPU);
    Perturb(model);
    saved = model.SaveHuggingFace(dir, Gpt2ConfigJson(config));
  } else {
    GptNeoxModel model = GptNeoxModel::RandomInit(config, 3, torch::kCPU);
    Perturb(model);
    saved = model.SaveHuggingFace(dir, GptNeoxConfigJson(config));
  }
  EXPECT_TRUE(saved.ok()) << saved;
  absl::StatusOr<std::unique_ptr<LanguageModel>> model =
      LoadLanguageModel(dir, torch::kCPU);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

using reference::Tokens;

// Every behaviour of the interface, for each architecture.
class LanguageModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = SavedAndLoaded(GetParam());
    ASSERT_NE(model_, nullptr);
  }
  std::unique_ptr<LanguageModel> model_;
  const torch::Tensor tokens_a_ = Tokens({3, 17, 0, 5, 5, 12, 9});
  const torch::Tensor tokens_b_ = Tokens({8, 1, 1, 19, 4, 2, 6});
};

TEST_P(LanguageModelTest, DispatchesOnArchitecture) {
  EXPECT_EQ(model_->config().architecture, GetParam());
  EXPECT_EQ(model_->d_model(), 16);
  EXPECT_EQ(model_->num_layers(), kLayers);
}

TEST_P(LanguageModelTest, IdentityReplacementIsTheCleanForward) {
  torch::NoGradGuard no_grad;
  const torch::Tensor clean = model_->Logits(tokens_a_);
  for (int layer = 0; layer < kLayers; ++layer) {
    for (HookSite site : {HookSite::kResidPre, HookSite::kAttnOut,
                          HookSite::kMlpOut, HookSite::kResidPost}) {
      int calls = 0;
      const torch::Tensor logits = model_->LogitsWithReplacement(
          tokens_a_, {layer, site}, [&](const torch::Tensor& activation) {
            ++calls;
            return activation;
          });
      EXPECT_EQ(calls, 1) << HookSiteName(site) << " of layer " << layer;
      EXPECT_TRUE(torch::equal(logits, clean))
          << HookSiteName(site) << " of layer " << layer;
    }
  }
}

// The replacement callback sees exactly what RunToHooks reads there.
TEST_P(LanguageModelTest, ReplacementReceivesTheHookedActivation) {
  torch::NoGradGuard no_grad;
  const HookPoint hook{1, HookSite::kAttnOut};
  const torch::Tensor expected = model_->RunToHooks(tokens_a_, {hook})[0];
  torch::Tensor seen;
  model_->LogitsWithReplacement(tokens_a_, hook,
                                [&](const torch::Tensor& activation) {
                                  seen = activation;
                                  return activation;
                                });
  EXPECT_TRUE(torch::equal(seen, expected));
}

// A hook past the last layer would never see the replacement: refused.
TEST_P(LanguageModelTest, ReplacementOutOfRangeIsRefused) {
  torch::NoGradGuard no_grad;
  const auto identity = [](const torch::Tensor& a) { return a; };
  EXPECT_THROW(
      model_->LogitsWithReplacement(
          tokens_a_, HookPoint{model_->num_layers(), HookSite::kResidPre},
          identity),
      c10::Error);
  EXPECT_THROW(model_->LogitsWithReplacement(
                   tokens_a_, HookPoint{-1, HookSite::kResidPre}, identity),
               c10::Error);
}

// Splicing in the whole residual stream of another input continues that
// input's forward pass: at the start (resid_pre of layer 0) and at the end
// (resid_post of the last layer) the logits become the other input's.
TEST_P(LanguageModelTest, SplicedResidualContinuesTheForward) {
  torch::NoGradGuard no_grad;
  const torch::Tensor logits_b = model_->Logits(tokens_b_);
  for (const HookPoint hook :
       {HookPoint{0, HookSite::kResidPre}, HookPoint{1, HookSite::kResidPre},
        HookPoint{kLayers - 1, HookSite::kResidPost}}) {
    const torch::Tensor resid_b = model_->RunToHooks(tokens_b_, {hook})[0];
    const torch::Tensor spliced = model_->LogitsWithReplacement(
        tokens_a_, hook, [&](const torch::Tensor&) { return resid_b; });
    EXPECT_TRUE(torch::allclose(spliced, logits_b, 1e-5, 1e-5))
        << HookSiteName(hook.site) << " of layer " << hook.layer;
  }
}

// Zero-ablating layer 0's MLP output changes the loss, an identity
// replacement does not, and the modified forward pass stays causal.
TEST_P(LanguageModelTest, AblationChangesLossAndKeepsCausality) {
  const HookPoint hook{0, HookSite::kMlpOut};
  const ActivationReplacement ablate = [](const torch::Tensor& activation) {
    return torch::zeros_like(activation);
  };
  const double clean = model_->CrossEntropy(tokens_a_);
  const double ablated =
      model_->CrossEntropyWithReplacement(tokens_a_, hook, ablate);
  EXPECT_TRUE(std::isfinite(ablated));
  EXPECT_GT(std::abs(ablated - clean), 1e-4);
  EXPECT_DOUBLE_EQ(
      model_->CrossEntropyWithReplacement(
          tokens_a_, hook, [](const torch::Tensor& x) { return x; }),
      clean);
  // Position t of the output still depends only on tokens <= t.
  torch::NoGradGuard no_grad;
  torch::Tensor changed = tokens_a_.clone();
  changed[0][5] = 1;
  const torch::Tensor a =
      model_->LogitsWithReplacement(tokens_a_, hook, ablate);
  const torch::Tensor b = model_->LogitsWithReplacement(changed, hook, ablate);
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 5), b.narrow(1, 0, 5), 0, 1e-6));
}

TEST_P(LanguageModelTest, ReplacementOfWrongShapeThrows) {
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model_->LogitsWithReplacement(
                   tokens_a_, {0, HookSite::kResidPost},
                   [](const torch::Tensor& x) { return x.narrow(-1, 0, 4); }),
               c10::Error);
}

TEST_P(LanguageModelTest, HiddenStatesAreResidPreThenFinalNorm) {
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> states = model_->HiddenStates(tokens_a_);
  ASSERT_EQ(states.size(), kLayers + 1);
  for (int layer = 0; layer < kLayers; ++layer) {
    EXPECT_TRUE(torch::equal(
        states[layer],
        model_->RunToHooks(tokens_a_, {{layer, HookSite::kResidPre}})[0]));
  }
  // The last state is the final layer norm of resid_post, not resid_post.
  const torch::Tensor resid_post =
      model_->RunToHooks(tokens_a_, {{kLayers - 1, HookSite::kResidPost}})[0];
  EXPECT_FALSE(torch::allclose(states.back(), resid_post));
  EXPECT_EQ(states.back().sizes(), resid_post.sizes());
}

TEST_P(LanguageModelTest, CrossEntropyIsMeanNextTokenLoss) {
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens =
      torch::cat({tokens_a_, tokens_b_});  // batch of 2
  const torch::Tensor log_probs =
      torch::log_softmax(model_->Logits(tokens).to(torch::kFloat64), -1);
  double total = 0;
  int count = 0;
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t + 1 < tokens.size(1); ++t) {
      total -= log_probs[b][t][tokens[b][t + 1].item<int64_t>()].item<double>();
      ++count;
    }
  }
  EXPECT_NEAR(model_->CrossEntropy(tokens), total / count, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Architectures, LanguageModelTest,
                         ::testing::Values("gpt_neox", "gpt2"));

TEST(LoadLanguageModelTest, Errors) {
  absl::StatusOr<std::unique_ptr<LanguageModel>> model =
      LoadLanguageModel("/nonexistent/model", torch::kCPU);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);

  const std::string dir = MakeTempDir("llama");
  std::ofstream(dir + "/config.json") << R"({"model_type": "llama"})";
  std::ofstream(dir + "/model.safetensors");
  model = LoadLanguageModel(dir, torch::kCPU);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("field \"model_type\""));
}

}  // namespace
}  // namespace saetrack::engine
