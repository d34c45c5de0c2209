// End to end: a tiny GPT-NeoX trained by the LM trainer into a temporary
// directory, then SAEs of a chain trained on its checkpoints by the engine.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/features/analysis_pass.h"
#include "engine/lm/gpt2.h"
#include "engine/lm/language_model.h"
#include "engine/lm/lm_trainer.h"
#include "engine/sae/sae.h"
#include "engine/training_engine.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::engine {
namespace {

using ::testing::HasSubstr;

std::string MakeTempDir(const std::string& name) {
  std::string pattern = ::testing::TempDir() + "/" + name + "_XXXXXX";
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return pattern;
}

// Pseudo-text with word structure, so the tiny LM has something to learn.
std::string SyntheticCorpus(size_t bytes) {
  const std::vector<std::string> words = {
      "the ", "king ",   "and ",  "queen ", "shall ", "speak ",
      "of ",  "love ",   "to ",   "my ",    "lord, ", "thou ",
      "art ", "here.\n", "what ", "say "};
  std::mt19937 rng(11);
  std::string text;
  while (text.size() < bytes) text += words[rng() % words.size()];
  text.resize(bytes);
  return text;
}

std::string Message(const absl::Status& status) {
  return std::string(status.message());
}

class TorchEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("engine"));
    const std::string corpus = *dir_ + "/corpus.txt";
    std::ofstream(corpus) << SyntheticCorpus(100'000);
    TinyLmOptions options;
    options.corpus_path = corpus;
    options.out_dir = *dir_ + "/lm";
    options.threads = 1;  // ctest runs tests two at a time on two cores
    options.checkpoint_steps = {16, 32};
    options.d_model = 32;
    options.layers = 2;
    options.heads = 4;
    options.context_length = 32;
    options.batch_size = 8;
    absl::StatusOr<TinyLmResult> result = TrainTinyLm(options, nullptr);
    ASSERT_TRUE(result.ok()) << result.status();
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string Checkpoint(int step) {
    return *dir_ + "/lm/checkpoints/step-" + std::to_string(step);
  }

  static TrainInput BaseInput() {
    TrainInput input;
    input.model_dir = Checkpoint(16);
    input.layer = 1;
    input.site = "resid_pre";
    input.tokens_path = *dir_ + "/lm/tokens.u16";
    input.token_dtype = "uint16";
    input.context_length = 32;
    input.d_sae = 128;
    input.l1_coefficient = 1e-3;
    input.lr = 3e-3;
    input.warmup_steps = 5;
    input.batch_size = 128;
    input.train_tokens = 32 * 1024;
    input.eval_tokens = 2048;
    input.seed = 5;
    return input;
  }

  // The next SAE of the chain: `first`'s input on the next checkpoint,
  // initialised from its output.
  static TrainInput NextInput(const TrainInput& first,
                              const TrainOutput& output) {
    TrainInput next = first;
    next.model_dir = Checkpoint(32);
    next.init_sae_safetensors = output.sae_safetensors;
    return next;
  }

  std::unique_ptr<SaeTrainingEngine> NewEngine() {
    EngineOptions options;
    options.threads = 1;  // ctest runs tests two at a time on two cores
    absl::StatusOr<std::unique_ptr<SaeTrainingEngine>> engine =
        NewTorchEngine(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return *std::move(engine);
  }

  static std::string* dir_;
};

std::string* TorchEngineTest::dir_ = nullptr;

TEST_F(TorchEngineTest, TrainsChainWithRecurrentInitialisation) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  int progress_calls = 0;
  int64_t last_tokens = 0;
  const ProgressFn progress = [&](int64_t tokens, double loss) {
    ++progress_calls;
    EXPECT_GE(tokens, last_tokens);
    EXPECT_TRUE(std::isfinite(loss));
    last_tokens = tokens;
    return true;
  };
  absl::StatusOr<TrainOutput> first = engine->Train(BaseInput(), progress);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->d_in, 32);
  EXPECT_EQ(first->d_sae, 128);
  EXPECT_EQ(first->tokens_trained, 32 * 1024);
  EXPECT_EQ(last_tokens, 32 * 1024);
  EXPECT_GE(progress_calls, 2);
  EXPECT_GT(first->wall_time_s, 0);
  EXPECT_LT(first->fvu, first->init_fvu);
  EXPECT_LT(first->fvu, 0.5);
  EXPECT_GT(first->l0, 0);
  EXPECT_GE(first->dead_fraction, 0);
  EXPECT_LT(first->dead_fraction, 1);
  EXPECT_GT(first->mse, 0);
  EXPECT_EQ(first->features.frequency.size(), 128u);
  EXPECT_EQ(first->features.mean_activation.size(), 128u);
  EXPECT_EQ(first->features.max_activation.size(), 128u);
  EXPECT_EQ(first->features.encoder_norm.size(), 128u);
  EXPECT_TRUE(first->features.decoder_cos_prev.empty());
  // L0 is the sum of the per-feature frequencies.
  double frequency_sum = 0;
  for (float f : first->features.frequency) frequency_sum += f;
  EXPECT_NEAR(frequency_sum, first->l0, 1e-3 * first->l0);

  absl::StatusOr<format::SafetensorsFile> weights =
      format::SafetensorsFile::FromBytes(first->sae_safetensors, "sae");
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ((*weights->Get("W_enc"))->shape, (std::vector<int64_t>{32, 128}));
  EXPECT_EQ((*weights->Get("W_dec"))->shape, (std::vector<int64_t>{128, 32}));
  EXPECT_EQ((*weights->Get("b_enc"))->shape, (std::vector<int64_t>{128}));
  EXPECT_EQ((*weights->Get("b_dec"))->shape, (std::vector<int64_t>{32}));

  // The next SAE of the chain, on the next checkpoint, with 1/4 the tokens.
  TrainInput next = BaseInput();
  next.model_dir = Checkpoint(32);
  next.init_sae_safetensors = first->sae_safetensors;
  next.train_tokens = 8 * 1024;
  next.lr = 1e-3;
  absl::StatusOr<TrainOutput> second = engine->Train(next, nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->tokens_trained, 8 * 1024);
  EXPECT_GT(second->init_fvu, second->fvu);
  ASSERT_EQ(second->features.decoder_cos_prev.size(), 128u);
  std::vector<float> cosines = second->features.decoder_cos_prev;
  std::nth_element(cosines.begin(), cosines.begin() + cosines.size() / 2,
                   cosines.end());
  EXPECT_GT(cosines[cosines.size() / 2], 0.9);
}

// A copy of checkpoint `step` whose token embeddings are multiplied by
// `factor`: its layer-0 resid_pre activations are exactly factor x the
// original's.
std::string ScaledCheckpoint(const std::string& from, const std::string& to,
                             float factor) {
  std::filesystem::create_directories(to);
  std::filesystem::copy_file(from + "/config.json", to + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  absl::StatusOr<format::SafetensorsFile> file =
      format::SafetensorsFile::Open(from + "/model.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  format::SafetensorsWriter writer;
  for (const format::TensorView& t : file->tensors()) {
    std::string bytes(t.bytes);
    if (t.name == "gpt_neox.embed_in.weight") {
      EXPECT_EQ(t.dtype, format::Dtype::kF32);
      float* values = reinterpret_cast<float*>(bytes.data());
      for (size_t i = 0; i < bytes.size() / sizeof(float); ++i) {
        values[i] *= factor;
      }
    }
    EXPECT_TRUE(writer.Add(t.name, t.dtype, t.shape, bytes).ok());
  }
  std::ofstream(to + "/model.safetensors", std::ios::binary)
      << writer.Serialize();
  return to;
}

// A checkpoint with NaN weights fails its task naming the tensor; nothing
// is trained on it.
TEST_F(TorchEngineTest, NanWeightsAreRefusedNamingTheTensor) {
  TrainInput input = BaseInput();
  input.model_dir = ScaledCheckpoint(Checkpoint(16), *dir_ + "/nan-ckpt",
                                     std::numeric_limits<float>::quiet_NaN());
  absl::StatusOr<TrainOutput> out = NewEngine()->Train(input, nullptr);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(out.status()),
              HasSubstr("nan-ckpt: tensor \"gpt_neox.embed_in.weight\""));
  EXPECT_THAT(Message(out.status()),
              HasSubstr("NaN or infinite value(s), the first at element 0"));
}

// A learning rate no SAE survives: training stops at the first non-finite
// loss, saying which terms and which settings; nothing is returned to store.
TEST_F(TorchEngineTest, DivergedTrainingFailsInsteadOfStoringNan) {
  TrainInput input = BaseInput();
  input.lr = 1e30;
  input.warmup_steps = 1;
  absl::StatusOr<TrainOutput> out = NewEngine()->Train(input, nullptr);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(out.status()),
              HasSubstr("TrainInput.lr: training the chain's SAE diverged at "
                        "step "));
  EXPECT_THAT(Message(out.status()), HasSubstr("lr 1e+30"));
}

double MedianCos(std::vector<float> cosines) {
  std::nth_element(cosines.begin(), cosines.begin() + cosines.size() / 2,
                   cosines.end());
  return cosines[cosines.size() / 2];
}

// The SAE trains on activations normalised to E||x|| = sqrt(d_in): a
// checkpoint whose activations are 100x larger gives the same L0, FVU and
// directions, and its activation_scale is 100x smaller. The stored SAE has
// the scale folded in and reconstructs raw activations.
TEST_F(TorchEngineTest, ScalingActivationsChangesNothing) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.layer = 0;  // resid_pre of block 0: the embeddings themselves
  input.lm_eval_tokens = 0;
  input.train_tokens = 16 * 1024;
  absl::StatusOr<TrainOutput> plain = engine->Train(input, nullptr);
  ASSERT_TRUE(plain.ok()) << plain.status();
  input.model_dir =
      ScaledCheckpoint(Checkpoint(16), *dir_ + "/scaled-16", 100.0f);
  absl::StatusOr<TrainOutput> scaled = engine->Train(input, nullptr);
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  EXPECT_NEAR(scaled->activation_scale * 100, plain->activation_scale,
              1e-4 * plain->activation_scale);
  EXPECT_NEAR(scaled->l0, plain->l0, 0.02 * plain->l0);
  EXPECT_NEAR(scaled->fvu, plain->fvu, 0.02 * plain->fvu + 1e-4);
  EXPECT_NEAR(scaled->held_out_loss, plain->held_out_loss,
              0.02 * plain->held_out_loss);
  EXPECT_NEAR(scaled->dead_fraction, plain->dead_fraction, 0.02);
  const SaeWeights a = *SaeFromSafetensors(plain->sae_safetensors, torch::kCPU);
  const SaeWeights b =
      *SaeFromSafetensors(scaled->sae_safetensors, torch::kCPU);
  EXPECT_GT(MedianCos(DecoderCosines(a, b)), 0.99);
  // Folded: decoder rows have norm 1 / s, and s comes back from them.
  EXPECT_NEAR(ActivationScaleOf(a), plain->activation_scale,
              1e-4 * plain->activation_scale);
  EXPECT_NEAR(ActivationScaleOf(b), scaled->activation_scale,
              1e-4 * scaled->activation_scale);
  // Without normalisation the two would differ by 100x in L1 weight, which
  // the paper's loss would turn into very different sparsity.
  EXPECT_GT(plain->l0, 0);
}

// A small corpus is reused over epochs: with a budget above the training
// split, every distinct token is seen about budget / split times. With no
// room for the activation set the engine streams instead.
TEST_F(TorchEngineTest, SmallCorpusIsReusedOverEpochs) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.lm_eval_tokens = 0;
  input.train_tokens = 256 * 1024;  // the corpus has 100k tokens
  absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
  ASSERT_TRUE(output.ok()) << output.status();
  EXPECT_EQ(output->tokens_trained, 256 * 1024);
  // 90% of 100k tokens train, in whole contexts of 32.
  EXPECT_EQ(output->distinct_tokens, (90'000 / 32) * 32);
  EXPECT_NEAR(output->epochs, 256.0 * 1024 / output->distinct_tokens, 1e-9);
  EXPECT_GT(output->epochs, 2.5);
  EXPECT_FALSE(output->loss_curve.empty());

  input.max_activation_set_bytes = 0;
  input.train_tokens = 8 * 1024;
  absl::StatusOr<TrainOutput> streamed = engine->Train(input, nullptr);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  EXPECT_EQ(streamed->tokens_trained, 8 * 1024);
  EXPECT_LT(streamed->fvu, streamed->init_fvu);
}

// The trust check: an independent SAE from scratch beside the chain's, with
// its own numbers, the match between the two and the chance level.
TEST_F(TorchEngineTest, ReferenceCheckTrainsAnIndependentSae) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.lm_eval_tokens = 1024;
  input.train_tokens = 64 * 1024;
  input.reference_check = true;
  input.reference_seed = 6;
  input.reference_lr = 3e-3;
  input.reference_warmup_steps = 5;
  input.reference_train_tokens = 64 * 1024;
  absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
  ASSERT_TRUE(output.ok()) << output.status();
  ASSERT_TRUE(output->reference.has_value());
  const ReferenceCheck& r = *output->reference;
  EXPECT_EQ(r.seed, 6u);
  EXPECT_EQ(r.tokens_trained, 64 * 1024);
  EXPECT_EQ(r.matched, 128);
  EXPECT_EQ(r.match_method, "hungarian");
  EXPECT_GT(r.fvu, 0);
  EXPECT_LT(r.fvu, 0.5);
  EXPECT_GT(r.l0, 0);
  ASSERT_TRUE(r.loss_recovered.has_value());
  EXPECT_GT(*r.loss_recovered, 0.3);
  // Both SAEs train from scratch on the same data with the same recipe: their
  // losses are close, and their dictionaries share more than chance.
  EXPECT_NEAR(r.held_out_loss, output->held_out_loss,
              0.2 * output->held_out_loss);
  EXPECT_GT(r.match_median_cosine, r.random_median_cosine);
  EXPECT_GT(r.random_median_cosine, 0);
  EXPECT_LT(r.median_decoder_cos_init, 1);
  EXPECT_GE(r.match_fraction_above_0_7, r.match_fraction_above_0_9);
  // The chain's own numbers are reported beside it.
  EXPECT_LT(output->median_decoder_cos_init, 1);
  EXPECT_GT(output->held_out_loss, 0);
  // From scratch there is nothing to measure a speed-up from.
  EXPECT_FALSE(r.speedup.has_value());

  input.reference_check = false;
  output = engine->Train(input, nullptr);
  ASSERT_TRUE(output.ok()) << output.status();
  EXPECT_FALSE(output->reference.has_value());
}

// At a later checkpoint the trust check also measures the speed-up of
// recurrent initialisation: the task's initial SAE trained with the
// independent SAE's schedule and batches, and at a tenth of its lr, against
// the independent SAE's final loss. Here the initial SAE was already trained
// on this very checkpoint, so it starts near the target and gets there
// first; the same holds when the activations are streamed.
TEST_F(TorchEngineTest, ReferenceCheckMeasuresTheRecurrenceSpeedup) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.lm_eval_tokens = 0;
  input.train_tokens = 32 * 1024;
  absl::StatusOr<TrainOutput> first = engine->Train(input, nullptr);
  ASSERT_TRUE(first.ok()) << first.status();

  input.init_sae_safetensors = first->sae_safetensors;
  input.train_tokens = 4 * 1024;
  input.reference_check = true;
  input.reference_lr = 3e-3;
  input.reference_warmup_steps = 5;
  input.reference_train_tokens = 32 * 1024;
  input.speedup_tolerance = 0.05;
  for (const int64_t set_bytes : {int64_t{1} << 30, int64_t{0}}) {
    SCOPED_TRACE(set_bytes == 0 ? "streamed" : "in memory");
    input.max_activation_set_bytes = set_bytes;
    absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
    ASSERT_TRUE(output.ok()) << output.status();
    ASSERT_TRUE(output->reference.has_value());
    ASSERT_TRUE(output->reference->speedup.has_value());
    const analysis::RecurrenceSpeedup& s = *output->reference->speedup;
    EXPECT_EQ(s.tolerance, 0.05);
    EXPECT_DOUBLE_EQ(s.scratch_loss, s.scratch_curve.back().second);
    EXPECT_DOUBLE_EQ(s.target_loss, s.scratch_loss * 1.05);
    EXPECT_EQ(s.scratch_curve.front().first, 0);
    EXPECT_EQ(s.scratch_curve.back().first, 32 * 1024);
    EXPECT_GT(s.scratch_curve.size(), 10u);
    EXPECT_NEAR(s.scratch_loss, output->reference->held_out_loss,
                1e-6 * s.scratch_loss);
    EXPECT_EQ(s.same_lr.lr, 3e-3);
    EXPECT_DOUBLE_EQ(s.slow_lr.lr, 3e-4);
    for (const analysis::SpeedupArm* arm : {&s.same_lr, &s.slow_lr}) {
      // A trained SAE starts far below a random one's loss.
      EXPECT_LT(arm->init_loss, 0.5 * s.scratch_curve.front().second);
      ASSERT_TRUE(arm->tokens.has_value());
      EXPECT_LT(*arm->tokens, s.scratch_tokens);
      EXPECT_EQ(arm->curve.back().first, *arm->tokens);
      EXPECT_LE(arm->curve.back().second, s.target_loss);
      EXPECT_GT(arm->l0, 0);
      EXPECT_GT(s.Speedup(*arm), 1);
    }
  }
}

TEST_F(TorchEngineTest, ReportsLmEvaluationAndDensity) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.lm_eval_tokens = 1024;
  absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
  ASSERT_TRUE(output.ok()) << output.status();
  ASSERT_TRUE(output->lm.has_value());
  const LmEvaluation& lm = *output->lm;
  EXPECT_EQ(lm.tokens, 32 * 31);  // 32 contexts of 32 tokens, 31 predictions
  // Splicing in a trained SAE hurts less than zero-ablating the stream.
  EXPECT_LT(lm.ce_clean, lm.ce_zero_ablated);
  EXPECT_GE(lm.ce_spliced, lm.ce_clean - 1e-3);
  EXPECT_LT(lm.ce_spliced, lm.ce_zero_ablated);
  EXPECT_GT(lm.loss_recovered, 0.5);
  EXPECT_LE(lm.loss_recovered, 1.0 + 1e-3);
  EXPECT_GT(lm.kl_divergence, 0);
  ASSERT_EQ(output->density_histogram.size(),
            static_cast<size_t>(kDensityBins));
  int64_t features = 0;
  for (int64_t count : output->density_histogram) features += count;
  EXPECT_EQ(features, 128);
  EXPECT_EQ(static_cast<double>(output->density_histogram[0]) / 128,
            output->dead_fraction);

  input.lm_eval_tokens = 0;
  output = engine->Train(input, nullptr);
  ASSERT_TRUE(output.ok()) << output.status();
  EXPECT_FALSE(output->lm.has_value());
}

TEST_F(TorchEngineTest, TrainsTopKChain) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.sae_architecture = "topk";
  input.k = 8;
  input.lm_eval_tokens = 0;
  absl::StatusOr<TrainOutput> first = engine->Train(input, nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_LE(first->l0, 8.0);
  EXPECT_GT(first->l0, 4.0);
  EXPECT_LT(first->fvu, first->init_fvu);
  TrainInput next = NextInput(input, *first);
  next.train_tokens = 4096;
  next.lr = 1e-3;
  absl::StatusOr<TrainOutput> second = engine->Train(next, nullptr);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_LT(second->init_fvu, first->init_fvu);
  EXPECT_LE(second->l0, 8.0);

  input.k = 0;
  EXPECT_THAT(Message(engine->Train(input, nullptr).status()),
              HasSubstr("TrainInput.k 0 must be in [1, d_sae = 128]"));
}

TEST_F(TorchEngineTest, AdaptiveBudgetStopsEarly) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput first_input = BaseInput();
  first_input.lm_eval_tokens = 0;
  absl::StatusOr<TrainOutput> first = engine->Train(first_input, nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  // A later SAE with a large budget and a loose tolerance stops long before
  // the budget; without the adaptive budget it trains all of it.
  TrainInput next = NextInput(first_input, *first);
  next.lr = 1e-3;
  next.train_tokens = 64 * 1024;
  next.adaptive_window_tokens = 4096;
  next.adaptive_tolerance = 0.05;
  absl::StatusOr<TrainOutput> adaptive = engine->Train(next, nullptr);
  ASSERT_TRUE(adaptive.ok()) << adaptive.status();
  EXPECT_TRUE(adaptive->stopped_early);
  EXPECT_LT(adaptive->tokens_trained, 64 * 1024);
  EXPECT_GE(adaptive->tokens_trained, 4096);  // at least one window
  next.adaptive_window_tokens = 0;
  next.train_tokens = 8192;
  absl::StatusOr<TrainOutput> fixed = engine->Train(next, nullptr);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_FALSE(fixed->stopped_early);
  EXPECT_EQ(fixed->tokens_trained, 8192);
}

TEST_F(TorchEngineTest, ResumesFromSavedState) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.lm_eval_tokens = 0;
  input.state_dir = MakeTempDir("state");
  input.checkpoint_every_tokens = 8192;
  // The worker dies after 20k of 32k tokens: the last save is at 16k.
  absl::StatusOr<TrainOutput> interrupted = engine->Train(
      input, [](int64_t tokens, double) { return tokens < 20'000; });
  ASSERT_EQ(interrupted.status().code(), absl::StatusCode::kCancelled);
  std::ifstream state(input.state_dir + "/trainer_state.safetensors");
  ASSERT_TRUE(state.good());

  int64_t first_progress = -1;
  absl::StatusOr<TrainOutput> resumed =
      engine->Train(input, [&](int64_t tokens, double) {
        if (first_progress < 0) first_progress = tokens;
        return true;
      });
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->resumed_from_tokens, 16384);
  EXPECT_GT(first_progress, 16384);
  EXPECT_GE(resumed->tokens_trained, 32 * 1024 - 128);
  EXPECT_LE(resumed->tokens_trained, 32 * 1024);
  // As good as an uninterrupted run, and the initial FVU is the one recorded
  // before the interruption.
  TrainInput straight_input = input;
  straight_input.state_dir.clear();
  absl::StatusOr<TrainOutput> straight = engine->Train(straight_input, nullptr);
  ASSERT_TRUE(straight.ok()) << straight.status();
  EXPECT_EQ(resumed->init_fvu, straight->init_fvu);
  EXPECT_NEAR(resumed->fvu, straight->fvu, 0.05);

  // A state saved for other inputs is ignored, not resumed.
  TrainInput other = input;
  other.seed = 99;
  other.train_tokens = 4096;
  absl::StatusOr<TrainOutput> fresh = engine->Train(other, nullptr);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->resumed_from_tokens, 0);
  EXPECT_EQ(fresh->tokens_trained, 4096);
}

TEST_F(TorchEngineTest, Bf16MatmulsTrainOnCpu) {
  EngineOptions options;
  options.threads = 1;
  options.matmul_precision = "bf16";
  absl::StatusOr<std::unique_ptr<SaeTrainingEngine>> engine =
      NewTorchEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  TrainInput input = BaseInput();
  input.train_tokens = 8192;
  input.lm_eval_tokens = 0;
  absl::StatusOr<TrainOutput> output = (*engine)->Train(input, nullptr);
  ASSERT_TRUE(output.ok()) << output.status();
  EXPECT_LT(output->fvu, output->init_fvu);

  options.matmul_precision = "fp8";
  EXPECT_THAT(Message(NewTorchEngine(options).status()),
              HasSubstr("EngineOptions.matmul_precision \"fp8\""));
}

// The analysis pass on the final checkpoint chooses the reference positions;
// on an earlier checkpoint it measures progress at them.
TEST_F(TorchEngineTest, AnalysisPassOverTheChain) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput first_input = BaseInput();
  first_input.lm_eval_tokens = 0;
  absl::StatusOr<TrainOutput> first = engine->Train(first_input, nullptr);
  ASSERT_TRUE(first.ok()) << first.status();
  TrainInput next = NextInput(first_input, *first);
  next.train_tokens = 8192;
  absl::StatusOr<TrainOutput> last = engine->Train(next, nullptr);
  ASSERT_TRUE(last.ok()) << last.status();

  AnalysisInput input;
  input.model_dir = Checkpoint(32);
  input.layer = 1;
  input.tokens_path = *dir_ + "/lm/tokens.u16";
  input.context_length = 32;
  input.analysis_tokens = 2048;
  input.sae_safetensors = last->sae_safetensors;
  input.top_k = 8;
  absl::StatusOr<AnalysisOutput> final_pass =
      AnalyseCheckpoint(input, torch::kCPU, nullptr);
  ASSERT_TRUE(final_pass.ok()) << final_pass.status();
  EXPECT_EQ(final_pass->analysis_positions, 2048);
  EXPECT_EQ(final_pass->d_sae, 128);
  ASSERT_EQ(final_pass->top_positions.size(), 128u * 8);
  EXPECT_EQ(final_pass->reference_positions, final_pass->top_positions);
  // The analysis set is the engine's held-out set: same statistics.
  for (int i = 0; i < 128; ++i) {
    EXPECT_NEAR(final_pass->frequency[i], last->features.frequency[i], 1e-6);
  }
  int fired_features = 0;
  std::vector<float> progress;
  for (int i = 0; i < 128; ++i) {
    const int64_t p0 = final_pass->top_positions[i * 8];
    if (p0 < 0) {
      EXPECT_EQ(final_pass->top_tokens[i * 8], -1);
      continue;
    }
    ++fired_features;
    EXPECT_LT(p0, 2048);
    EXPECT_GE(final_pass->top_tokens[i * 8], 0);
    EXPECT_GE(final_pass->top_values[i * 8], final_pass->top_values[i * 8 + 7]);
    if (!std::isnan(final_pass->progress_activation[i])) {
      progress.push_back(final_pass->progress_activation[i]);
    }
  }
  EXPECT_GT(fired_features, 64);
  ASSERT_FALSE(progress.empty());
  std::nth_element(progress.begin(), progress.begin() + progress.size() / 2,
                   progress.end());
  // A feature's top positions resemble each other more than random ones.
  EXPECT_GT(progress[progress.size() / 2], 0);
  // Logit effects (default k 10): the checkpoint's unembedding of feature
  // 5's unit decoder direction, its argmax first and argmin first.
  ASSERT_EQ(final_pass->logit_effects_k, 10);
  ASSERT_EQ(final_pass->promoted_tokens.size(), 128u * 10);
  ASSERT_EQ(final_pass->suppressed_values.size(), 128u * 10);
  {
    absl::StatusOr<std::unique_ptr<LanguageModel>> lm =
        LoadLanguageModel(input.model_dir, torch::kCPU);
    ASSERT_TRUE(lm.ok()) << lm.status();
    absl::StatusOr<SaeWeights> weights =
        SaeFromSafetensors(input.sae_safetensors, torch::kCPU);
    ASSERT_TRUE(weights.ok()) << weights.status();
    const torch::Tensor d = weights->W_dec[5] / weights->W_dec[5].norm();
    const torch::Tensor logits = (*lm)->UnembedDirections(d);
    EXPECT_EQ(final_pass->promoted_tokens[50], logits.argmax().item<int64_t>());
    EXPECT_NEAR(final_pass->promoted_values[50], logits.max().item<float>(),
                1e-4);
    EXPECT_EQ(final_pass->suppressed_tokens[50],
              logits.argmin().item<int64_t>());
    EXPECT_NEAR(final_pass->suppressed_values[50], logits.min().item<float>(),
                1e-4);
    for (int j = 51; j < 60; ++j) {
      EXPECT_LE(final_pass->promoted_values[j],
                final_pass->promoted_values[j - 1]);
      EXPECT_GE(final_pass->suppressed_values[j],
                final_pass->suppressed_values[j - 1]);
    }
  }

  input.model_dir = Checkpoint(16);
  input.sae_safetensors = first->sae_safetensors;
  input.reference_positions = final_pass->top_positions;
  absl::StatusOr<AnalysisOutput> earlier =
      AnalyseCheckpoint(input, torch::kCPU, nullptr);
  ASSERT_TRUE(earlier.ok()) << earlier.status();
  EXPECT_EQ(earlier->reference_positions, final_pass->top_positions);
  EXPECT_EQ(earlier->progress_activation.size(), 128u);
  input.logit_effects_k = 0;  // off
  earlier = AnalyseCheckpoint(input, torch::kCPU, nullptr);
  ASSERT_TRUE(earlier.ok()) << earlier.status();
  EXPECT_EQ(earlier->logit_effects_k, 0);
  EXPECT_TRUE(earlier->promoted_tokens.empty());
  input.logit_effects_k = -1;
  EXPECT_THAT(Message(AnalyseCheckpoint(input, torch::kCPU, nullptr).status()),
              HasSubstr("AnalysisInput.logit_effects_k must be >= 0"));
  input.logit_effects_k = 10;

  input.reference_positions.pop_back();
  EXPECT_THAT(Message(AnalyseCheckpoint(input, torch::kCPU, nullptr).status()),
              HasSubstr("AnalysisInput.reference_positions has 1023 entries"));
  input.reference_positions.clear();
  input.top_k = 1;
  EXPECT_THAT(Message(AnalyseCheckpoint(input, torch::kCPU, nullptr).status()),
              HasSubstr("AnalysisInput.top_k"));
}

TEST_F(TorchEngineTest, DeterministicForSeed) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.train_tokens = 4096;
  absl::StatusOr<TrainOutput> a = engine->Train(input, nullptr);
  absl::StatusOr<TrainOutput> b = engine->Train(input, nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->sae_safetensors, b->sae_safetensors);
  EXPECT_EQ(a->fvu, b->fvu);
}

TEST_F(TorchEngineTest, HooksOfACheckpointShareOneForwardPass) {
  // Each hook trained alone, on its own engine.
  TrainInput early = BaseInput();
  early.layer = 0;
  early.train_tokens = 4096;
  TrainInput middle = early;
  middle.layer = 1;
  middle.site = "mlp_out";
  absl::StatusOr<TrainOutput> early_alone = NewEngine()->Train(early, nullptr);
  absl::StatusOr<TrainOutput> middle_alone =
      NewEngine()->Train(middle, nullptr);
  ASSERT_TRUE(early_alone.ok()) << early_alone.status();
  ASSERT_TRUE(middle_alone.ok()) << middle_alone.status();
  EXPECT_EQ(early_alone->shared_activation_sets, 0);

  // The same two tasks of one job on one engine: the first runs the LM for
  // both hooks, the second trains on the kept activations and gets exactly
  // the SAE it gets alone.
  early.job_hooks = {{0, "resid_pre"}, {1, "mlp_out"}};
  middle.job_hooks = early.job_hooks;
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  absl::StatusOr<TrainOutput> early_shared = engine->Train(early, nullptr);
  absl::StatusOr<TrainOutput> middle_shared = engine->Train(middle, nullptr);
  ASSERT_TRUE(early_shared.ok()) << early_shared.status();
  ASSERT_TRUE(middle_shared.ok()) << middle_shared.status();
  EXPECT_EQ(early_shared->shared_activation_sets, 0);
  EXPECT_EQ(middle_shared->shared_activation_sets, 2);
  EXPECT_EQ(early_shared->sae_safetensors, early_alone->sae_safetensors);
  EXPECT_EQ(middle_shared->sae_safetensors, middle_alone->sae_safetensors);
  EXPECT_EQ(middle_shared->fvu, middle_alone->fvu);

  // The next checkpoint's tasks do not reuse the last one's activations.
  TrainInput next = NextInput(middle, *middle_shared);
  absl::StatusOr<TrainOutput> next_out = engine->Train(next, nullptr);
  ASSERT_TRUE(next_out.ok()) << next_out.status();
  EXPECT_EQ(next_out->shared_activation_sets, 0);

  // A hook the model does not have is named.
  TrainInput bad = early;
  bad.job_hooks = {{0, "resid_pre"}, {2, "resid_pre"}};
  EXPECT_THAT(Message(engine->Train(bad, nullptr).status()),
              HasSubstr("TrainInput.job_hooks[1]: layer 2 is out of range"));
}

TEST_F(TorchEngineTest, EveryHookSiteTrains) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  for (const char* site : {"resid_post", "attn_out", "mlp_out"}) {
    TrainInput input = BaseInput();
    input.site = site;
    input.layer = 0;
    input.train_tokens = 2048;
    absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
    ASSERT_TRUE(output.ok()) << site << ": " << output.status();
    EXPECT_TRUE(std::isfinite(output->fvu)) << site;
  }
}

TEST_F(TorchEngineTest, CancelledByProgress) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  absl::StatusOr<TrainOutput> output =
      engine->Train(BaseInput(), [](int64_t, double) { return false; });
  EXPECT_EQ(output.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(TorchEngineTest, InvalidInputsNameTheField) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.layer = 2;
  absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(output.status()), HasSubstr("TrainInput.layer 2"));

  input = BaseInput();
  input.site = "resid_mid";
  output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(output.status()), HasSubstr("resid_mid"));

  input = BaseInput();
  input.context_length = 64;  // the tiny LM's max_position_embeddings is 32
  output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(output.status()), HasSubstr("context_length"));

  input = BaseInput();
  input.batch_size = 1;
  EXPECT_EQ(engine->Train(input, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);

  input = BaseInput();
  input.init_sae_safetensors = "not safetensors";
  EXPECT_EQ(engine->Train(input, nullptr).status().code(),
            absl::StatusCode::kDataLoss);

  // An SAE of another width cannot continue this chain.
  input = BaseInput();
  input.train_tokens = 1024;
  input.d_sae = 64;
  absl::StatusOr<TrainOutput> narrow = engine->Train(input, nullptr);
  ASSERT_TRUE(narrow.ok()) << narrow.status();
  input.d_sae = 128;
  input.init_sae_safetensors = narrow->sae_safetensors;
  output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(output.status()), HasSubstr("init_sae_safetensors"));
}

// A GPT-2 checkpoint goes through the same engine (LoadLanguageModel); a
// task whose architecture differs from the checkpoint's is refused.
TEST_F(TorchEngineTest, TrainsOnGpt2Checkpoints) {
  format::ModelConfig config;
  config.architecture = "gpt2";
  config.vocab_size = 256;
  config.hidden_size = 32;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.intermediate_size = 128;
  config.max_position_embeddings = 32;
  config.hidden_act = "gelu_new";
  config.tie_word_embeddings = true;
  const std::string model_dir = *dir_ + "/gpt2";
  ASSERT_TRUE(Gpt2Model::RandomInit(config, 1, torch::kCPU)
                  .SaveHuggingFace(model_dir, Gpt2ConfigJson(config))
                  .ok());
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.model_dir = model_dir;
  input.architecture = "gpt2";
  input.train_tokens = 4096;
  absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
  ASSERT_TRUE(output.ok()) << output.status();
  EXPECT_EQ(output->d_in, 32);
  EXPECT_EQ(output->tokens_trained, 4096);
  EXPECT_TRUE(std::isfinite(output->fvu));
  EXPECT_LT(output->fvu, output->init_fvu);

  input.architecture = "gpt_neox";
  output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(output.status()),
              HasSubstr("TrainInput.architecture is \"gpt_neox\""));
}

TEST_F(TorchEngineTest, MissingFilesAreNotFound) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  TrainInput input = BaseInput();
  input.model_dir = *dir_ + "/no-such-checkpoint";
  absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(output.status()), HasSubstr("no-such-checkpoint"));

  input = BaseInput();
  input.tokens_path = *dir_ + "/no-such-tokens";
  output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(output.status()), HasSubstr("no-such-tokens"));
}

TEST_F(TorchEngineTest, BadTokenFiles) {
  std::unique_ptr<SaeTrainingEngine> engine = NewEngine();
  // Token id 300 >= vocab 256 at token 4000 (byte 8000), inside the held-out
  // part that every run reads.
  std::string tokens(2 * 4096, '\0');
  for (size_t i = 0; i < tokens.size(); i += 2) tokens[i] = 'a';
  tokens[8000] = 0x2C;
  tokens[8001] = 0x01;
  const std::string bad_path = *dir_ + "/bad.u16";
  std::ofstream(bad_path, std::ios::binary) << tokens;
  TrainInput input = BaseInput();
  input.tokens_path = bad_path;
  input.eval_tokens = 4096;
  absl::StatusOr<TrainOutput> output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(output.status()),
              HasSubstr(bad_path + ": token id 300 at byte 8000"));

  const std::string short_path = *dir_ + "/short.u16";
  std::ofstream(short_path, std::ios::binary) << std::string(20, 'a');
  input.tokens_path = short_path;
  output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(output.status()),
              HasSubstr("shorter than one context of context_length 32"));

  const std::string odd_path = *dir_ + "/odd.u16";
  std::ofstream(odd_path, std::ios::binary) << std::string(4097, 'a');
  input.tokens_path = odd_path;
  output = engine->Train(input, nullptr);
  EXPECT_EQ(output.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(output.status()), HasSubstr("not a multiple"));
}

TEST(NewTorchEngineTest, Devices) {
  EngineOptions options;
  options.device = "tpu";
  EXPECT_EQ(NewTorchEngine(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.device = "cuda";
  if (!torch::cuda::is_available()) {
    EXPECT_EQ(NewTorchEngine(options).status().code(),
              absl::StatusCode::kFailedPrecondition);
  } else {
    EXPECT_TRUE(NewTorchEngine(options).ok());
  }
  options.device = "cpu";
  options.threads = -1;
  EXPECT_EQ(NewTorchEngine(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saetrack::engine
