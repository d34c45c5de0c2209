#include "engine/internal/reference_math.h"

#include <gtest/gtest.h>

#include <cmath>

namespace saetrack::engine::reference {

void Perturb(const std::vector<std::pair<std::string, torch::Tensor>>& params,
             uint64_t seed, double scale) {
  torch::NoGradGuard no_grad;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  for (const auto& [name, tensor] : params) {
    torch::Tensor t = tensor;
    t.add_(torch::randn(t.sizes(), generator, torch::kFloat32) * scale);
  }
}

torch::Tensor Tokens(std::vector<int64_t> ids) {
  return torch::tensor(ids, torch::kInt64).unsqueeze(0);
}

std::map<std::string, Vector> WeightsWithPrefix(
    const std::vector<std::pair<std::string, torch::Tensor>>& params,
    const std::string& prefix) {
  std::map<std::string, Vector> weights;
  for (const auto& [name, tensor] : params) {
    if (name.rfind(prefix, 0) != 0) continue;
    torch::Tensor t = tensor.detach().to(torch::kFloat64).contiguous();
    weights[name.substr(prefix.size())] =
        Vector(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  }
  return weights;
}

Vector LayerNorm(const Vector& x, const Vector& weight, const Vector& bias,
                 double eps) {
  double mean = 0, var = 0;
  for (double a : x) mean += a;
  mean /= x.size();
  for (double a : x) var += (a - mean) * (a - mean);
  var /= x.size();
  Vector out(x.size());
  for (size_t j = 0; j < x.size(); ++j) {
    out[j] = (x[j] - mean) / std::sqrt(var + eps) * weight[j] + bias[j];
  }
  return out;
}

std::vector<Vector> Rows(const torch::Tensor& activations) {
  torch::Tensor t = activations.detach().to(torch::kFloat64).contiguous()[0];
  std::vector<Vector> rows;
  for (int64_t i = 0; i < t.size(0); ++i) {
    rows.emplace_back(t[i].data_ptr<double>(),
                      t[i].data_ptr<double>() + t.size(1));
  }
  return rows;
}

void ExpectNear(const std::vector<Vector>& expected,
                const std::vector<Vector>& actual, const char* what) {
  ASSERT_EQ(expected.size(), actual.size());
  for (size_t t = 0; t < expected.size(); ++t) {
    for (size_t j = 0; j < expected[t].size(); ++j) {
      EXPECT_NEAR(expected[t][j], actual[t][j], 1e-4)
          << what << " at position " << t << ", dim " << j;
    }
  }
}

format::ModelConfig TinyModelConfig(const std::string& architecture,
                                    int vocab_size, int layers) {
  format::ModelConfig config;
  config.architecture = architecture;
  config.vocab_size = vocab_size;
  config.hidden_size = 16;
  config.num_hidden_layers = layers;
  config.num_attention_heads = 2;
  config.intermediate_size = 32;
  config.max_position_embeddings = 16;
  if (architecture == "gpt2") {
    config.rotary_pct = 0;
    config.use_parallel_residual = false;
    config.hidden_act = "gelu_new";
    config.tie_word_embeddings = true;
  } else {
    config.rotary_pct = 0.5;
  }
  return config;
}

torch::Tensor RandomUnitDirections(int64_t k, int64_t d, uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const torch::Tensor directions =
      torch::randn({k, d}, generator, torch::kFloat32);
  return directions / directions.norm(2, 1, true);
}

torch::Tensor SparseCombinations(const torch::Tensor& directions, int64_t rows,
                                 uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const int64_t k = directions.size(0);
  const torch::Tensor active =
      (torch::rand({rows, k}, generator, torch::kFloat32) < 3.0 / k)
          .to(torch::kFloat32);
  const torch::Tensor magnitude =
      1 + torch::rand({rows, k}, generator, torch::kFloat32);
  return torch::matmul(active * magnitude, directions);
}

}  // namespace saetrack::engine::reference
