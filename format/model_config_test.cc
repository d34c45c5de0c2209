#include "format/model_config.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::format {
namespace {

using ::testing::HasSubstr;

// The config.json of EleutherAI/pythia-70m-deduped (step checkpoints).
constexpr char kPythia70m[] = R"({
  "architectures": ["GPTNeoXForCausalLM"],
  "bos_token_id": 0,
  "eos_token_id": 0,
  "hidden_act": "gelu",
  "hidden_size": 512,
  "initializer_range": 0.02,
  "intermediate_size": 2048,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 2048,
  "model_type": "gpt_neox",
  "num_attention_heads": 8,
  "num_hidden_layers": 6,
  "rotary_emb_base": 10000,
  "rotary_pct": 0.25,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.24.0",
  "use_cache": true,
  "use_parallel_residual": true,
  "vocab_size": 50304
})";

std::string Replace(absl::string_view from, absl::string_view to) {
  return absl::StrReplaceAll(kPythia70m, {{from, to}});
}

absl::Status ParseError(const std::string& text) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text, "config.json");
  EXPECT_FALSE(config.ok());
  return config.status();
}

TEST(ModelConfigTest, ParsesPythia) {
  absl::StatusOr<ModelConfig> config =
      ParseModelConfig(kPythia70m, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "gpt_neox");
  EXPECT_EQ(config->vocab_size, 50304);
  EXPECT_EQ(config->hidden_size, 512);
  EXPECT_EQ(config->num_hidden_layers, 6);
  EXPECT_EQ(config->num_attention_heads, 8);
  EXPECT_EQ(config->intermediate_size, 2048);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(config->rotary_pct, 0.25);
  EXPECT_EQ(config->rotary_emb_base, 10000);
  EXPECT_DOUBLE_EQ(config->layer_norm_eps, 1e-5);
  EXPECT_TRUE(config->use_parallel_residual);
  EXPECT_EQ(config->hidden_act, "gelu");
  EXPECT_FALSE(config->tie_word_embeddings);
}

TEST(ModelConfigTest, AcceptsNewerFieldNames) {
  std::string text = Replace("\"rotary_pct\"", "\"partial_rotary_factor\"");
  text = absl::StrReplaceAll(
      text, {{"\"rotary_emb_base\": 10000", "\"rope_theta\": 10000.0"},
             {"\"rotary_pct\": 0.25", ""}});
  text = absl::StrReplaceAll(text, {{"0.25", "0.5"}});
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rotary_pct, 0.5);
  EXPECT_EQ(config->rotary_emb_base, 10000);
}

TEST(ModelConfigTest, ArchitectureFallbackWithoutModelType) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(
      Replace("\"model_type\": \"gpt_neox\",", ""), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "gpt_neox");
}

TEST(ModelConfigTest, UnknownModelTypeNamed) {
  const absl::Status status = ParseError(Replace("\"gpt_neox\"", "\"llama\""));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("config.json: field \"model_type\""));
  EXPECT_THAT(status.message(), HasSubstr("\"llama\""));
}

TEST(ModelConfigTest, MissingFieldNamed) {
  const absl::Status status =
      ParseError(Replace("\"vocab_size\": 50304", "\"unused\": 1"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("config.json: field \"vocab_size\" is missing"));
}

TEST(ModelConfigTest, InconsistentHeadsNamed) {
  const absl::Status status = ParseError(
      Replace("\"num_attention_heads\": 8", "\"num_attention_heads\": 7"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("field \"hidden_size\""));
  EXPECT_THAT(status.message(),
              HasSubstr("not divisible by num_attention_heads (7)"));
}

TEST(ModelConfigTest, NonPositiveAndWrongTypesNamed) {
  EXPECT_THAT(ParseError(Replace("\"num_hidden_layers\": 6",
                                 "\"num_hidden_layers\": 0"))
                  .message(),
              HasSubstr("field \"num_hidden_layers\" (at byte"));
  const std::string negative =
      Replace("\"hidden_size\": 512", "\"hidden_size\": -512");
  EXPECT_THAT(
      std::string(ParseError(negative).message()),
      HasSubstr(absl::StrCat("\"hidden_size\" (at byte ", negative.find("-512"),
                             ") must be a positive integer, found -512")));
  EXPECT_THAT(ParseError(Replace("\"intermediate_size\": 2048",
                                 "\"intermediate_size\": 20.5"))
                  .message(),
              HasSubstr("\"intermediate_size\" (at byte"));
  EXPECT_THAT(ParseError(Replace("\"use_parallel_residual\": true",
                                 "\"use_parallel_residual\": \"yes\""))
                  .message(),
              HasSubstr("\"use_parallel_residual\" (at byte"));
  EXPECT_THAT(
      ParseError(Replace("\"layer_norm_eps\": 1e-05", "\"layer_norm_eps\": 0"))
          .message(),
      HasSubstr("\"layer_norm_eps\""));
  EXPECT_THAT(ParseError(Replace("\"rotary_pct\": 0.25", "\"rotary_pct\": 1.5"))
                  .message(),
              HasSubstr("\"rotary_pct\""));
  // head size 64 * 0.3 = 19.2 -> 19 rotary dims, odd.
  EXPECT_THAT(ParseError(Replace("\"rotary_pct\": 0.25", "\"rotary_pct\": 0.3"))
                  .message(),
              HasSubstr("odd number of rotary dimensions"));
  EXPECT_THAT(ParseError(Replace("\"gelu\"", "\"swish\"")).message(),
              HasSubstr("\"hidden_act\""));
}

TEST(ModelConfigTest, SyntaxErrorNamesFileAndOffset) {
  const absl::Status status = ParseError("{\"hidden_size\" 64}");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("config.json: invalid JSON at byte 15"));
  EXPECT_THAT(ParseError("[1]").message(), HasSubstr("JSON object"));
}

// The config.json of openai-community/gpt2 (as on the Hugging Face hub).
constexpr char kGpt2[] = R"({
  "activation_function": "gelu_new",
  "architectures": ["GPT2LMHeadModel"],
  "attn_pdrop": 0.1,
  "bos_token_id": 50256,
  "embd_pdrop": 0.1,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2",
  "n_ctx": 1024,
  "n_embd": 768,
  "n_head": 12,
  "n_layer": 12,
  "n_positions": 1024,
  "resid_pdrop": 0.1,
  "summary_activation": null,
  "summary_first_dropout": 0.1,
  "summary_proj_to_labels": true,
  "summary_type": "cls_index",
  "summary_use_proj": true,
  "vocab_size": 50257
})";

std::string ReplaceGpt2(absl::string_view from, absl::string_view to) {
  return absl::StrReplaceAll(kGpt2, {{from, to}});
}

TEST(ModelConfigGpt2Test, ParsesGpt2WithDefaults) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(kGpt2, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "gpt2");
  EXPECT_EQ(config->vocab_size, 50257);
  EXPECT_EQ(config->hidden_size, 768);
  EXPECT_EQ(config->num_hidden_layers, 12);
  EXPECT_EQ(config->num_attention_heads, 12);
  EXPECT_EQ(config->intermediate_size, 4 * 768);  // n_inner absent
  EXPECT_EQ(config->max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(config->layer_norm_eps, 1e-5);
  EXPECT_EQ(config->hidden_act, "gelu_new");
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_FALSE(config->use_parallel_residual);
  EXPECT_DOUBLE_EQ(config->rotary_pct, 0);
}

TEST(ModelConfigGpt2Test, ExplicitAndNullFields) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(
      ReplaceGpt2("\"n_ctx\": 1024,",
                  "\"n_inner\": null, \"tie_word_embeddings\": false,"),
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->intermediate_size, 3072);
  EXPECT_FALSE(config->tie_word_embeddings);

  config = ParseModelConfig(
      absl::StrReplaceAll(kGpt2,
                          {{"\"n_ctx\": 1024,", "\"n_inner\": 100,"},
                           {"\"n_positions\": 1024", "\"n_positions\": 64"}}),
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->intermediate_size, 100);
  EXPECT_EQ(config->max_position_embeddings, 64);
}

TEST(ModelConfigGpt2Test, ArchitectureFallbackWithoutModelType) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(
      ReplaceGpt2("\"model_type\": \"gpt2\",", ""), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "gpt2");
  const absl::Status status = ParseError(
      absl::StrReplaceAll(kGpt2, {{"\"model_type\": \"gpt2\",", ""},
                                  {"GPT2LMHeadModel", "GPTJForCausalLM"}}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("field \"architectures\""));
  EXPECT_THAT(status.message(), HasSubstr("\"GPT2LMHeadModel\""));
}

TEST(ModelConfigGpt2Test, ErrorsNameGpt2Fields) {
  EXPECT_THAT(
      ParseError(ReplaceGpt2("\"n_embd\": 768", "\"width\": 768")).message(),
      HasSubstr("config.json: field \"n_embd\" is missing"));
  EXPECT_THAT(
      ParseError(ReplaceGpt2("\"n_layer\": 12", "\"n_layer\": 0")).message(),
      HasSubstr("field \"n_layer\" (at byte"));
  EXPECT_THAT(
      ParseError(ReplaceGpt2("\"n_head\": 12", "\"n_head\": 7")).message(),
      HasSubstr("field \"n_embd\" (at byte"));
  EXPECT_THAT(
      ParseError(ReplaceGpt2("\"n_head\": 12", "\"n_head\": 7")).message(),
      HasSubstr("not divisible by n_head (7)"));
  EXPECT_THAT(ParseError(ReplaceGpt2("\"n_ctx\": 1024,", "\"n_inner\": 1.5,"))
                  .message(),
              HasSubstr("field \"n_inner\" (at byte"));
  EXPECT_THAT(ParseError(ReplaceGpt2("\"n_positions\": 1024",
                                     "\"n_positions\": \"long\""))
                  .message(),
              HasSubstr("field \"n_positions\" (at byte"));
  EXPECT_THAT(ParseError(ReplaceGpt2("\"layer_norm_epsilon\": 1e-05",
                                     "\"layer_norm_epsilon\": -1"))
                  .message(),
              HasSubstr("field \"layer_norm_epsilon\""));
  EXPECT_THAT(ParseError(ReplaceGpt2("\"gelu_new\"", "\"swish\"")).message(),
              HasSubstr("field \"activation_function\" (at byte"));
  EXPECT_THAT(ParseError(ReplaceGpt2("\"n_ctx\": 1024,",
                                     "\"scale_attn_weights\": false,"))
                  .message(),
              HasSubstr("field \"scale_attn_weights\""));
  EXPECT_THAT(ParseError(ReplaceGpt2("\"n_ctx\": 1024,",
                                     "\"scale_attn_by_inverse_layer_idx\": "
                                     "true,"))
                  .message(),
              HasSubstr("field \"scale_attn_by_inverse_layer_idx\""));
  EXPECT_THAT(
      ParseError(ReplaceGpt2("\"n_ctx\": 1024,", "\"tie_word_embeddings\": 1,"))
          .message(),
      HasSubstr("field \"tie_word_embeddings\""));
}

TEST(ModelConfigTest, ReadsRopeParametersObject) {
  const std::string text =
      absl::StrReplaceAll(kPythia70m, {{"\"rotary_emb_base\": 10000,", ""},
                                       {"\"rotary_pct\": 0.25,",
                                        "\"rope_parameters\": {\"rope_type\": "
                                        "\"default\", \"rope_theta\": 500.0, "
                                        "\"partial_rotary_factor\": 1.0},"}});
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rotary_pct, 1.0);
  EXPECT_EQ(config->rotary_emb_base, 500);
}

class LoadModelConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/model_config_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void Write(const std::string& name, const std::string& contents) {
    std::ofstream(dir_ + "/" + name) << contents;
  }
  std::string dir_;
};

TEST_F(LoadModelConfigTest, MissingConfigIsNotFound) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr(dir_ + "/config.json"));
}

TEST_F(LoadModelConfigTest, MissingWeightsIsNotFound) {
  Write("config.json", kPythia70m);
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(),
              HasSubstr(dir_ + "/model.safetensors"));
}

TEST_F(LoadModelConfigTest, LoadsWithSingleOrShardedWeights) {
  Write("config.json", kPythia70m);
  Write("model.safetensors.index.json", "{}");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 512);
}

TEST_F(LoadModelConfigTest, BadConfigNamesPath) {
  Write("config.json", "{\"model_type\": 1}");
  Write("model.safetensors", "");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(),
              HasSubstr(dir_ + "/config.json: field \"model_type\""));
}

}  // namespace
}  // namespace saetrack::format
