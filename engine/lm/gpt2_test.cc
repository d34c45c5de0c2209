#include "engine/lm/gpt2.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/internal/reference_math.h"
#include "format/safetensors.h"

namespace saetrack::engine {
namespace {

using reference::ExpectNear;
using reference::Rows;
using reference::Tokens;
using reference::Vector;

using ::testing::HasSubstr;

constexpr int kVocab = 20;

format::ModelConfig TinyConfig(bool tied = true) {
  format::ModelConfig config;
  config.architecture = "gpt2";
  config.vocab_size = kVocab;
  config.hidden_size = 16;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.intermediate_size = 24;  // not 4 * 16: n_inner is honoured
  config.max_position_embeddings = 12;
  config.layer_norm_eps = 1e-5;
  config.hidden_act = "gelu_new";
  config.tie_word_embeddings = tied;
  config.rotary_pct = 0;
  config.use_parallel_residual = false;
  return config;
}

// A random model whose biases and layer norms are not trivial.
Gpt2Model PerturbedModel(bool tied = true) {
  Gpt2Model model = Gpt2Model::RandomInit(TinyConfig(tied), 3, torch::kCPU);
  reference::Perturb(model.NamedParameters(), /*seed=*/4, /*scale=*/0.2);
  return model;
}

// A plain double-precision reimplementation of one GPT-2 block, written from
// the Hugging Face reference (modeling_gpt2.py) independently of the
// LibTorch code.
class HandBlock {
 public:
  HandBlock(const Gpt2Model& model, int layer) : config_(model.config()) {
    const std::string prefix = "transformer.h." + std::to_string(layer) + ".";
    weights_ = reference::WeightsWithPrefix(model.NamedParameters(), prefix);
  }

  struct Outputs {
    std::vector<Vector> attn_out, mlp_out, resid_post;
  };

  Outputs Run(const std::vector<Vector>& x) const {
    const int seq = static_cast<int>(x.size());
    const int hidden = config_.hidden_size;
    const int heads = config_.num_attention_heads;
    const int head_dim = hidden / heads;
    std::vector<Vector> q(seq), k(seq), v(seq);
    for (int t = 0; t < seq; ++t) {
      const Vector qkv = Conv1D("attn.c_attn", Norm(x[t], "ln_1"), 3 * hidden);
      // split(n_embd, dim=2): q, k, v are consecutive thirds.
      q[t] = Vector(qkv.begin(), qkv.begin() + hidden);
      k[t] = Vector(qkv.begin() + hidden, qkv.begin() + 2 * hidden);
      v[t] = Vector(qkv.begin() + 2 * hidden, qkv.end());
    }
    Outputs out;
    for (int t = 0; t < seq; ++t) {
      Vector context(hidden, 0.0);
      for (int h = 0; h < heads; ++h) {
        const int base = h * head_dim;
        std::vector<double> scores;
        double max_score = -1e300;
        for (int u = 0; u <= t; ++u) {  // causal
          double s = 0;
          for (int d = 0; d < head_dim; ++d) {
            s += q[t][base + d] * k[u][base + d];
          }
          scores.push_back(s / std::sqrt(double(head_dim)));
          max_score = std::max(max_score, scores.back());
        }
        double total = 0;
        for (double& s : scores) total += (s = std::exp(s - max_score));
        for (int u = 0; u <= t; ++u) {
          for (int d = 0; d < head_dim; ++d) {
            context[base + d] += scores[u] / total * v[u][base + d];
          }
        }
      }
      const Vector attn = Conv1D("attn.c_proj", context, hidden);
      Vector mid = x[t];
      for (int j = 0; j < hidden; ++j) mid[j] += attn[j];
      Vector inner =
          Conv1D("mlp.c_fc", Norm(mid, "ln_2"), config_.intermediate_size);
      for (double& a : inner) {
        // gelu_new (NewGELUActivation).
        a = 0.5 * a *
            (1 + std::tanh(std::sqrt(2 / M_PI) * (a + 0.044715 * a * a * a)));
      }
      const Vector mlp = Conv1D("mlp.c_proj", inner, hidden);
      Vector post(hidden);
      for (int j = 0; j < hidden; ++j) post[j] = mid[j] + mlp[j];
      out.attn_out.push_back(attn);
      out.mlp_out.push_back(mlp);
      out.resid_post.push_back(post);
    }
    return out;
  }

 private:
  Vector Norm(const Vector& x, const std::string& name) const {
    return reference::LayerNorm(x, weights_.at(name + ".weight"),
                                weights_.at(name + ".bias"),
                                config_.layer_norm_eps);
  }

  // HF Conv1D: weight [in, out], y = x W + b.
  Vector Conv1D(const std::string& name, const Vector& x, int out_size) const {
    const Vector& w = weights_.at(name + ".weight");
    const Vector& b = weights_.at(name + ".bias");
    Vector out(b.begin(), b.end());
    for (size_t j = 0; j < x.size(); ++j) {
      for (int i = 0; i < out_size; ++i) out[i] += x[j] * w[j * out_size + i];
    }
    return out;
  }

  format::ModelConfig config_;
  std::map<std::string, Vector> weights_;
};

// At layer 1, so the block's input is itself the output of a block.
TEST(Gpt2Test, BlockMatchesHandComputation) {
  const Gpt2Model model = PerturbedModel();
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> hooks = model.RunToHooks(
      Tokens({3, 17, 0, 5, 5, 12, 9}), {{1, HookSite::kResidPre},
                                        {1, HookSite::kAttnOut},
                                        {1, HookSite::kMlpOut},
                                        {1, HookSite::kResidPost}});
  const HandBlock::Outputs expected = HandBlock(model, 1).Run(Rows(hooks[0]));
  ExpectNear(expected.attn_out, Rows(hooks[1]), "attn_out");
  ExpectNear(expected.mlp_out, Rows(hooks[2]), "mlp_out");
  ExpectNear(expected.resid_post, Rows(hooks[3]), "resid_post");
}

// resid_pre of layer 0 is the token embedding plus the learned position
// embedding.
TEST(Gpt2Test, EmbeddingAddsLearnedPositions) {
  const Gpt2Model model = PerturbedModel();
  std::map<std::string, torch::Tensor> params;
  for (const auto& [name, tensor] : model.NamedParameters()) {
    params[name] = tensor;
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor resid_pre =
      model.RunToHooks(Tokens({4, 4, 7}), {{0, HookSite::kResidPre}})[0];
  const torch::Tensor wte = params.at("transformer.wte.weight");
  const torch::Tensor wpe = params.at("transformer.wpe.weight");
  EXPECT_TRUE(torch::allclose(resid_pre[0][1], wte[4] + wpe[1]));
  EXPECT_TRUE(torch::allclose(resid_pre[0][2], wte[7] + wpe[2]));
  EXPECT_FALSE(torch::allclose(resid_pre[0][0], resid_pre[0][1]));
}

TEST(Gpt2Test, Causal) {
  const Gpt2Model model = PerturbedModel();
  torch::NoGradGuard no_grad;
  const torch::Tensor a = model.Logits(Tokens({1, 2, 3, 4, 5, 6}));
  const torch::Tensor b = model.Logits(Tokens({1, 2, 3, 4, 19, 6}));
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 4), b.narrow(1, 0, 4), 0, 1e-6));
  EXPECT_FALSE(torch::allclose(a.narrow(1, 4, 1), b.narrow(1, 4, 1)));
}

TEST(Gpt2Test, ResidPostIsNextResidPre) {
  const Gpt2Model model = PerturbedModel();
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> hooks =
      model.RunToHooks(Tokens({4, 8, 15, 16}),
                       {{0, HookSite::kResidPost}, {1, HookSite::kResidPre}});
  EXPECT_TRUE(torch::equal(hooks[0], hooks[1]));
}

TEST(Gpt2Test, LogitsShapeAndTiedUnembedding) {
  const Gpt2Model model = PerturbedModel();
  const torch::Tensor tokens =
      torch::randint(kVocab, {3, 9}, torch::dtype(torch::kInt64));
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = model.Logits(tokens);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 9, kVocab}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  // Tied: the unembedding is wte, applied to the final hidden state.
  const torch::Tensor wte = model.NamedParameters()[0].second;
  EXPECT_TRUE(torch::allclose(
      logits, torch::matmul(model.HiddenStates(tokens).back(), wte.t()), 1e-5,
      1e-5));
}

TEST(Gpt2Test, RandomInitCrossEntropyNearLogVocab) {
  const Gpt2Model model = Gpt2Model::RandomInit(TinyConfig(), 7, torch::kCPU);
  const torch::Tensor tokens =
      torch::randint(kVocab, {4, 12}, torch::dtype(torch::kInt64));
  const double loss = model.CrossEntropy(tokens);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(loss, std::log(double(kVocab)), 0.05);
}

TEST(Gpt2Test, SequenceLongerThanPositionsThrows) {
  const Gpt2Model model = PerturbedModel();
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model.Logits(torch::zeros({1, 13}, torch::kInt64)), c10::Error);
}

class Gpt2LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/gpt2_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }

  // Writes `model`'s tensors under their names with `prefix` stripped or
  // added, skipping `skip`, plus the config.
  void Write(const Gpt2Model& model, bool with_transformer_prefix,
             const std::string& skip = "") {
    format::SafetensorsWriter writer;
    for (const auto& [hf_name, tensor] : model.NamedParameters()) {
      if (hf_name == skip) continue;
      std::string name = hf_name;
      if (!with_transformer_prefix && name.rfind("transformer.", 0) == 0) {
        name = name.substr(std::string("transformer.").size());
      }
      torch::Tensor t = tensor.detach().contiguous();
      ASSERT_TRUE(
          writer.AddF32(name, t.sizes().vec(), t.data_ptr<float>()).ok());
    }
    // Original hub checkpoints carry the causal-mask buffer; it is ignored.
    torch::Tensor mask = torch::ones({1, 1, 12, 12});
    ASSERT_TRUE(writer
                    .AddF32(with_transformer_prefix
                                ? "transformer.h.0.attn.bias"
                                : "h.0.attn.bias",
                            {1, 1, 12, 12}, mask.data_ptr<float>())
                    .ok());
    std::ofstream(dir_ + "/model.safetensors", std::ios::binary)
        << writer.Serialize();
    std::ofstream(dir_ + "/config.json") << Gpt2ConfigJson(model.config());
  }

  void ExpectSameLogits(const Gpt2Model& a, const Gpt2Model& b) {
    torch::NoGradGuard no_grad;
    const torch::Tensor tokens = Tokens({0, 19, 7, 7, 3});
    EXPECT_TRUE(torch::equal(a.Logits(tokens), b.Logits(tokens)));
  }

  std::string dir_;
};

TEST_F(Gpt2LoadTest, SaveLoadRoundTripTied) {
  const Gpt2Model model = PerturbedModel();
  ASSERT_TRUE(model.SaveHuggingFace(dir_, Gpt2ConfigJson(model.config())).ok());
  absl::StatusOr<Gpt2Model> loaded = Gpt2Model::Load(dir_, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->config().architecture, "gpt2");
  EXPECT_EQ(loaded->config().intermediate_size, 24);
  ExpectSameLogits(model, *loaded);
}

TEST_F(Gpt2LoadTest, LoadsWithoutTransformerPrefix) {
  const Gpt2Model model = PerturbedModel();
  Write(model, /*with_transformer_prefix=*/false);
  absl::StatusOr<Gpt2Model> loaded = Gpt2Model::Load(dir_, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameLogits(model, *loaded);
}

TEST_F(Gpt2LoadTest, UntiedLmHead) {
  const Gpt2Model model = PerturbedModel(/*tied=*/false);
  Write(model, /*with_transformer_prefix=*/true);
  absl::StatusOr<Gpt2Model> loaded = Gpt2Model::Load(dir_, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameLogits(model, *loaded);
  EXPECT_EQ(loaded->NamedParameters().back().first, "lm_head.weight");
}

TEST_F(Gpt2LoadTest, MissingUntiedLmHeadIsDataLoss) {
  const Gpt2Model model = PerturbedModel(/*tied=*/false);
  Write(model, /*with_transformer_prefix=*/true, "lm_head.weight");
  absl::StatusOr<Gpt2Model> loaded = Gpt2Model::Load(dir_, torch::kCPU);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("lm_head.weight"));
}

// A Linear-layout ([out, in]) c_attn weight is refused: Conv1D is [in, out].
TEST_F(Gpt2LoadTest, TransposedConv1DWeightIsDataLoss) {
  Gpt2Model model = PerturbedModel();
  for (auto& [name, tensor] : model.NamedParameters()) {
    if (name == "transformer.h.1.attn.c_attn.weight") {
      tensor.set_data(tensor.detach().t().contiguous());
    }
  }
  Write(model, /*with_transformer_prefix=*/true);
  absl::StatusOr<Gpt2Model> loaded = Gpt2Model::Load(dir_, torch::kCPU);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("tensor \"transformer.h.1.attn.c_attn.weight\""));
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("has shape [48, 16], expected [16, 48]"));
}

TEST_F(Gpt2LoadTest, NeoxConfigIsRefused) {
  const Gpt2Model model = PerturbedModel();
  Write(model, true);
  std::ofstream(dir_ + "/config.json")
      << R"({"model_type": "gpt_neox", "vocab_size": 20, "hidden_size": 16,
             "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 24})";
  EXPECT_EQ(Gpt2Model::Load(dir_, torch::kCPU).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saetrack::engine
