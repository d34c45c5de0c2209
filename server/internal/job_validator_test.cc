#include "server/internal/job_validator.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/internal/test_fixtures.h"

namespace saetrack::server {
namespace {

using ::testing::HasSubstr;
using testing::MakeSpec;
using testing::TempDir;
using testing::WriteCheckpoint;
using testing::WriteTokens;

TEST(JobValidatorTest, FillsDefaults) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0, 10});
  spec.clear_sae();
  spec.clear_schedule();
  spec.mutable_data()->clear_context_length();
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->model().architecture(), "gpt_neox");
  EXPECT_EQ(out->data().token_dtype(), "uint16");
  EXPECT_EQ(out->data().context_length(), 128);
  EXPECT_EQ(out->hooks(0).site(), "resid_pre");
  EXPECT_EQ(out->sae().architecture(), "relu_l1");
  EXPECT_EQ(out->sae().expansion_factor(), 64);
  EXPECT_EQ(out->sae().d_sae(), 64 * 64);  // hidden_size 64.
  EXPECT_DOUBLE_EQ(out->sae().l1_coefficient(), 8e-5);
  EXPECT_DOUBLE_EQ(out->sae().lr_first(), 4e-4);
  EXPECT_DOUBLE_EQ(out->sae().lr_later(), 4e-5);
  EXPECT_EQ(out->sae().warmup_steps_first(), 5000);
  EXPECT_EQ(out->sae().warmup_steps_later(), 100);
  EXPECT_EQ(out->sae().batch_size(), 4096);
  EXPECT_EQ(out->schedule().direction(), v1::Schedule::FORWARD);
  EXPECT_EQ(out->schedule().tokens_first(), 300'000'000);
  EXPECT_EQ(out->schedule().tokens_later(), 15'000'000);
  EXPECT_EQ(out->schedule().eval_tokens(), 65536);
  // relu_l1: ghost grads on, the topk fields left unset.
  ASSERT_TRUE(out->sae().has_ghost_grads());
  EXPECT_TRUE(out->sae().ghost_grads());
  EXPECT_EQ(out->sae().k(), 0);
  EXPECT_EQ(out->sae().aux_k(), 0);
  EXPECT_EQ(out->sae().aux_coefficient(), 0);
  // 0 means "a tenth of the SAE's training tokens" to the engine.
  EXPECT_EQ(out->sae().dead_window_tokens(), 0);
  EXPECT_EQ(out->schedule().adaptive_window_tokens(), 0);
  EXPECT_DOUBLE_EQ(out->schedule().adaptive_tolerance(), 0.01);
  ASSERT_TRUE(out->schedule().has_lm_eval_tokens());
  EXPECT_EQ(out->schedule().lm_eval_tokens(), 8192);
  ASSERT_TRUE(out->schedule().has_reference_checkpoints());
  EXPECT_EQ(out->schedule().reference_checkpoints(), 3);
}

TEST(JobValidatorTest, LogitEffectsKDefaultsTo10AndZeroTurnsThemOff) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0});
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(out->analysis().has_logit_effects_k());
  EXPECT_EQ(out->analysis().logit_effects_k(), 10);
  spec.mutable_analysis()->set_logit_effects_k(0);
  out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->analysis().logit_effects_k(), 0);
  spec.mutable_analysis()->set_logit_effects_k(100);
  out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->analysis().logit_effects_k(), 100);
  for (int k : {-1, 101}) {
    spec.mutable_analysis()->set_logit_effects_k(k);
    out = JobValidator({}).Validate(spec);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(out.status().message()),
                HasSubstr(absl::StrCat("spec.analysis.logit_effects_k: ", k,
                                       " must be in [0, 100]")));
  }
}

TEST(JobValidatorTest, FillsTopkDefaults) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0});
  spec.mutable_sae()->set_architecture("topk");
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->sae().d_sae(), 128);
  EXPECT_EQ(out->sae().k(), 32);
  EXPECT_EQ(out->sae().aux_k(), 64);
  EXPECT_DOUBLE_EQ(out->sae().aux_coefficient(), 1.0 / 32);
  // Ghost grads are a relu_l1 mechanism.
  EXPECT_FALSE(out->sae().has_ghost_grads());
}

TEST(JobValidatorTest, DefaultAuxKIsCappedAtDSae) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0});
  spec.mutable_sae()->set_architecture("topk");
  spec.mutable_sae()->set_d_sae(40);
  spec.mutable_sae()->set_k(30);
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->sae().aux_k(), 40);
}

TEST(JobValidatorTest, KeepsExplicitTrainingOptions) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0});
  spec.mutable_sae()->set_ghost_grads(false);
  spec.mutable_sae()->set_dead_window_tokens(5000);
  spec.mutable_schedule()->set_adaptive_window_tokens(100000);
  spec.mutable_schedule()->set_adaptive_tolerance(0.05);
  // An explicit 0 skips the LM evaluation rather than meaning "default".
  spec.mutable_schedule()->set_lm_eval_tokens(0);
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(out->sae().has_ghost_grads());
  EXPECT_FALSE(out->sae().ghost_grads());
  EXPECT_EQ(out->sae().dead_window_tokens(), 5000);
  EXPECT_EQ(out->schedule().adaptive_window_tokens(), 100000);
  EXPECT_DOUBLE_EQ(out->schedule().adaptive_tolerance(), 0.05);
  ASSERT_TRUE(out->schedule().has_lm_eval_tokens());
  EXPECT_EQ(out->schedule().lm_eval_tokens(), 0);

  spec = MakeSpec(dir.path(), {0});
  spec.mutable_sae()->set_architecture("topk");
  spec.mutable_sae()->set_k(8);
  spec.mutable_sae()->set_aux_k(128);  // == d_sae: allowed.
  spec.mutable_sae()->set_aux_coefficient(0.1);
  spec.mutable_sae()->set_ghost_grads(false);  // Harmless with topk.
  spec.mutable_schedule()->set_lm_eval_tokens(4096);
  out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->sae().k(), 8);
  EXPECT_EQ(out->sae().aux_k(), 128);
  EXPECT_DOUBLE_EQ(out->sae().aux_coefficient(), 0.1);
  EXPECT_EQ(out->schedule().lm_eval_tokens(), 4096);
}

TEST(JobValidatorTest, KeepsExplicitValues) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0});
  spec.mutable_sae()->set_d_sae(100);
  spec.mutable_schedule()->set_tokens_first(2000);
  spec.mutable_schedule()->set_direction(v1::Schedule::BACKWARD);
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->sae().d_sae(), 100);
  EXPECT_EQ(out->schedule().tokens_later(), 100);  // 2000 / 20.
  EXPECT_EQ(out->schedule().direction(), v1::Schedule::BACKWARD);
  EXPECT_EQ(out->data().context_length(), 32);
}

// Checkpoint 1 of `s` moved to a copy of checkpoint 0 under `root`/`name`
// whose file `file` holds `bytes` instead (model.safetensors removed when
// `file` is the index).
void MalformedCheckpoint(v1::JobSpec* s, const std::string& root,
                         const std::string& name, const std::string& file,
                         const std::string& bytes) {
  const std::string ckpt = root + "/" + name;
  WriteCheckpoint(ckpt);
  if (file == "model.safetensors.index.json") {
    std::filesystem::remove(ckpt + "/model.safetensors");
  }
  std::ofstream(ckpt + "/" + file, std::ios::binary | std::ios::trunc) << bytes;
  s->mutable_model()->mutable_checkpoints(1)->set_path(ckpt);
}

// A safetensors file of `header` (JSON) and `data`.
std::string SafetensorsOf(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>(header.size() >> (8 * i));
  return out + header + data;
}

struct ErrorCase {
  std::string name;
  std::function<void(v1::JobSpec*, const std::string& root)> mutate;
  absl::StatusCode code;
  std::string message;  // A substring naming the field.
};

// Keeps ctest's test names readable (gtest would dump the struct's bytes).
void PrintTo(const ErrorCase& c, std::ostream* os) { *os << c.name; }

class JobValidatorErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(JobValidatorErrorTest, NamesTheField) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0, 10});
  GetParam().mutate(&spec, dir.path());
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), GetParam().code) << out.status();
  EXPECT_THAT(out.status().message(), HasSubstr(GetParam().message));
}

const double kNan = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

INSTANTIATE_TEST_SUITE_P(
    Cases, JobValidatorErrorTest,
    ::testing::ValuesIn(std::
                            vector<ErrorCase>{
                                {"MissingCheckpointPath",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_model()
                                       ->mutable_checkpoints(1)
                                       ->set_path("/x");
                                 },
                                 absl::StatusCode::kNotFound,
                                 "spec.model.checkpoints[1].path: '/x' does "
                                 "not exist"},
                                {"LearningRateNoSaeSurvives",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_lr_first(1e308);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.lr_first: 1e+308 out of range (at "
                                 "most 1)"},
                                {"L1CoefficientOverflows",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_l1_coefficient(1e308);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.l1_coefficient: 1e+308 out of "
                                 "range (at most 10000)"},
                                {"BatchNoWorkerHolds",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_batch_size(2147483647);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.batch_size: 2147483647 out of "
                                 "range (at most 1048576)"},
                                {"SaeLargerThanOneStoredValue",
                                 [](v1::JobSpec* s, const std::string&) {
                                   // 2 * 64 * 2^23 floats: 4 GiB.
                                   s->mutable_sae()->set_d_sae(1 << 23);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.d_sae: an SAE of d_sae 8388608 at "
                                 "hidden_size 64 is 4328523008 bytes, more "
                                 "than the coordinator stores (4294967295 "
                                 "bytes"},
                                {"FifoTokenFile",
                                 [](v1::JobSpec* s, const std::string& dir) {
                                   const std::string fifo = dir + "/fifo.u16";
                                   ::mkfifo(fifo.c_str(), 0600);
                                   s->mutable_data()->set_tokens_path(fifo);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "fifo.u16' is not a regular file"},
                                {"FifoConfigJson",
                                 [](v1::JobSpec* s, const std::string& dir) {
                                   const std::string ckpt = dir + "/fifo-ckpt";
                                   std::filesystem::create_directories(ckpt);
                                   ::mkfifo((ckpt + "/config.json").c_str(),
                                            0600);
                                   s->mutable_model()
                                       ->mutable_checkpoints(1)
                                       ->set_path(ckpt);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "fifo-ckpt/config.json' is not a regular "
                                 "file"},
                                {"FifoWeights",
                                 [](v1::JobSpec* s, const std::string& dir) {
                                   const std::string ckpt = dir + "/fifo-w";
                                   std::filesystem::create_directories(ckpt);
                                   std::filesystem::copy_file(
                                       s->model().checkpoints(0).path() +
                                           "/config.json",
                                       ckpt + "/config.json");
                                   ::mkfifo(
                                       (ckpt + "/model.safetensors").c_str(),
                                       0600);
                                   s->mutable_model()
                                       ->mutable_checkpoints(1)
                                       ->set_path(ckpt);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: '"},
                                {"WeightsShapeDisagreesWithOffsets",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   MalformedCheckpoint(
                                       s, root, "bad-shape",
                                       "model.safetensors",
                                       SafetensorsOf(
                                           R"({"w":{"dtype":"F32","shape":)"
                                           R"([4096000000000000,128],)"
                                           R"("data_offsets":[0,16]}})",
                                           std::string(16, '\0')));
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: "},
                                {"WeightsHeaderBeyondTheFile",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   std::string bytes = SafetensorsOf("{}", "");
                                   bytes[5] = 1;  // Length 2^40 + 2.
                                   MalformedCheckpoint(s, root, "bad-length",
                                                       "model.safetensors",
                                                       bytes);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: "},
                                {"WeightsEmptyFile",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   MalformedCheckpoint(s, root, "empty-w",
                                                       "model.safetensors", "");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: "},
                                {"WeightsOffsetsBeyondTheData",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   MalformedCheckpoint(
                                       s, root, "bad-offsets",
                                       "model.safetensors",
                                       SafetensorsOf(
                                           R"({"w":{"dtype":"F32","shape":)"
                                           R"([4],"data_offsets":[0,16]}})",
                                           std::string(8, '\0')));
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: "},
                                {"IndexShardOutsideTheCheckpoint",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   MalformedCheckpoint(
                                       s, root, "bad-index",
                                       "model.safetensors.index.json",
                                       R"({"weight_map": {"w": )"
                                       R"("../bad-shape/model.safetensors"}})");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: "},
                                {"ConfigJsonTooLarge",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   MalformedCheckpoint(
                                       s, root, "huge-config", "config.json",
                                       "{" + std::string(2 << 20, ' ') + "}");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "config.json: 2097154 bytes exceeds the "
                                 "1048576-byte limit"},
                                {"LayerOutOfRange",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_hooks(0)->set_layer(7);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.hooks[0].layer: 7 out of range [0, 2) "
                                 "for the model at "
                                 "spec.model.checkpoints[0].path"},
                                {"UnsupportedArchitecture",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_model()->set_architecture("foo");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.architecture: 'foo' is not "
                                 "supported (supported: "
                                 "gpt_neox, gpt2)"},
                                {"NoCheckpoints",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_model()->clear_checkpoints();
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints: empty"},
                                {"DuplicateStep",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_model()
                                       ->mutable_checkpoints(1)
                                       ->set_step(0);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].step: 0 "
                                 "duplicates"},
                                {"UnsortedSteps",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_model()
                                       ->mutable_checkpoints(0)
                                       ->set_step(20);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].step: 10 is "
                                 "smaller than"},
                                {"NegativeStep",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_model()
                                       ->mutable_checkpoints(0)
                                       ->set_step(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[0].step"},
                                {"DifferentHiddenSize",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   WriteCheckpoint(root + "/wide", 128, 2);
                                   s->mutable_model()
                                       ->mutable_checkpoints(1)
                                       ->set_path(root + "/wide");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: hidden_size "
                                 "128 differs"},
                                {"DifferentLayerCount",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   WriteCheckpoint(root + "/deep", 64, 4);
                                   s->mutable_model()
                                       ->mutable_checkpoints(1)
                                       ->set_path(root + "/deep");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[1].path: "
                                 "num_hidden_layers 4 differs"},
                                {"CheckpointWithoutWeights",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   WriteCheckpoint(root + "/noweights");
                                   std::filesystem::remove(
                                       root + "/noweights/model.safetensors");
                                   s->mutable_model()
                                       ->mutable_checkpoints(1)
                                       ->set_path(root + "/noweights");
                                 },
                                 absl::StatusCode::kNotFound,
                                 "spec.model.checkpoints[1].path"},
                                {"CheckpointIsAFile",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   s->mutable_model()
                                       ->mutable_checkpoints(0)
                                       ->set_path(root + "/tokens.bin");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[0].path: '"},
                                {"RelativePath",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_model()
                                       ->mutable_checkpoints(0)
                                       ->set_path("ckpt");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.model.checkpoints[0].path: 'ckpt' is "
                                 "not an absolute path"},
                                {"MissingTokens",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   s->mutable_data()->set_tokens_path(
                                       root + "/none.bin");
                                 },
                                 absl::StatusCode::kNotFound,
                                 "spec.data.tokens_path: '"},
                                {"NoTokensPath",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_data()->clear_tokens_path();
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.data.tokens_path: required"},
                                {"OddTokenFileSize",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   WriteTokens(root + "/odd.bin", 1001, 1);
                                   s->mutable_data()->set_tokens_path(
                                       root + "/odd.bin");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "not a multiple of 2"},
                                {"Uint32NeedsMultipleOfFour",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   WriteTokens(root + "/six.bin", 3, 2);
                                   s->mutable_data()->set_tokens_path(
                                       root + "/six.bin");
                                   s->mutable_data()->set_token_dtype("uint32");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "not a multiple of 4"},
                                {"FewerTokensThanOneContext",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   WriteTokens(root + "/short.bin", 31);
                                   s->mutable_data()->set_tokens_path(
                                       root + "/short.bin");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "fewer than one context "
                                 "(spec.data.context_length 32)"},
                                {"UnknownDtype",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_data()->set_token_dtype("int8");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.data.token_dtype: 'int8' is not "
                                 "supported"},
                                {"ContextLongerThanModel",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_data()->set_context_length(257);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.data.context_length: 257"},
                                {"NoDisjointHeldOutSplit",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   // 90 tokens train, the last 10 are
                                   // shorter than one 32-token context.
                                   WriteTokens(root + "/small.bin", 100);
                                   s->mutable_data()->set_tokens_path(
                                       root + "/small.bin");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "holds 100 tokens, too few for a training "
                                 "part and a disjoint held-out part"},
                                {"TokensFirstBeyondExecutable",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_tokens_first(
                                       std::numeric_limits<int64_t>::max());
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.tokens_first: "
                                 "9223372036854775807 tokens exceeds the "
                                 "maximum 1125899906842624"},
                                {"TokensLaterBeyondExecutable",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_tokens_later(
                                       std::numeric_limits<int64_t>::max());
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.tokens_later: "
                                 "9223372036854775807 tokens exceeds"},
                                {"EvalTokensBeyondMemory",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_eval_tokens(
                                       std::numeric_limits<int64_t>::max());
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.eval_tokens: "
                                 "9223372036854775807 tokens exceeds the "
                                 "maximum"},
                                {"LmEvalTokensBeyondMemory",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_lm_eval_tokens(
                                       std::numeric_limits<int64_t>::max());
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.lm_eval_tokens: "
                                 "9223372036854775807 tokens exceeds the "
                                 "maximum"},
                                {"AnalysisTokensBeyondMemory",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_analysis()->set_analysis_tokens(
                                       std::numeric_limits<int64_t>::max());
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.analysis.analysis_tokens: "
                                 "9223372036854775807 tokens exceeds the "
                                 "maximum"},
                                {"NegativeContext",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_data()->set_context_length(-5);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.data.context_length: -5"},
                                {"NoHooks",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->clear_hooks();
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.hooks: empty"},
                                {"UnknownSite",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_hooks(0)->set_site("resid_mid");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.hooks[0].site: 'resid_mid' is not "
                                 "supported"},
                                {"DuplicateLayer",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->add_hooks()->set_layer(0);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.hooks[1].layer: 0 is already hooked"},
                                {"NegativeLayer",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_hooks(0)->set_layer(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.hooks[0].layer: -1"},
                                {"NanL1",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_l1_coefficient(kNan);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.l1_coefficient: nan is not finite"},
                                {"NegativeL1",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_l1_coefficient(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.l1_coefficient: -1"},
                                {"InfiniteLr",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_lr_first(kInf);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.lr_first: inf is not finite"},
                                {"NegativeLrLater",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_lr_later(-1e-4);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.lr_later"},
                                {"NegativeBatch",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_batch_size(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.batch_size: -1"},
                                {"NegativeExpansion",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_expansion_factor(-2);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.expansion_factor: -2"},
                                {"NegativeDSae",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_d_sae(-2);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.d_sae: -2"},
                                {"UnknownSaeArchitecture",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("gated");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.architecture: 'gated' is not "
                                 "supported"},
                                {"TopkNegativeK",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_k(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.k: -1 must be > 0"},
                                {"TopkKEqualsDSae",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_k(128);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.k: 128 must be < d_sae 128"},
                                {"TopkDefaultKTooLarge",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_d_sae(16);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.k: 32 (the default) must be < "
                                 "d_sae 16"},
                                {"TopkNegativeAuxK",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_aux_k(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.aux_k: -1 must be >= 0"},
                                {"TopkAuxKAboveDSae",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_aux_k(129);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.aux_k: 129 exceeds d_sae 128"},
                                {"TopkNanAuxCoefficient",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_aux_coefficient(kNan);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.aux_coefficient: nan is not "
                                 "finite"},
                                {"TopkNegativeAuxCoefficient",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_aux_coefficient(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.aux_coefficient: -1 out of range"},
                                {"TopkWithGhostGrads",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_ghost_grads(true);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.ghost_grads: true applies to "
                                 "architecture 'relu_l1' only"},
                                {"TopkWithGhostGradsLater",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_architecture("topk");
                                   s->mutable_sae()->set_ghost_grads_later(
                                       true);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.ghost_grads_later: true applies "
                                 "to architecture 'relu_l1' only"},
                                {"ReluL1WithK",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_k(16);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.k: applies to architecture 'topk' "
                                 "only, not 'relu_l1'"},
                                {"ReluL1WithAuxK",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_aux_k(16);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.aux_k: applies to architecture "
                                 "'topk' only"},
                                {"ReluL1WithAuxCoefficient",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_aux_coefficient(0.1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.aux_coefficient: applies to "
                                 "architecture 'topk' only"},
                                {"NegativeDeadWindow",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_sae()->set_dead_window_tokens(-5);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.sae.dead_window_tokens: -5 must be "
                                 ">= 0"},
                                {"NegativeAdaptiveWindow",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()
                                       ->set_adaptive_window_tokens(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.adaptive_window_tokens: -1 "
                                 "must be >= 0"},
                                {"InfiniteAdaptiveTolerance",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()
                                       ->set_adaptive_tolerance(kInf);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.adaptive_tolerance: inf is "
                                 "not finite"},
                                {"NegativeAdaptiveTolerance",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()
                                       ->set_adaptive_tolerance(-0.5);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.adaptive_tolerance: -0.5 out "
                                 "of range"},
                                {"TooManyReferenceCheckpoints",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()
                                       ->set_reference_checkpoints(17);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.reference_checkpoints: 17 "
                                 "out of range [0, 16]"},
                                {"NegativeLmEvalTokens",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_lm_eval_tokens(
                                       -1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.lm_eval_tokens: -1 must be "
                                 ">= 0"},
                                {"NegativeTokens",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_tokens_first(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.tokens_first: -1"},
                                {"NegativeEvalTokens",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_eval_tokens(-1);
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.eval_tokens: -1"},
                                {"BadDirection",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->mutable_schedule()->set_direction(
                                       static_cast<v1::Schedule::Direction>(9));
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.schedule.direction: 9"},
                                {"BadDevice",
                                 [](v1::JobSpec* s, const std::string&) {
                                   s->set_device("tpu");
                                 },
                                 absl::StatusCode::kInvalidArgument,
                                 "spec.device: 'tpu' is not supported"},
                                {"MissingTokenizer",
                                 [](v1::JobSpec* s, const std::string& root) {
                                   s->mutable_data()->set_tokenizer_path(
                                       root + "/tokenizer.json");
                                 },
                                 absl::StatusCode::kNotFound,
                                 "spec.data.tokenizer_path: '"},
                            }),
    [](const ::testing::TestParamInfo<ErrorCase>& info) {
      return info.param.name;
    });

// GPT-2 checkpoints (GPT2Config field names) are accepted, the architecture
// filled in from config.json, and the layer range read from n_layer.
// The coordinator's --max_artifact_bytes bounds the SAE a job may have.
TEST(JobValidatorTest, RefusesAnSaeBeyondTheArtifactLimit) {
  TempDir dir;
  v1::JobSpec spec = MakeSpec(dir.path(), {0});
  spec.mutable_sae()->set_d_sae(4096);  // 2 * 64 * 4096 floats: 2 MiB
  EXPECT_TRUE(JobValidator({}, int64_t{4} << 20).Validate(spec).ok());
  absl::StatusOr<v1::JobSpec> out =
      JobValidator({}, int64_t{1} << 20).Validate(spec);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(out.status().message(),
              HasSubstr("spec.sae.d_sae: an SAE of d_sae 4096 at hidden_size "
                        "64 is 2114816 bytes, more than the coordinator stores "
                        "(1048576 bytes"));
  EXPECT_EQ(JobValidator::SaeBytes(64, 4096),
            4 * (2 * 64 * 4096 + 4096 + 64) + 1024);
}

TEST(JobValidatorTest, AcceptsGpt2) {
  TempDir dir;
  for (const char* name : {"/gpt2-0", "/gpt2-10"}) {
    std::filesystem::create_directories(dir.path() + name);
    std::ofstream(dir.path() + name + "/config.json")
        << R"({"model_type": "gpt2", "n_embd": 64, "n_layer": 3,)"
        << R"( "n_head": 4, "n_positions": 256, "vocab_size": 512})";
    std::ofstream(dir.path() + name + "/model.safetensors", std::ios::binary)
        << format::SafetensorsWriter().Serialize();
  }
  v1::JobSpec spec = MakeSpec(dir.path(), {0, 10}, {2});
  spec.mutable_model()->mutable_checkpoints(0)->set_path(dir.path() +
                                                         "/gpt2-0");
  spec.mutable_model()->mutable_checkpoints(1)->set_path(dir.path() +
                                                         "/gpt2-10");
  absl::StatusOr<v1::JobSpec> out = JobValidator({}).Validate(spec);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->model().architecture(), "gpt2");

  spec.mutable_model()->set_architecture("gpt_neox");
  out = JobValidator({}).Validate(spec);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(),
              HasSubstr("architecture 'gpt2' differs from "
                        "spec.model.architecture 'gpt_neox'"));
}

TEST(JobValidatorTest, PathsMustLieUnderDataRoots) {
  TempDir dir;
  TempDir other;
  v1::JobSpec spec = MakeSpec(dir.path(), {0});
  // Accepted under its root, also when named with a trailing slash.
  EXPECT_TRUE(JobValidator({dir.path() + "/"}).Validate(spec).ok());

  absl::StatusOr<v1::JobSpec> out = JobValidator({other.path()}).Validate(spec);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(),
              HasSubstr("spec.model.checkpoints[0].path: '" + dir.path() +
                        "/ckpt-0' is outside the data roots"));

  // ".." cannot climb out of a root; a sibling with a common prefix is not
  // inside it either.
  v1::JobSpec escape = spec;
  escape.mutable_data()->set_tokens_path(dir.path() + "/ckpt-0/../../x.bin");
  out = JobValidator({dir.path() + "/ckpt-0"}).Validate(escape);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  WriteCheckpoint(dir.path() + "/ckpt-00");
  v1::JobSpec sibling = spec;
  sibling.mutable_model()->mutable_checkpoints(0)->set_path(dir.path() +
                                                            "/ckpt-00");
  out = JobValidator({dir.path() + "/ckpt-0"}).Validate(sibling);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("outside the data roots"));
}

// --- follow mode ---

// A following job over `root`/run with no checkpoint yet.
v1::JobSpec FollowingSpec(const std::string& root) {
  v1::JobSpec spec = MakeSpec(root, {0});
  spec.mutable_model()->clear_checkpoints();
  std::filesystem::create_directories(root + "/run");
  spec.mutable_model()->mutable_follow()->set_dir(root + "/run");
  return spec;
}

TEST(JobValidatorFollowTest, DefaultsAndAnEmptyChainAreAccepted) {
  TempDir dir;
  absl::StatusOr<v1::JobSpec> out =
      JobValidator({}).Validate(FollowingSpec(dir.path()));
  ASSERT_TRUE(out.ok()) << out.status();
  const v1::FollowSpec& follow = out->model().follow();
  EXPECT_EQ(follow.pattern(), "step-{step}");
  EXPECT_DOUBLE_EQ(follow.poll_interval_s(), 10);
  EXPECT_DOUBLE_EQ(follow.stall_alert_s(), 3600);
  EXPECT_DOUBLE_EQ(follow.lag_alert_s(), 1800);
  // Model settings wait for the first checkpoint.
  EXPECT_EQ(out->sae().d_sae(), 0);
  // Without follow an empty chain is still refused.
  v1::JobSpec plain = MakeSpec(dir.path(), {0});
  plain.mutable_model()->clear_checkpoints();
  EXPECT_THAT(JobValidator({}).Validate(plain).status().message(),
              HasSubstr("model.follow"));
}

TEST(JobValidatorFollowTest, BadFollowSettingsNameTheField) {
  TempDir dir;
  const auto refused = [&](const std::function<void(v1::JobSpec*)>& change) {
    v1::JobSpec spec = FollowingSpec(dir.path());
    change(&spec);
    return std::string(JobValidator({}).Validate(spec).status().message());
  };
  auto follow = [](v1::JobSpec* s) {
    return s->mutable_model()->mutable_follow();
  };
  EXPECT_THAT(
      refused([&](v1::JobSpec* s) { follow(s)->set_pattern("a/{step}"); }),
      HasSubstr("spec.model.follow.pattern"));
  EXPECT_THAT(refused([&](v1::JobSpec* s) { follow(s)->set_dir("/nope/x"); }),
              HasSubstr("spec.model.follow.dir"));
  EXPECT_THAT(
      refused([&](v1::JobSpec* s) { follow(s)->set_poll_interval_s(0.01); }),
      HasSubstr("spec.model.follow.poll_interval_s"));
  EXPECT_THAT(
      refused([&](v1::JobSpec* s) { follow(s)->set_poll_interval_s(1e9); }),
      HasSubstr("spec.model.follow.poll_interval_s"));
  EXPECT_THAT(refused([&](v1::JobSpec* s) { follow(s)->set_until_step(-1); }),
              HasSubstr("spec.model.follow.until_step"));
  EXPECT_THAT(
      refused([&](v1::JobSpec* s) { follow(s)->set_marker_file("../DONE"); }),
      HasSubstr("spec.model.follow.marker_file"));
  EXPECT_THAT(
      refused([&](v1::JobSpec* s) { follow(s)->set_marker_file("DONE\n"); }),
      HasSubstr("spec.model.follow.marker_file: 'DONE\\n'"));
  // A NUL byte would cut the directory's name short.
  EXPECT_THAT(refused([&](v1::JobSpec* s) {
                follow(s)->set_dir(follow(s)->dir() + std::string("\0x", 2));
              }),
              HasSubstr("spec.model.follow.dir: a NUL byte or other control "
                        "character at byte"));
  EXPECT_THAT(
      refused([&](v1::JobSpec* s) { follow(s)->set_analyse_every(-2); }),
      HasSubstr("spec.model.follow.analyse_every"));
  EXPECT_THAT(refused([&](v1::JobSpec* s) {
                follow(s)->set_analyse_every(2);
                s->mutable_analysis()->set_analysis_tokens(0);
              }),
              HasSubstr("needs the analysis pass"));
  EXPECT_THAT(refused([&](v1::JobSpec* s) { follow(s)->set_lag_alert_s(-1); }),
              HasSubstr("spec.model.follow.lag_alert_s"));
  EXPECT_THAT(refused([&](v1::JobSpec* s) {
                s->mutable_schedule()->set_direction(v1::Schedule::BACKWARD);
              }),
              HasSubstr("spec.schedule.direction: BACKWARD"));
  // until_step must leave something to follow after a listed checkpoint.
  EXPECT_THAT(refused([&](v1::JobSpec* s) {
                *s = MakeSpec(dir.path(), {0, 10});
                follow(s)->set_until_step(10);
              }),
              HasSubstr("not after the last listed checkpoint"));
}

TEST(JobValidatorFollowTest, TheFirstCheckpointFillsTheModelSettings) {
  TempDir dir;
  JobValidator validator({dir.path()});
  absl::StatusOr<v1::JobSpec> spec =
      validator.Validate(FollowingSpec(dir.path()));
  ASSERT_TRUE(spec.ok()) << spec.status();
  const std::string first = dir.path() + "/run/step-10";
  WriteCheckpoint(first);
  absl::StatusOr<v1::JobSpec> taken =
      validator.ValidateNewCheckpoint(*spec, 10, first);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->model().architecture(), "gpt_neox");
  EXPECT_EQ(taken->sae().d_sae(), spec->sae().expansion_factor() * 64);
  EXPECT_GT(taken->sae().d_sae(), 0);
  EXPECT_GT(taken->min_worker_memory_bytes(), 0);
  ASSERT_EQ(taken->model().checkpoints_size(), 1);
  // A later one is placed by step; an earlier one before it.
  const std::string later = dir.path() + "/run/step-30";
  WriteCheckpoint(later);
  absl::StatusOr<v1::JobSpec> two =
      validator.ValidateNewCheckpoint(*taken, 30, later);
  ASSERT_TRUE(two.ok()) << two.status();
  const std::string early = dir.path() + "/run/step-5";
  WriteCheckpoint(early);
  absl::StatusOr<v1::JobSpec> three =
      validator.ValidateNewCheckpoint(*two, 5, early);
  ASSERT_TRUE(three.ok()) << three.status();
  std::vector<int64_t> steps;
  for (const auto& c : three->model().checkpoints()) steps.push_back(c.step());
  EXPECT_EQ(steps, (std::vector<int64_t>{5, 10, 30}));
  // Another shape, a missing directory, a path outside the roots.
  const std::string wide = dir.path() + "/run/step-40";
  WriteCheckpoint(wide, /*hidden_size=*/32);
  EXPECT_THAT(
      validator.ValidateNewCheckpoint(*two, 40, wide).status().message(),
      HasSubstr("checkpoint.path: hidden_size 32 differs"));
  EXPECT_EQ(validator.ValidateNewCheckpoint(*two, 50, dir.path() + "/run/x")
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(
      validator.ValidateNewCheckpoint(*two, 50, "/etc").status().message(),
      HasSubstr("outside the data roots"));
  EXPECT_THAT(
      validator.ValidateNewCheckpoint(*two, -1, later).status().message(),
      HasSubstr("checkpoint.step"));
  // Weights whose header promises more than the file holds.
  const std::string broken = dir.path() + "/run/step-60";
  WriteCheckpoint(broken);
  std::ofstream(broken + "/model.safetensors",
                std::ios::binary | std::ios::trunc)
      << SafetensorsOf(R"({"w":{"dtype":"F32","shape":[1024],)"
                       R"("data_offsets":[0,4096]}})",
                       std::string(64, '\0'));
  const absl::Status refused =
      validator.ValidateNewCheckpoint(*two, 60, broken).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(refused.message(), HasSubstr("checkpoint.path: "));
  EXPECT_THAT(refused.message(), HasSubstr("model.safetensors"));
  // A hook beyond the first checkpoint's layers is refused when it comes.
  v1::JobSpec deep = *spec;
  deep.mutable_hooks(0)->set_layer(9);
  EXPECT_THAT(
      validator.ValidateNewCheckpoint(deep, 10, first).status().message(),
      HasSubstr("spec.hooks[0].layer: 9 out of range"));
}

}  // namespace
}  // namespace saetrack::server
