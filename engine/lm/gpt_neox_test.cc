#include "engine/lm/gpt_neox.h"

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
#include "engine/lm/lm_trainer.h"
#include "format/safetensors.h"

namespace saetrack::engine {
namespace {

using reference::ExpectNear;
using reference::Rows;
using reference::Tokens;
using reference::Vector;

using ::testing::HasSubstr;

format::ModelConfig TinyConfig(bool parallel_residual) {
  format::ModelConfig config;
  config.architecture = "gpt_neox";
  config.vocab_size = 20;
  config.hidden_size = 16;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.intermediate_size = 32;
  config.max_position_embeddings = 16;
  config.rotary_pct = 0.5;  // 4 of 8 head dims rotate: two frequencies
  config.rotary_emb_base = 10000;
  config.layer_norm_eps = 1e-5;
  config.use_parallel_residual = parallel_residual;
  return config;
}

// A random model whose biases and layer norms are not trivial.
GptNeoxModel PerturbedModel(bool parallel_residual) {
  GptNeoxModel model =
      GptNeoxModel::RandomInit(TinyConfig(parallel_residual), 3, torch::kCPU);
  reference::Perturb(model.NamedParameters(), /*seed=*/4, /*scale=*/0.2);
  return model;
}

// A plain double-precision reimplementation of one GPT-NeoX block, written
// from the Hugging Face reference independently of the LibTorch code.
class HandBlock {
 public:
  HandBlock(const GptNeoxModel& model, int layer) : config_(model.config()) {
    const std::string prefix = "gpt_neox.layers." + std::to_string(layer) + ".";
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
    const int rotary = static_cast<int>(head_dim * config_.rotary_pct);
    // q, k, v per position and head.
    std::vector<std::vector<Vector>> q(seq), k(seq), v(seq);
    for (int t = 0; t < seq; ++t) {
      const Vector qkv = Affine("attention.query_key_value",
                                Norm(x[t], "input_layernorm"), 3 * hidden);
      for (int h = 0; h < heads; ++h) {
        // HF layout: per head, [q | k | v] of head_dim each.
        const int base = h * 3 * head_dim;
        q[t].emplace_back(qkv.begin() + base, qkv.begin() + base + head_dim);
        k[t].emplace_back(qkv.begin() + base + head_dim,
                          qkv.begin() + base + 2 * head_dim);
        v[t].emplace_back(qkv.begin() + base + 2 * head_dim,
                          qkv.begin() + base + 3 * head_dim);
        Rotate(q[t][h], t, rotary);
        Rotate(k[t][h], t, rotary);
      }
    }
    Outputs out;
    for (int t = 0; t < seq; ++t) {
      Vector context(hidden, 0.0);
      for (int h = 0; h < heads; ++h) {
        std::vector<double> scores;
        double max_score = -1e300;
        for (int u = 0; u <= t; ++u) {  // causal
          double s = 0;
          for (int d = 0; d < head_dim; ++d) s += q[t][h][d] * k[u][h][d];
          scores.push_back(s / std::sqrt(double(head_dim)));
          max_score = std::max(max_score, scores.back());
        }
        double total = 0;
        for (double& s : scores) total += (s = std::exp(s - max_score));
        for (int u = 0; u <= t; ++u) {
          for (int d = 0; d < head_dim; ++d) {
            context[h * head_dim + d] += scores[u] / total * v[u][h][d];
          }
        }
      }
      const Vector attn = Affine("attention.dense", context, hidden);
      Vector mlp_in = x[t];
      if (!config_.use_parallel_residual) {
        for (int j = 0; j < hidden; ++j) mlp_in[j] += attn[j];
      }
      Vector inner =
          Affine("mlp.dense_h_to_4h", Norm(mlp_in, "post_attention_layernorm"),
                 config_.intermediate_size);
      for (double& a : inner) a = 0.5 * a * (1 + std::erf(a / std::sqrt(2.0)));
      const Vector mlp = Affine("mlp.dense_4h_to_h", inner, hidden);
      Vector post(hidden);
      for (int j = 0; j < hidden; ++j) post[j] = x[t][j] + attn[j] + mlp[j];
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

  Vector Affine(const std::string& name, const Vector& x, int out_size) const {
    const Vector& w = weights_.at(name + ".weight");  // [out, in]
    const Vector& b = weights_.at(name + ".bias");
    Vector out(out_size);
    for (int i = 0; i < out_size; ++i) {
      double s = b[i];
      for (size_t j = 0; j < x.size(); ++j) s += w[i * x.size() + j] * x[j];
      out[i] = s;
    }
    return out;
  }

  // Rotary embedding of the first `rotary` dims at position t: pairs (i,
  // i + rotary/2) rotate by t * base^(-2i/rotary).
  void Rotate(Vector& x, int t, int rotary) const {
    const int half = rotary / 2;
    for (int i = 0; i < half; ++i) {
      const double angle =
          t * std::pow(double(config_.rotary_emb_base), -2.0 * i / rotary);
      const double x1 = x[i], x2 = x[i + half];
      x[i] = x1 * std::cos(angle) - x2 * std::sin(angle);
      x[i + half] = x2 * std::cos(angle) + x1 * std::sin(angle);
    }
  }

  format::ModelConfig config_;
  std::map<std::string, Vector> weights_;
};

class GptNeoxHandComputationTest : public ::testing::TestWithParam<bool> {};

// Both residual forms, against the hand computation, at layer 1 (so the
// input is itself the output of a block).
TEST_P(GptNeoxHandComputationTest, BlockMatchesReference) {
  const GptNeoxModel model = PerturbedModel(/*parallel_residual=*/GetParam());
  const torch::Tensor tokens = Tokens({3, 17, 0, 5, 5, 12, 9});
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> hooks =
      model.RunToHooks(tokens, {{1, HookSite::kResidPre},
                                {1, HookSite::kAttnOut},
                                {1, HookSite::kMlpOut},
                                {1, HookSite::kResidPost}});
  const HandBlock::Outputs expected = HandBlock(model, 1).Run(Rows(hooks[0]));
  ExpectNear(expected.attn_out, Rows(hooks[1]), "attn_out");
  ExpectNear(expected.mlp_out, Rows(hooks[2]), "mlp_out");
  ExpectNear(expected.resid_post, Rows(hooks[3]), "resid_post");
}

INSTANTIATE_TEST_SUITE_P(ResidualForms, GptNeoxHandComputationTest,
                         ::testing::Values(true, false), [](const auto& info) {
                           return info.param ? "Parallel" : "Sequential";
                         });

TEST(GptNeoxTest, ParallelAndSequentialDiffer) {
  const torch::Tensor tokens = Tokens({1, 2, 3, 4});
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(torch::allclose(PerturbedModel(true).Logits(tokens),
                               PerturbedModel(false).Logits(tokens)));
}

TEST(GptNeoxTest, LogitsShape) {
  const GptNeoxModel model = PerturbedModel(true);
  const torch::Tensor tokens =
      torch::randint(20, {3, 9}, torch::dtype(torch::kInt64));
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = model.Logits(tokens);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 9, 20}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

TEST(GptNeoxTest, Causal) {
  const GptNeoxModel model = PerturbedModel(true);
  torch::NoGradGuard no_grad;
  const torch::Tensor a = model.Logits(Tokens({1, 2, 3, 4, 5, 6}));
  const torch::Tensor b = model.Logits(Tokens({1, 2, 3, 4, 19, 6}));
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 4), b.narrow(1, 0, 4), 0, 1e-6));
  EXPECT_FALSE(torch::allclose(a.narrow(1, 4, 1), b.narrow(1, 4, 1)));
  const std::vector<torch::Tensor> ha =
      model.RunToHooks(Tokens({1, 2, 3, 4, 5, 6}), {{1, HookSite::kResidPost}});
  const std::vector<torch::Tensor> hb = model.RunToHooks(
      Tokens({1, 2, 3, 4, 19, 6}), {{1, HookSite::kResidPost}});
  EXPECT_TRUE(
      torch::allclose(ha[0].narrow(1, 0, 4), hb[0].narrow(1, 0, 4), 0, 1e-6));
}

TEST(GptNeoxTest, ResidPostIsNextResidPre) {
  const GptNeoxModel model = PerturbedModel(true);
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> hooks =
      model.RunToHooks(Tokens({4, 8, 15, 16}),
                       {{0, HookSite::kResidPost}, {1, HookSite::kResidPre}});
  EXPECT_TRUE(torch::equal(hooks[0], hooks[1]));
}

TEST(GptNeoxTest, GradientsFlowForTraining) {
  GptNeoxModel model = PerturbedModel(true);
  std::vector<torch::Tensor> parameters;
  for (auto& [name, tensor] : model.NamedParameters()) {
    parameters.push_back(tensor.requires_grad_(true));
  }
  const torch::Tensor logits = model.Logits(Tokens({1, 2, 3}));
  torch::nn::functional::cross_entropy(logits.reshape({-1, 20}),
                                       torch::tensor({2, 3, 4}))
      .backward();
  for (const torch::Tensor& p : parameters) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_GT(p.grad().abs().sum().item<double>(), 0);
  }
}

TEST(ParseHookSiteTest, Names) {
  for (HookSite site : {HookSite::kResidPre, HookSite::kResidPost,
                        HookSite::kAttnOut, HookSite::kMlpOut}) {
    EXPECT_EQ(*ParseHookSite(HookSiteName(site)), site);
  }
  EXPECT_EQ(ParseHookSite("resid_mid").status().code(),
            absl::StatusCode::kInvalidArgument);
}

class GptNeoxLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/gpt_neox_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  std::string dir_;
};

TEST_F(GptNeoxLoadTest, SaveLoadRoundTrip) {
  const GptNeoxModel model = PerturbedModel(true);
  ASSERT_TRUE(
      model.SaveHuggingFace(dir_, GptNeoxConfigJson(model.config())).ok());
  absl::StatusOr<GptNeoxModel> loaded = GptNeoxModel::Load(dir_, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = Tokens({0, 19, 7, 7});
  EXPECT_TRUE(torch::equal(model.Logits(tokens), loaded->Logits(tokens)));
}

// A checkpoint stored in bfloat16 (as many HF checkpoints are) loads as the
// float32 values of those bfloat16 numbers.
TEST_F(GptNeoxLoadTest, LoadsBfloat16) {
  const GptNeoxModel model = PerturbedModel(true);
  format::SafetensorsWriter writer;
  for (const auto& [name, tensor] : model.NamedParameters()) {
    torch::Tensor bf16 = tensor.detach().to(torch::kBFloat16).contiguous();
    ASSERT_TRUE(
        writer
            .Add(name, format::Dtype::kBF16, bf16.sizes().vec(),
                 std::string_view(static_cast<const char*>(bf16.data_ptr()),
                                  bf16.numel() * 2))
            .ok());
  }
  std::ofstream(dir_ + "/model.safetensors", std::ios::binary)
      << writer.Serialize();
  std::ofstream(dir_ + "/config.json") << GptNeoxConfigJson(model.config());
  absl::StatusOr<GptNeoxModel> loaded = GptNeoxModel::Load(dir_, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const auto original = model.NamedParameters();
  const auto restored = loaded->NamedParameters();
  ASSERT_EQ(original.size(), restored.size());
  for (size_t i = 0; i < original.size(); ++i) {
    EXPECT_TRUE(torch::equal(
        original[i].second.detach().to(torch::kBFloat16).to(torch::kFloat32),
        restored[i].second))
        << original[i].first;
  }
}

TEST_F(GptNeoxLoadTest, MissingOrMisshapenTensorIsDataLoss) {
  const GptNeoxModel model = PerturbedModel(true);
  format::SafetensorsWriter writer;
  for (const auto& [name, tensor] : model.NamedParameters()) {
    if (name == "gpt_neox.layers.1.mlp.dense_4h_to_h.bias") continue;
    torch::Tensor t = tensor.detach().contiguous();
    if (name == "gpt_neox.layers.0.attention.dense.weight")
      t = t.t().contiguous().narrow(0, 0, 8).contiguous();
    ASSERT_TRUE(writer.AddF32(name, t.sizes().vec(), t.data_ptr<float>()).ok());
  }
  std::ofstream(dir_ + "/model.safetensors", std::ios::binary)
      << writer.Serialize();
  std::ofstream(dir_ + "/config.json") << GptNeoxConfigJson(model.config());
  absl::StatusOr<GptNeoxModel> loaded = GptNeoxModel::Load(dir_, torch::kCPU);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("tensor \"gpt_neox.layers.0.attention.dense.weight\""));
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr("has shape [8, 16], expected [16, 16]"));
}

}  // namespace
}  // namespace saetrack::engine
