#include "engine/sae/sae.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/internal/reference_math.h"
#include "engine/sae/relu_l1_sae.h"
#include "engine/sae/sae_trainer.h"
#include "engine/sae/topk_sae.h"
#include "engine/training_engine.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::engine {
namespace {

using reference::RandomUnitDirections;
using reference::SparseCombinations;

using ::testing::HasSubstr;

double Median(std::vector<float> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2,
                   values.end());
  return values[values.size() / 2];
}

std::unique_ptr<Sae> MakeRelu(SaeWeights weights, double l1 = 1e-3) {
  SaeSpec spec;
  spec.l1_coefficient = l1;
  return *MakeSae(spec, std::move(weights));
}

std::unique_ptr<Sae> MakeTopK(SaeWeights weights, int k, int aux_k = 0) {
  SaeSpec spec;
  spec.architecture = "topk";
  spec.k = k;
  spec.aux_k = aux_k;
  return *MakeSae(spec, std::move(weights));
}

// Trains `sae` on `data` for `epochs` passes in batches of 256; returns the
// mean loss of the first and of the last epoch.
std::pair<double, double> Train(Sae& sae, const torch::Tensor& data,
                                const SaeTrainerOptions& options, int epochs) {
  SaeTrainer trainer(&sae, options);
  double first = 0, last = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    double sum = 0;
    int batches = 0;
    for (int64_t start = 0; start + 256 <= data.size(0); start += 256) {
      sum += trainer.Step(data.narrow(0, start, 256)).total;
      ++batches;
    }
    if (epoch == 0) first = sum / batches;
    last = sum / batches;
  }
  return {first, last};
}

SaeTrainerOptions FastOptions() {
  SaeTrainerOptions options;
  options.lr = 1e-2;
  options.warmup_steps = 10;
  return options;
}

// Fraction of planted directions [k, d] whose best-matching decoder row has
// cosine >= threshold.
double RecoveredFraction(const Sae& sae, const torch::Tensor& directions,
                         double threshold) {
  const torch::Tensor cos =
      torch::mm(directions, sae.weights().W_dec.t());  // rows unit norm
  const torch::Tensor best = std::get<0>(cos.max(1));
  return (best >= threshold).to(torch::kFloat64).mean().item<double>();
}

TEST(SaeTest, LearnsSparseFeatures) {
  const torch::Tensor directions = RandomUnitDirections(32, 16, 1);
  const torch::Tensor train = SparseCombinations(directions, 8192, 2);
  const torch::Tensor held_out = SparseCombinations(directions, 2048, 3);
  std::unique_ptr<Sae> sae =
      MakeRelu(InitSaeFromScratch(64, train.narrow(0, 0, 1024), 4));
  const double init_fvu = EvaluateSae(*sae, held_out).fvu;
  const auto [first_loss, last_loss] = Train(*sae, train, FastOptions(), 8);
  EXPECT_LT(last_loss, 0.5 * first_loss);
  const SaeEvaluation evaluation = EvaluateSae(*sae, held_out);
  EXPECT_LT(evaluation.fvu, 0.5);
  EXPECT_LT(evaluation.fvu, init_fvu);
  EXPECT_NEAR(HeldOutFvu(*sae, held_out, 100), evaluation.fvu, 1e-9);
  EXPECT_GT(evaluation.l0, 0);
  EXPECT_LT(evaluation.l0, 64);
  // Decoder rows stay on the unit sphere.
  const torch::Tensor norms = sae->weights().W_dec.norm(2, 1);
  EXPECT_TRUE(torch::allclose(norms, torch::ones_like(norms), 0, 1e-5));
  EXPECT_FALSE(sae->weights().W_enc.requires_grad());
}

// The planted-dictionary test of both architectures: activations are sparse
// non-negative combinations of 48 known unit directions in 32 dimensions
// (overcomplete); a trained SAE must find most of them.
class PlantedDictionaryTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PlantedDictionaryTest, RecoversPlantedDirections) {
  const torch::Tensor directions = RandomUnitDirections(48, 32, 11);
  const torch::Tensor train = SparseCombinations(directions, 16384, 12);
  const torch::Tensor held_out = SparseCombinations(directions, 4096, 13);
  const SaeWeights init = InitSaeFromScratch(192, train.narrow(0, 0, 2048), 14);
  std::unique_ptr<Sae> sae = GetParam() == "topk"
                                 ? MakeTopK(init.Clone(), /*k=*/4)
                                 : MakeRelu(init.Clone(), /*l1=*/5e-3);
  SaeTrainerOptions options = FastOptions();
  options.lr = 3e-3;
  options.dead_window_tokens = 4096;
  options.ghost_grads = true;
  EXPECT_LT(RecoveredFraction(*sae, directions, 0.9), 0.2);  // not by chance
  Train(*sae, train, options, 12);
  const double recovered = RecoveredFraction(*sae, directions, 0.9);
  EXPECT_GE(recovered, 0.8) << GetParam();
  EXPECT_LT(EvaluateSae(*sae, held_out).fvu, 0.25) << GetParam();
  const torch::Tensor norms = sae->weights().W_dec.norm(2, 1);
  EXPECT_TRUE(torch::allclose(norms, torch::ones_like(norms), 0, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Architectures, PlantedDictionaryTest,
                         ::testing::Values("relu_l1", "topk"));

// Hand-written gradients against autograd over LossTerms, on a batch where
// some features are active and some are not.
TEST(SaeTest, ReluHandWrittenGradientsMatchAutograd) {
  at::Generator generator = at::detail::createCPUGenerator(21);
  const torch::Tensor x = torch::randn({64, 12}, generator, torch::kFloat32);
  SaeWeights weights = InitSaeFromScratch(40, x, 22);
  weights.b_enc = 0.1 * torch::randn({40}, generator, torch::kFloat32);
  weights.b_enc.narrow(0, 0, 5).fill_(-50);  // silent features
  const std::unique_ptr<Sae> sae = MakeRelu(weights, /*l1=*/0.05);
  SaeWeights hand, reference;
  torch::Tensor fired_hand, fired_reference;
  const SaeLoss hand_loss =
      sae->LossAndGradients(x, StepContext{}, &hand, &fired_hand);
  const SaeLoss reference_loss = sae->AutogradLossAndGradients(
      x, StepContext{}, &reference, &fired_reference);
  EXPECT_NEAR(hand_loss.total, reference_loss.total, 1e-5);
  EXPECT_NEAR(hand_loss.sparsity, reference_loss.sparsity, 1e-6);
  EXPECT_GT(hand_loss.sparsity, 0);
  const std::pair<const char*, std::pair<torch::Tensor, torch::Tensor>>
      pairs[] = {{"W_enc", {hand.W_enc, reference.W_enc}},
                 {"b_enc", {hand.b_enc, reference.b_enc}},
                 {"W_dec", {hand.W_dec, reference.W_dec}},
                 {"b_dec", {hand.b_dec, reference.b_dec}}};
  for (const auto& [name, pair] : pairs) {
    EXPECT_EQ(pair.first.sizes(), pair.second.sizes()) << name;
    EXPECT_GT(pair.second.abs().max().item<double>(), 1e-4) << name;
    EXPECT_TRUE(torch::allclose(pair.first, pair.second, 1e-4, 1e-6))
        << name << " max diff "
        << (pair.first - pair.second).abs().max().item<double>();
  }
  EXPECT_TRUE(torch::equal(fired_hand, fired_reference));
  const int64_t fired = fired_hand.sum().item<int64_t>();
  EXPECT_GT(fired, 0);
  EXPECT_LT(fired, 40);  // a negative bias keeps some silent
}

// The autograd path itself against central finite differences in float64.
TEST(SaeTest, AutogradLossMatchesFiniteDifferences) {
  at::Generator generator = at::detail::createCPUGenerator(23);
  const torch::Tensor x = torch::randn({16, 5}, generator, torch::kFloat64);
  SaeWeights weights{torch::randn({5, 7}, generator, torch::kFloat64),
                     torch::randn({7}, generator, torch::kFloat64),
                     torch::randn({7, 5}, generator, torch::kFloat64),
                     torch::randn({5}, generator, torch::kFloat64)};
  for (const std::string architecture : {"relu_l1", "topk"}) {
    SaeSpec spec;
    spec.architecture = architecture;
    spec.l1_coefficient = 0.1;
    spec.k = 3;
    const std::unique_ptr<Sae> sae = *MakeSae(spec, weights.Clone());
    SaeWeights grads;
    torch::Tensor fired;
    sae->AutogradLossAndGradients(x, StepContext{}, &grads, &fired);
    // Perturb a few entries of each tensor.
    const std::pair<torch::Tensor*, torch::Tensor*> params[] = {
        {&sae->mutable_weights().W_enc, &grads.W_enc},
        {&sae->mutable_weights().b_enc, &grads.b_enc},
        {&sae->mutable_weights().W_dec, &grads.W_dec},
        {&sae->mutable_weights().b_dec, &grads.b_dec}};
    for (const auto& [param, grad] : params) {
      torch::Tensor flat = param->view({-1});
      for (int64_t i = 0; i < flat.numel(); i += 3) {
        const double h = 1e-6;
        const double saved = flat[i].item<double>();
        flat[i] = saved + h;
        const double plus = sae->Loss(x).total;
        flat[i] = saved - h;
        const double minus = sae->Loss(x).total;
        flat[i] = saved;
        EXPECT_NEAR(grad->view({-1})[i].item<double>(),
                    (plus - minus) / (2 * h), 1e-5)
            << architecture << " entry " << i;
      }
    }
  }
}

TEST(SaeTest, GhostGradsReachOnlyDeadFeatures) {
  at::Generator generator = at::detail::createCPUGenerator(25);
  const torch::Tensor x = torch::randn({64, 8}, generator, torch::kFloat32);
  SaeWeights weights = InitSaeFromScratch(16, x, 26);
  // Features 0..3 can never fire: a very negative bias.
  weights.b_enc.narrow(0, 0, 4).fill_(-100);
  const std::unique_ptr<Sae> sae = MakeRelu(weights, 1e-3);
  StepContext context;
  context.dead = torch::zeros({16}, torch::kBool);
  context.dead.narrow(0, 0, 4).fill_(true);
  SaeWeights plain, ghost;
  torch::Tensor fired;
  sae->LossAndGradients(x, StepContext{}, &plain, &fired);
  // Without ghost grads dead features get no encoder gradient at all.
  EXPECT_EQ(plain.W_enc.narrow(1, 0, 4).abs().max().item<double>(), 0);
  context.ghost_grads = true;
  const SaeLoss loss = sae->LossAndGradients(x, context, &ghost, &fired);
  EXPECT_GT(loss.auxiliary, 0);
  // The ghost term is rescaled element by element to the size of the
  // reconstruction error, so its value is the reconstruction error's.
  EXPECT_NEAR(loss.auxiliary, loss.reconstruction, 1e-4 * loss.reconstruction);
  EXPECT_GT(ghost.W_enc.narrow(1, 0, 4).abs().max().item<double>(), 0);
  // Live features' encoder columns see the same gradient as without it.
  EXPECT_TRUE(torch::allclose(ghost.W_enc.narrow(1, 4, 12),
                              plain.W_enc.narrow(1, 4, 12), 1e-4, 1e-6));
}

TEST(SaeTest, TopKSparseAndDenseDecodersAgree) {
  at::Generator generator = at::detail::createCPUGenerator(27);
  const torch::Tensor x = torch::randn({32, 8}, generator, torch::kFloat32);
  const SaeWeights weights = InitSaeFromScratch(128, x, 28);
  const std::unique_ptr<Sae> sae = MakeTopK(weights.Clone(), 3);
  auto* topk = static_cast<TopKSae*>(sae.get());
  ASSERT_FALSE(topk->dense_decode());  // 3 * 16 <= 128
  const torch::Tensor f = sae->Encode(x);
  EXPECT_TRUE(torch::all((f > 0).sum(1) <= 3).item<bool>());
  EXPECT_TRUE(torch::allclose(sae->Reconstruct(x), sae->Decode(f), 1e-5, 1e-6));
  SaeWeights sparse_grads, dense_grads;
  torch::Tensor fired_sparse, fired_dense;
  StepContext context;
  context.dead = torch::zeros({128}, torch::kBool);
  context.dead.narrow(0, 64, 64).fill_(true);
  const SaeLoss sparse =
      sae->LossAndGradients(x, context, &sparse_grads, &fired_sparse);
  topk->set_dense_decode(true);
  const SaeLoss dense =
      sae->LossAndGradients(x, context, &dense_grads, &fired_dense);
  EXPECT_NEAR(sparse.total, dense.total, 1e-5);
  EXPECT_GT(sparse.auxiliary, 0);
  EXPECT_TRUE(
      torch::allclose(sparse_grads.W_dec, dense_grads.W_dec, 1e-4, 1e-6));
  EXPECT_TRUE(
      torch::allclose(sparse_grads.W_enc, dense_grads.W_enc, 1e-4, 1e-6));
  EXPECT_TRUE(torch::equal(fired_sparse, fired_dense));
  EXPECT_EQ(fired_sparse.sum().item<int64_t>(),
            (f > 0).any(0).sum().item<int64_t>());
}

TEST(SaeTest, AuxKGivesDeadLatentsAGradient) {
  at::Generator generator = at::detail::createCPUGenerator(29);
  const torch::Tensor x = torch::randn({64, 8}, generator, torch::kFloat32);
  const std::unique_ptr<Sae> sae =
      MakeTopK(InitSaeFromScratch(64, x, 30), /*k=*/2, /*aux_k=*/8);
  const torch::Tensor fired_ever = (sae->Encode(x) > 0).any(0);
  StepContext context;
  context.dead = fired_ever.logical_not();
  ASSERT_GT(context.dead.sum().item<int64_t>(), 8);
  SaeWeights without, with;
  torch::Tensor fired;
  sae->LossAndGradients(x, StepContext{}, &without, &fired);
  const torch::Tensor dead_columns = context.dead.nonzero().flatten();
  EXPECT_EQ(
      without.W_enc.index_select(1, dead_columns).abs().max().item<double>(),
      0);
  const SaeLoss loss = sae->LossAndGradients(x, context, &with, &fired);
  EXPECT_GT(loss.auxiliary, 0);
  EXPECT_GT(with.W_enc.index_select(1, dead_columns).abs().max().item<double>(),
            0);
}

TEST(SaeTest, Bf16MatmulsStayCloseToFp32) {
  at::Generator generator = at::detail::createCPUGenerator(31);
  const torch::Tensor x = torch::randn({128, 16}, generator, torch::kFloat32);
  const SaeWeights weights = InitSaeFromScratch(64, x, 32);
  SaeSpec spec;
  const std::unique_ptr<Sae> fp32 =
      *MakeSae(spec, weights.Clone(), MatmulPrecision::kFp32);
  const std::unique_ptr<Sae> bf16 =
      *MakeSae(spec, weights.Clone(), MatmulPrecision::kBf16);
  const torch::Tensor a = fp32->Reconstruct(x);
  const torch::Tensor b = bf16->Reconstruct(x);
  EXPECT_EQ(b.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(torch::equal(a, b));  // bf16 really rounds
  EXPECT_LT(((a - b).norm() / a.norm()).item<double>(), 2e-2);
  SaeWeights ga, gb;
  torch::Tensor fired;
  fp32->LossAndGradients(x, StepContext{}, &ga, &fired);
  bf16->LossAndGradients(x, StepContext{}, &gb, &fired);
  EXPECT_EQ(gb.W_enc.scalar_type(), torch::kFloat32);  // fp32 master grads
  EXPECT_LT(((ga.W_enc - gb.W_enc).norm() / ga.W_enc.norm()).item<double>(),
            5e-2);
}

TEST(SaeTest, UnknownArchitecturesAndBadParametersNameTheField) {
  const SaeWeights weights{torch::zeros({4, 6}), torch::zeros({6}),
                           torch::zeros({6, 4}), torch::zeros({4})};
  SaeSpec spec;
  spec.architecture = "batchtopk";
  absl::StatusOr<std::unique_ptr<Sae>> sae = MakeSae(spec, weights);
  EXPECT_EQ(sae.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(sae.status().message()),
              HasSubstr("SaeSpec.architecture \"batchtopk\" is not supported "
                        "(supported: relu_l1, topk)"));
  spec.architecture = "topk";
  spec.k = 7;
  sae = MakeSae(spec, weights);
  EXPECT_THAT(std::string(sae.status().message()), HasSubstr("SaeSpec.k 7"));
  spec.k = 2;
  spec.aux_coefficient = -1;
  sae = MakeSae(spec, weights);
  EXPECT_THAT(std::string(sae.status().message()),
              HasSubstr("SaeSpec.aux_coefficient"));
  spec.architecture = "relu_l1";
  spec.l1_coefficient = std::nan("");
  sae = MakeSae(spec, weights);
  EXPECT_THAT(std::string(sae.status().message()),
              HasSubstr("SaeSpec.l1_coefficient"));
}

TEST(SaeTrainerTest, DeadFeaturesAfterTheWindow) {
  at::Generator generator = at::detail::createCPUGenerator(33);
  const torch::Tensor x = torch::randn({256, 8}, generator, torch::kFloat32);
  SaeWeights weights = InitSaeFromScratch(16, x, 34);
  weights.b_enc.narrow(0, 0, 4).fill_(-100);  // never fire
  std::unique_ptr<Sae> sae = MakeRelu(weights);
  SaeTrainerOptions options;
  options.lr = 1e-4;
  options.dead_window_tokens = 512;
  SaeTrainer trainer(sae.get(), options);
  trainer.Step(x);
  EXPECT_EQ(trainer.DeadMask().sum().item<int64_t>(), 0);  // 256 < 512
  trainer.Step(x);
  const torch::Tensor dead = trainer.DeadMask();
  EXPECT_TRUE(dead.narrow(0, 0, 4).all().item<bool>());
  EXPECT_EQ(dead.sum().item<int64_t>(),
            (sae->Encode(x) > 0).any(0).logical_not().sum().item<int64_t>());
  EXPECT_EQ(trainer.tokens(), 512);
  EXPECT_EQ(trainer.steps(), 2);
}

TEST(SaeTrainerTest, WarmupScalesTheFirstSteps) {
  at::Generator generator = at::detail::createCPUGenerator(35);
  const torch::Tensor x = torch::randn({64, 8}, generator, torch::kFloat32);
  const SaeWeights init = InitSaeFromScratch(16, x, 36);
  // Adam's first step moves each entry by ~lr; with warm-up over 10 steps the
  // first step moves it by ~lr / 10.
  auto first_step_size = [&](int warmup) {
    std::unique_ptr<Sae> sae = MakeRelu(init.Clone());
    SaeTrainerOptions options;
    options.lr = 1e-2;
    options.warmup_steps = warmup;
    SaeTrainer trainer(sae.get(), options);
    trainer.Step(x);
    return (sae->weights().b_enc - init.b_enc).abs().max().item<double>();
  };
  EXPECT_NEAR(first_step_size(0), 1e-2, 1e-4);
  EXPECT_NEAR(first_step_size(10), 1e-3, 1e-5);
}

TEST(SaeTrainerTest, RestoredStateContinuesExactly) {
  const torch::Tensor directions = RandomUnitDirections(16, 8, 37);
  const torch::Tensor data = SparseCombinations(directions, 2048, 38);
  const SaeWeights init = InitSaeFromScratch(32, data.narrow(0, 0, 512), 39);
  SaeTrainerOptions options = FastOptions();
  options.dead_window_tokens = 256;
  options.ghost_grads = true;
  auto batch = [&](int i) { return data.narrow(0, (i % 8) * 256, 256); };

  std::unique_ptr<Sae> straight = MakeRelu(init.Clone());
  SaeTrainer straight_trainer(straight.get(), options);
  for (int i = 0; i < 12; ++i) straight_trainer.Step(batch(i));

  std::unique_ptr<Sae> first = MakeRelu(init.Clone());
  SaeTrainer first_trainer(first.get(), options);
  for (int i = 0; i < 5; ++i) first_trainer.Step(batch(i));
  const std::string state = first_trainer.SaveState({{"note", "five steps"}});

  std::unique_ptr<Sae> resumed = MakeRelu(init.Clone());
  SaeTrainer resumed_trainer(resumed.get(), options);
  std::map<std::string, std::string> metadata;
  ASSERT_TRUE(resumed_trainer.RestoreState(state, &metadata).ok());
  EXPECT_EQ(metadata["note"], "five steps");
  EXPECT_EQ(resumed_trainer.steps(), 5);
  EXPECT_EQ(resumed_trainer.tokens(), 5 * 256);
  for (int i = 5; i < 12; ++i) resumed_trainer.Step(batch(i));
  EXPECT_TRUE(
      torch::equal(straight->weights().W_enc, resumed->weights().W_enc));
  EXPECT_TRUE(
      torch::equal(straight->weights().W_dec, resumed->weights().W_dec));
  EXPECT_TRUE(
      torch::equal(straight->weights().b_dec, resumed->weights().b_dec));

  // A state of another shape is refused and changes nothing.
  std::unique_ptr<Sae> other = MakeRelu(InitSaeFromScratch(24, data, 40));
  const SaeWeights before = other->weights().Clone();
  SaeTrainer other_trainer(other.get(), options);
  const absl::Status status = other_trainer.RestoreState(state, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("\"W_enc\""));
  EXPECT_TRUE(torch::equal(before.W_enc, other->weights().W_enc));
  EXPECT_EQ(other_trainer.steps(), 0);
  EXPECT_EQ(other_trainer.RestoreState("junk", nullptr).code(),
            absl::StatusCode::kDataLoss);
}

TEST(SaeTest, RecurrentInitialisationConvergesFaster) {
  // Two "checkpoints": the second's feature directions drift a little.
  const torch::Tensor directions = RandomUnitDirections(32, 16, 1);
  at::Generator generator = at::detail::createCPUGenerator(9);
  torch::Tensor drifted =
      directions +
      0.1 * torch::randn(directions.sizes(), generator, torch::kFloat32);
  drifted = drifted / drifted.norm(2, 1, true);
  const torch::Tensor train_a = SparseCombinations(directions, 8192, 2);
  const torch::Tensor train_b = SparseCombinations(drifted, 1024, 5);
  const torch::Tensor held_out_b = SparseCombinations(drifted, 2048, 6);

  SaeTrainerOptions options = FastOptions();
  std::unique_ptr<Sae> first =
      MakeRelu(InitSaeFromScratch(64, train_a.narrow(0, 0, 1024), 4));
  Train(*first, train_a, options, 8);

  std::unique_ptr<Sae> next = MakeRelu(first->weights().Clone());
  const std::unique_ptr<Sae> fresh =
      MakeRelu(InitSaeFromScratch(64, train_b.narrow(0, 0, 1024), 4));
  // Before any step, the previous SAE's loss on the next checkpoint is far
  // below a fresh SAE's.
  const double recurrent_loss = next->Loss(held_out_b).total;
  EXPECT_LT(recurrent_loss, 0.25 * fresh->Loss(held_out_b).total);
  const double init_fvu = EvaluateSae(*next, held_out_b).fvu;
  options.lr = 3e-3;
  options.warmup_steps = 1;
  Train(*next, train_b, options, 1);  // 1/8 of the first SAE's tokens
  const SaeEvaluation evaluation = EvaluateSae(*next, held_out_b);
  EXPECT_GT(init_fvu, evaluation.fvu);
  EXPECT_GT(Median(DecoderCosines(next->weights(), first->weights())), 0.9);

  // A from-scratch SAE with the same few tokens does much worse.
  std::unique_ptr<Sae> scratch =
      MakeRelu(InitSaeFromScratch(64, train_b.narrow(0, 0, 1024), 4));
  Train(*scratch, train_b, options, 1);
  EXPECT_LT(evaluation.fvu, EvaluateSae(*scratch, held_out_b).fvu);
}

TEST(SaeTest, LossMatchesDefinition) {
  at::Generator generator = at::detail::createCPUGenerator(1);
  const torch::Tensor x = torch::randn({8, 4}, generator, torch::kFloat32);
  const SaeWeights w = InitSaeFromScratch(6, x, 2);
  const std::unique_ptr<Sae> sae = MakeRelu(w.Clone(), 0.5);
  const SaeLoss loss = sae->Loss(x);
  torch::NoGradGuard no_grad;
  const torch::Tensor f =
      torch::relu(torch::matmul(x - w.b_dec, w.W_enc) + w.b_enc);
  const torch::Tensor x_hat = torch::matmul(f, w.W_dec) + w.b_dec;
  // The paper's reference code: per element (x_hat - x)^2 over the token's
  // centred L2 norm, averaged over batch x d_in, written out in loops.
  double reconstruction = 0;
  const torch::Tensor mean = x.mean(0);
  for (int b = 0; b < 8; ++b) {
    double norm = 0;
    for (int k = 0; k < 4; ++k) {
      const double c = (x[b][k] - mean[k]).item<double>();
      norm += c * c;
    }
    norm = std::sqrt(norm);
    for (int k = 0; k < 4; ++k) {
      const double e = (x_hat[b][k] - x[b][k]).item<double>();
      reconstruction += e * e / norm;
    }
  }
  reconstruction /= 8 * 4;
  const double sparsity = 0.5 * f.abs().sum(1).mean().item<double>();
  EXPECT_NEAR(loss.reconstruction, reconstruction, 1e-5);
  EXPECT_NEAR(loss.sparsity, sparsity, 1e-5);
  EXPECT_NEAR(loss.total, reconstruction + sparsity, 1e-5);
}

// Both terms of the paper's loss scale linearly with the activations: an SAE
// for 100 x (biases scaled, same directions) has 100 x the loss of each term.
TEST(SaeTest, PaperLossScalesLinearly) {
  at::Generator generator = at::detail::createCPUGenerator(3);
  const torch::Tensor x = torch::randn({32, 6}, generator, torch::kFloat32);
  SaeWeights w = InitSaeFromScratch(24, x, 4);
  w.b_enc = 0.1 * torch::randn({24}, generator, torch::kFloat32);
  const SaeLoss small = MakeRelu(w.Clone(), 0.2)->Loss(x);
  SaeWeights scaled = w.Clone();
  scaled.b_enc.mul_(100);
  scaled.b_dec.mul_(100);
  const SaeLoss large = MakeRelu(scaled, 0.2)->Loss(100 * x);
  EXPECT_GT(small.sparsity, 0);
  EXPECT_NEAR(large.reconstruction / small.reconstruction, 100, 1e-2);
  EXPECT_NEAR(large.sparsity / small.sparsity, 100, 1e-2);
}

// The L1 term weights each feature by its decoder row's norm (as the
// reference code does); the hand-written gradient includes the row norms'
// own gradient, checked here on rows that are not unit vectors.
TEST(SaeTest, ReluL1WeightedByDecoderNormsMatchesAutograd) {
  at::Generator generator = at::detail::createCPUGenerator(5);
  const torch::Tensor x = torch::randn({48, 10}, generator, torch::kFloat32);
  SaeWeights w = InitSaeFromScratch(30, x, 6);
  w.W_dec.mul_(torch::rand({30, 1}, generator, torch::kFloat32) * 3 + 0.2);
  w.b_enc = 0.1 * torch::randn({30}, generator, torch::kFloat32);
  const std::unique_ptr<Sae> sae = MakeRelu(w.Clone(), 0.3);
  const SaeLoss loss = sae->Loss(x);
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor f =
        torch::relu(torch::matmul(x - w.b_dec, w.W_enc) + w.b_enc);
    EXPECT_NEAR(loss.sparsity,
                0.3 * (f * w.W_dec.norm(2, 1)).sum(1).mean().item<double>(),
                1e-5);
  }
  SaeWeights hand, reference;
  torch::Tensor fired;
  sae->LossAndGradients(x, StepContext{}, &hand, &fired);
  sae->AutogradLossAndGradients(x, StepContext{}, &reference, &fired);
  EXPECT_TRUE(torch::allclose(hand.W_dec, reference.W_dec, 1e-4, 1e-6))
      << (hand.W_dec - reference.W_dec).abs().max().item<double>();
  EXPECT_TRUE(torch::allclose(hand.W_enc, reference.W_enc, 1e-4, 1e-6));
  EXPECT_TRUE(torch::allclose(hand.b_enc, reference.b_enc, 1e-4, 1e-6));
  EXPECT_TRUE(torch::allclose(hand.b_dec, reference.b_dec, 1e-4, 1e-6));
}

TEST(SaeTest, DensityHistogramBins) {
  // dead, 1e-8 (below the range: lowest bin), 1e-7, 3e-4, 0.5, 1.
  const std::vector<int64_t> bins =
      DensityHistogram({0.0f, 1e-8f, 1e-7f, 3e-4f, 0.5f, 1.0f});
  ASSERT_EQ(bins.size(), static_cast<size_t>(kDensityBins));
  EXPECT_EQ(bins[0], 1);
  EXPECT_EQ(bins[1], 2);       // [-7, -6.5) and everything below
  EXPECT_EQ(bins[1 + 6], 1);   // log10(3e-4) = -3.52 in [-4, -3.5)
  EXPECT_EQ(bins[1 + 13], 2);  // 0.5 and 1.0 in the top bin [-0.5, 0]
  int64_t total = 0;
  for (int64_t b : bins) total += b;
  EXPECT_EQ(total, 6);
}

TEST(SaeTest, InitialisationFromScratch) {
  at::Generator generator = at::detail::createCPUGenerator(1);
  const torch::Tensor sample =
      torch::randn({500, 8}, generator, torch::kFloat32) + 3;
  const SaeWeights a = InitSaeFromScratch(32, sample, 7);
  const SaeWeights b = InitSaeFromScratch(32, sample, 7);
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
  const std::unique_ptr<Sae> sae = MakeRelu(SaeWeights{
      torch::eye(2), torch::zeros({2}), torch::eye(2), torch::zeros({2})});
  const torch::Tensor x =
      torch::tensor({{1.0f, 0.0f}, {3.0f, 0.0f}, {0.0f, 2.0f}, {2.0f, 0.0f}});
  const SaeEvaluation evaluation = EvaluateSae(*sae, x, /*chunk_rows=*/3);
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
  const SaeEvaluation cut = EvaluateSae(*sae, y);
  EXPECT_DOUBLE_EQ(cut.mse, 1.0 / 4);  // one error of 1 over 2 rows * 2 dims
  EXPECT_DOUBLE_EQ(cut.fvu, 1.0 / 2);  // variance: 2 rows * 1^2
  EXPECT_DOUBLE_EQ(cut.dead_fraction, 0.5);
}

TEST(SaeTest, SafetensorsRoundTripIsBitExact) {
  at::Generator generator = at::detail::createCPUGenerator(1);
  const torch::Tensor sample =
      torch::randn({64, 8}, generator, torch::kFloat32);
  const SaeWeights sae = InitSaeFromScratch(24, sample, 3);
  absl::StatusOr<SaeWeights> restored =
      SaeFromSafetensors(SaeToSafetensors(sae), torch::kCPU);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(torch::equal(sae.W_enc, restored->W_enc));
  EXPECT_TRUE(torch::equal(sae.b_enc, restored->b_enc));
  EXPECT_TRUE(torch::equal(sae.W_dec, restored->W_dec));
  EXPECT_TRUE(torch::equal(sae.b_dec, restored->b_dec));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(MakeRelu(sae.Clone())->Encode(sample),
                           MakeRelu(*restored)->Encode(sample)));
  EXPECT_EQ(SaeToSafetensors(*restored), SaeToSafetensors(sae));
}

TEST(SaeTest, RejectsMalformedWeights) {
  EXPECT_EQ(SaeFromSafetensors("junk", torch::kCPU).status().code(),
            absl::StatusCode::kDataLoss);
  SaeWeights sae{torch::zeros({4, 6}), torch::zeros({6}), torch::zeros({6, 4}),
                 torch::zeros({5})};
  absl::StatusOr<SaeWeights> restored =
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
