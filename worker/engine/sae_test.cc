#include "worker/engine/sae.h"

#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/format/safetensors.h"

namespace saetrack::engine {
namespace {

using ::testing::HasSubstr;

// Activations made of a few active features out of `directions` [k, d]:
// each row is a sum of ~3 directions with magnitudes in [1, 2].
torch::Tensor SparseData(const torch::Tensor& directions, int64_t rows,
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

torch::Tensor RandomDirections(int64_t k, int64_t d, uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const torch::Tensor directions =
      torch::randn({k, d}, generator, torch::kFloat32);
  return directions / directions.norm(2, 1, true);
}

double Median(std::vector<float> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2,
                   values.end());
  return values[values.size() / 2];
}

// Trains `sae` on `data` for `epochs` passes in batches of 256; returns the
// mean loss of the first and of the last epoch.
std::pair<double, double> Train(ReluSae& sae, const torch::Tensor& data,
                                const SaeTrainerOptions& options, int epochs) {
  SaeTrainer trainer(&sae, options);
  double first = 0, last = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    double sum = 0;
    int batches = 0;
    for (int64_t start = 0; start + 256 <= data.size(0); start += 256) {
      sum += trainer.Step(data.narrow(0, start, 256)).total.item<double>();
      ++batches;
    }
    if (epoch == 0) first = sum / batches;
    last = sum / batches;
  }
  return {first, last};
}

TEST(SaeTest, LearnsSparseFeatures) {
  const torch::Tensor directions = RandomDirections(32, 16, 1);
  const torch::Tensor train = SparseData(directions, 8192, 2);
  const torch::Tensor held_out = SparseData(directions, 2048, 3);
  ReluSae sae = InitSaeFromScratch(64, train.narrow(0, 0, 1024), 4);
  SaeTrainerOptions options;
  options.l1_coefficient = 1e-3;
  options.lr = 1e-2;
  options.warmup_steps = 10;
  const double init_fvu = EvaluateSae(sae, held_out).fvu;
  const auto [first_loss, last_loss] = Train(sae, train, options, 8);
  EXPECT_LT(last_loss, 0.5 * first_loss);
  const SaeEvaluation evaluation = EvaluateSae(sae, held_out);
  EXPECT_LT(evaluation.fvu, 0.5);
  EXPECT_LT(evaluation.fvu, init_fvu);
  EXPECT_GT(evaluation.l0, 0);
  EXPECT_LT(evaluation.l0, 64);
  // Decoder rows stay on the unit sphere.
  const torch::Tensor norms = sae.W_dec.norm(2, 1);
  EXPECT_TRUE(torch::allclose(norms, torch::ones_like(norms), 0, 1e-5));
  // The trainer leaves the SAE without autograd state.
  EXPECT_FALSE(sae.W_enc.requires_grad());
}

TEST(SaeTest, RecurrentInitialisationConvergesFaster) {
  // Two "checkpoints": the second's feature directions drift a little.
  const torch::Tensor directions = RandomDirections(32, 16, 1);
  at::Generator generator = at::detail::createCPUGenerator(9);
  torch::Tensor drifted =
      directions +
      0.1 * torch::randn(directions.sizes(), generator, torch::kFloat32);
  drifted = drifted / drifted.norm(2, 1, true);
  const torch::Tensor train_a = SparseData(directions, 8192, 2);
  const torch::Tensor train_b = SparseData(drifted, 1024, 5);
  const torch::Tensor held_out_b = SparseData(drifted, 2048, 6);

  SaeTrainerOptions options;
  options.l1_coefficient = 1e-3;
  options.lr = 1e-2;
  options.warmup_steps = 10;
  ReluSae first = InitSaeFromScratch(64, train_a.narrow(0, 0, 1024), 4);
  Train(first, train_a, options, 8);

  ReluSae next = first.Clone();
  const double init_fvu = EvaluateSae(next, held_out_b).fvu;
  options.lr = 3e-3;
  options.warmup_steps = 1;
  Train(next, train_b, options, 1);  // 1/8 of the first SAE's tokens
  const SaeEvaluation evaluation = EvaluateSae(next, held_out_b);
  EXPECT_GT(init_fvu, evaluation.fvu);
  EXPECT_GT(Median(DecoderCosines(next, first)), 0.9);

  // A from-scratch SAE with the same few tokens does much worse.
  ReluSae scratch = InitSaeFromScratch(64, train_b.narrow(0, 0, 1024), 4);
  Train(scratch, train_b, options, 1);
  EXPECT_LT(evaluation.fvu, EvaluateSae(scratch, held_out_b).fvu);
}

TEST(SaeTest, LossMatchesDefinition) {
  at::Generator generator = at::detail::createCPUGenerator(1);
  const torch::Tensor x = torch::randn({8, 4}, generator, torch::kFloat32);
  const ReluSae sae = InitSaeFromScratch(6, x, 2);
  torch::NoGradGuard no_grad;
  const SaeLoss loss = ComputeSaeLoss(sae, x, 0.5);
  const torch::Tensor f =
      torch::relu(torch::matmul(x - sae.b_dec, sae.W_enc) + sae.b_enc);
  const torch::Tensor x_hat = torch::matmul(f, sae.W_dec) + sae.b_dec;
  const double reconstruction =
      ((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item<double>();
  const double sparsity = 0.5 * f.abs().sum(1).mean().item<double>();
  EXPECT_NEAR(loss.reconstruction, reconstruction, 1e-5);
  EXPECT_NEAR(loss.sparsity, sparsity, 1e-5);
  EXPECT_NEAR(loss.total.item<double>(), reconstruction + sparsity, 1e-5);
}

TEST(SaeTest, InitialisationFromScratch) {
  at::Generator generator = at::detail::createCPUGenerator(1);
  const torch::Tensor sample =
      torch::randn({500, 8}, generator, torch::kFloat32) + 3;
  const ReluSae a = InitSaeFromScratch(32, sample, 7);
  const ReluSae b = InitSaeFromScratch(32, sample, 7);
  EXPECT_TRUE(torch::equal(a.W_enc, b.W_enc));  // deterministic for a seed
  EXPECT_EQ(a.W_enc.sizes(), (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(a.W_dec.sizes(), (std::vector<int64_t>{32, 8}));
  EXPECT_TRUE(torch::equal(a.b_enc, torch::zeros({32})));
  const torch::Tensor norms = a.W_dec.norm(2, 1);
  EXPECT_TRUE(torch::allclose(norms, torch::ones_like(norms), 0, 1e-6));
  // Kaiming-uniform bound sqrt(6 / fan_in), fan_in = size(1) = 32.
  EXPECT_LE(a.W_enc.abs().max().item<double>(), std::sqrt(6.0 / 32));
  EXPECT_GT(a.W_enc.abs().max().item<double>(), 0.8 * std::sqrt(6.0 / 32));
  EXPECT_TRUE(torch::allclose(a.b_dec, GeometricMedian(sample)));
}

TEST(SaeTest, GeometricMedianIsRobustToOutliers) {
  const torch::Tensor points =
      torch::tensor({0.0f, 1.0f, 2.0f, 3.0f, 1000.0f}).unsqueeze(1);
  EXPECT_NEAR(GeometricMedian(points).item<double>(), 2.0, 1e-2);
  // For points symmetric around a centre, the median is the centre.
  const torch::Tensor square =
      torch::tensor({{1.0f, 1.0f}, {1.0f, 3.0f}, {3.0f, 1.0f}, {3.0f, 3.0f}});
  EXPECT_TRUE(torch::allclose(GeometricMedian(square),
                              torch::tensor({2.0f, 2.0f}), 0, 1e-4));
}

TEST(SaeTest, EvaluationOnKnownSae) {
  // Identity SAE: f = relu(x), x_hat = f. Exact on non-negative rows.
  ReluSae sae{torch::eye(2), torch::zeros({2}), torch::eye(2),
              torch::zeros({2})};
  const torch::Tensor x =
      torch::tensor({{1.0f, 0.0f}, {3.0f, 0.0f}, {0.0f, 2.0f}, {2.0f, 0.0f}});
  const SaeEvaluation evaluation = EvaluateSae(sae, x, /*chunk_rows=*/3);
  EXPECT_DOUBLE_EQ(evaluation.fvu, 0);
  EXPECT_DOUBLE_EQ(evaluation.mse, 0);
  EXPECT_DOUBLE_EQ(evaluation.l0, 1.0);
  EXPECT_DOUBLE_EQ(evaluation.dead_fraction, 0);
  EXPECT_THAT(evaluation.frequency, ::testing::ElementsAre(0.75f, 0.25f));
  EXPECT_THAT(evaluation.mean_activation, ::testing::ElementsAre(1.5f, 0.5f));
  EXPECT_THAT(evaluation.max_activation, ::testing::ElementsAre(3.0f, 2.0f));
  EXPECT_THAT(evaluation.encoder_norm, ::testing::ElementsAre(1.0f, 1.0f));

  // Negative inputs are cut by the ReLU: x = (-1, 0) reconstructs as 0.
  const torch::Tensor y = torch::tensor({{-1.0f, 0.0f}, {1.0f, 0.0f}});
  const SaeEvaluation cut = EvaluateSae(sae, y);
  EXPECT_DOUBLE_EQ(cut.mse, 1.0 / 4);  // one error of 1 over 2 rows * 2 dims
  EXPECT_DOUBLE_EQ(cut.fvu, 1.0 / 2);  // variance: 2 rows * 1^2
  EXPECT_DOUBLE_EQ(cut.dead_fraction, 0.5);
}

TEST(SaeTest, SafetensorsRoundTripIsBitExact) {
  at::Generator generator = at::detail::createCPUGenerator(1);
  const torch::Tensor sample =
      torch::randn({64, 8}, generator, torch::kFloat32);
  const ReluSae sae = InitSaeFromScratch(24, sample, 3);
  absl::StatusOr<ReluSae> restored =
      SaeFromSafetensors(SaeToSafetensors(sae), torch::kCPU);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(torch::equal(sae.W_enc, restored->W_enc));
  EXPECT_TRUE(torch::equal(sae.b_enc, restored->b_enc));
  EXPECT_TRUE(torch::equal(sae.W_dec, restored->W_dec));
  EXPECT_TRUE(torch::equal(sae.b_dec, restored->b_dec));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(sae.Encode(sample), restored->Encode(sample)));
  EXPECT_EQ(SaeToSafetensors(*restored), SaeToSafetensors(sae));
}

TEST(SaeTest, RejectsMalformedWeights) {
  EXPECT_EQ(SaeFromSafetensors("junk", torch::kCPU).status().code(),
            absl::StatusCode::kDataLoss);
  ReluSae sae{torch::zeros({4, 6}), torch::zeros({6}), torch::zeros({6, 4}),
              torch::zeros({5})};
  absl::StatusOr<ReluSae> restored =
      SaeFromSafetensors(SaeToSafetensors(sae), torch::kCPU);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(restored.status().message()),
              HasSubstr("inconsistent shapes"));
  // Missing tensor.
  format::SafetensorsWriter writer;
  const float zero = 0;
  ASSERT_TRUE(writer.AddF32("W_enc", {1, 1}, &zero).ok());
  restored = SaeFromSafetensors(writer.Serialize(), torch::kCPU);
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(restored.status().message()),
              HasSubstr("no tensor named \"b_enc\""));
}

}  // namespace
}  // namespace saetrack::engine
