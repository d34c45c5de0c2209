#include "engine/lm/lm_trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/lm/gpt_neox.h"
#include "format/mapped_file.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "format/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class LmTrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/lm_trainer_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    corpus_ = dir_ + "/corpus.txt";
    std::string text;
    while (text.size() < 20'000)
      text += "To be, or not to be, that is the question.\n";
    std::ofstream(corpus_) << text;
  }

  TinyLmOptions Options(const std::string& out) {
    TinyLmOptions options;
    options.corpus_path = corpus_;
    options.out_dir = dir_ + "/" + out;
    options.checkpoint_steps = {0, 4, 16};
    options.d_model = 16;
    options.layers = 2;
    options.heads = 2;
    options.context_length = 16;
    options.batch_size = 8;
    options.lr = 1e-2;
    options.threads = 1;  // ctest runs tests two at a time on two cores
    return options;
  }

  static std::string Read(const std::string& path) {
    absl::StatusOr<std::string> text = format::ReadFileToString(path);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? *text : "";
  }

  std::string dir_;
  std::string corpus_;
};

TEST_F(LmTrainerTest, WritesHuggingFaceCheckpoints) {
  std::vector<std::string> lines;
  absl::StatusOr<TinyLmResult> result = TrainTinyLm(
      Options("out"), [&](const std::string& line) { lines.push_back(line); });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->cached);
  ASSERT_EQ(result->losses.size(), 3u);
  EXPECT_EQ(result->losses[0].first, 0);
  EXPECT_EQ(result->losses[2].first, 16);
  // The initial loss of a byte-level model is near ln(256) = 5.55, and it
  // learns something in 16 steps.
  EXPECT_NEAR(result->losses[0].second, 5.55, 0.2);
  EXPECT_LT(result->losses[2].second, result->losses[0].second - 1.0);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[1], ::testing::MatchesRegex(
                            "step 4 held-out loss [0-9]+\\.[0-9]{4} lr .*"));
  // The split a job makes: 90% to train on, the rest held out.
  EXPECT_EQ(result->vocab_size, 256u);
  EXPECT_EQ(result->train_tokens + result->heldout_tokens,
            static_cast<int64_t>(Read(corpus_).size()));
  EXPECT_NEAR(static_cast<double>(result->heldout_tokens) /
                  static_cast<double>(Read(corpus_).size()),
              0.1, 1e-3);

  // tokens.u16: every corpus byte as a little-endian uint16.
  const std::string corpus = Read(corpus_);
  const std::string tokens = Read(dir_ + "/out/tokens.u16");
  ASSERT_EQ(tokens.size(), 2 * corpus.size());
  EXPECT_EQ(tokens[0], corpus[0]);
  EXPECT_EQ(tokens[1], '\0');
  EXPECT_EQ(tokens[2 * 100], corpus[100]);

  // tokenizer.json: the byte-level vocabulary, id = byte.
  absl::StatusOr<format::Tokenizer> tokenizer =
      format::Tokenizer::Load(dir_ + "/out/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::vector<uint32_t>> ids =
      tokenizer->Encode(corpus.substr(0, 64));
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 64u);
  for (size_t i = 0; i < ids->size(); ++i) {
    EXPECT_EQ((*ids)[i], static_cast<unsigned char>(corpus[i])) << i;
  }

  for (int step : {0, 4, 16}) {
    const std::string checkpoint =
        dir_ + "/out/checkpoints/step-" + std::to_string(step);
    absl::StatusOr<format::ModelConfig> config =
        format::LoadModelConfig(checkpoint);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->architecture, "gpt_neox");
    EXPECT_EQ(config->vocab_size, 256);
    EXPECT_EQ(config->hidden_size, 16);
    EXPECT_EQ(config->intermediate_size, 64);
    EXPECT_EQ(config->max_position_embeddings, 16);
    EXPECT_TRUE(config->use_parallel_residual);
    const std::string config_text = Read(checkpoint + "/config.json");
    EXPECT_THAT(config_text,
                HasSubstr("\"architectures\": [\"GPTNeoXForCausalLM\"]"));
    EXPECT_THAT(config_text, HasSubstr("\"torch_dtype\": \"float32\""));
    EXPECT_THAT(config_text, HasSubstr("\"bos_token_id\": 0"));
    absl::StatusOr<format::SafetensorsCheckpoint> weights =
        format::SafetensorsCheckpoint::Open(checkpoint);
    ASSERT_TRUE(weights.ok()) << weights.status();
    EXPECT_EQ(weights->TensorNames().size(), 1 + 2 * 12 + 2 + 1u);
    EXPECT_TRUE(
        weights->Get("gpt_neox.layers.1.attention.query_key_value.weight")
            .ok());
    EXPECT_TRUE(weights->Get("embed_out.weight").ok());
    EXPECT_TRUE(GptNeoxModel::Load(checkpoint, torch::kCPU).ok());
  }
}

// Pythia's schedule shape: linear warm-up, then cosine decay to 10%.
TEST_F(LmTrainerTest, WarmsUpThenDecaysToATenthOfThePeak) {
  TinyLmOptions options = Options("schedule");
  options.warmup_fraction = 0.25;  // 4 of 16 steps
  options.checkpoint_steps = {1, 4, 16};
  std::vector<std::string> lines;
  ASSERT_TRUE(TrainTinyLm(options, [&](const std::string& line) {
                lines.push_back(line);
              }).ok());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[0], ::testing::EndsWith(" lr 0.0025"));  // 1/4 of 1e-2
  EXPECT_THAT(lines[1], ::testing::EndsWith(" lr 0.01"));
  EXPECT_THAT(lines[2], ::testing::EndsWith(" lr 0.001"));
  options.warmup_fraction = 1.5;
  absl::Status status = TrainTinyLm(options, nullptr).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--warmup_fraction"));
}

// With a BPE tokenizer.json: its vocabulary sizes the model, tokens.u16
// holds its ids, and the tokenizer travels with the checkpoints.
TEST_F(LmTrainerTest, TrainsWithABpeTokenizer) {
  format::BpeTrainOptions bpe;
  bpe.vocab_size = 270;
  absl::StatusOr<std::string> json =
      format::TrainByteLevelBpe(Read(corpus_), bpe);
  ASSERT_TRUE(json.ok()) << json.status();
  const std::string tokenizer_path = dir_ + "/bpe.json";
  ASSERT_TRUE(format::WriteFileAtomically(tokenizer_path, *json).ok());
  TinyLmOptions options = Options("bpe");
  options.tokenizer_path = tokenizer_path;
  absl::StatusOr<TinyLmResult> result = TrainTinyLm(options, nullptr);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->vocab_size, 270u);
  // The initial loss is near ln(270) = 5.60.
  EXPECT_NEAR(result->losses[0].second, 5.60, 0.2);

  absl::StatusOr<format::Tokenizer> tokenizer =
      format::Tokenizer::FromJson(*json, "bpe");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::vector<uint32_t>> ids = tokenizer->Encode(Read(corpus_));
  ASSERT_TRUE(ids.ok()) << ids.status();
  const std::string tokens = Read(dir_ + "/bpe/tokens.u16");
  ASSERT_EQ(tokens.size(), 2 * ids->size());
  for (size_t i : {size_t{0}, size_t{7}, ids->size() - 1}) {
    const uint32_t id = static_cast<unsigned char>(tokens[2 * i]) |
                        static_cast<unsigned char>(tokens[2 * i + 1]) << 8;
    EXPECT_EQ(id, (*ids)[i]) << i;
  }
  EXPECT_GT(*std::max_element(ids->begin(), ids->end()), 255u);
  EXPECT_EQ(Read(dir_ + "/bpe/tokenizer.json"), *json);
  absl::StatusOr<format::ModelConfig> config =
      format::LoadModelConfig(dir_ + "/bpe/checkpoints/step-16");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 270);
  EXPECT_TRUE(
      GptNeoxModel::Load(dir_ + "/bpe/checkpoints/step-16", torch::kCPU).ok());

  // A missing tokenizer is named.
  options.tokenizer_path = dir_ + "/missing.json";
  absl::Status status = TrainTinyLm(options, nullptr).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("missing.json"));
}

TEST(ByteLevelTokenizerTest, EveryByteIsItsOwnIdAndDecodesBack) {
  absl::StatusOr<format::Tokenizer> tokenizer =
      format::Tokenizer::FromJson(ByteLevelTokenizerJson(), "byte-level");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // Spaces, newlines, punctuation, control bytes and UTF-8 ("é").
  const std::string text = "Romeo:\n  O, she doth teach\t\x01 caf\xc3\xa9!";
  absl::StatusOr<std::vector<uint32_t>> ids = tokenizer->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<uint32_t> bytes;
  for (const char c : text) bytes.push_back(static_cast<unsigned char>(c));
  EXPECT_EQ(*ids, bytes);
  absl::StatusOr<std::string> decoded = tokenizer->Decode(*ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, text);
  // All 256 ids decode to their byte.
  for (uint32_t id = 0; id < 256; ++id) {
    absl::StatusOr<std::string> one = tokenizer->Decode({id});
    ASSERT_TRUE(one.ok()) << id << ": " << one.status();
    EXPECT_EQ(*one, std::string(1, static_cast<char>(id))) << id;
  }
}

TEST_F(LmTrainerTest, DeterministicAndCached) {
  ASSERT_TRUE(TrainTinyLm(Options("a"), nullptr).ok());
  ASSERT_TRUE(TrainTinyLm(Options("b"), nullptr).ok());
  const std::string weights = "/checkpoints/step-16/model.safetensors";
  EXPECT_EQ(Read(dir_ + "/a" + weights), Read(dir_ + "/b" + weights));

  // Same arguments again: nothing is trained.
  std::vector<std::string> lines;
  absl::StatusOr<TinyLmResult> again = TrainTinyLm(
      Options("a"), [&](const std::string& line) { lines.push_back(line); });
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->cached);
  EXPECT_TRUE(lines.empty());
  // The losses come back from losses.tsv.
  absl::StatusOr<TinyLmResult> first = TrainTinyLm(Options("b"), nullptr);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(again->losses.size(), 3u);
  EXPECT_EQ(again->losses[2].first, 16);
  EXPECT_NEAR(again->losses[2].second, first->losses[2].second, 1e-6);

  // Another seed is another model, trained afresh into the same directory.
  TinyLmOptions other = Options("a");
  other.seed = 2;
  absl::StatusOr<TinyLmResult> retrained = TrainTinyLm(other, nullptr);
  ASSERT_TRUE(retrained.ok());
  EXPECT_FALSE(retrained->cached);
  EXPECT_NE(Read(dir_ + "/a" + weights), Read(dir_ + "/b" + weights));

  // A missing checkpoint invalidates the cache too.
  ASSERT_EQ(std::remove((dir_ + "/a" + weights).c_str()), 0);
  retrained = TrainTinyLm(other, nullptr);
  ASSERT_TRUE(retrained.ok());
  EXPECT_FALSE(retrained->cached);
}

// A run followed live: checkpoints at least checkpoint_interval_s apart,
// each with the marker once its files are written.
TEST_F(LmTrainerTest, PacesCheckpointsAndMarksThemComplete) {
  TinyLmOptions options = Options("paced");
  options.checkpoint_interval_s = 0.3;
  options.checkpoint_marker = "COMPLETE";
  std::vector<std::chrono::steady_clock::time_point> logged;
  std::vector<bool> marked;
  ASSERT_TRUE(TrainTinyLm(options, [&](const std::string& line) {
                logged.push_back(std::chrono::steady_clock::now());
                const int step = std::stoi(line.substr(5));
                marked.push_back(std::filesystem::exists(
                    options.out_dir + "/checkpoints/step-" +
                    std::to_string(step) + "/COMPLETE"));
              }).ok());
  ASSERT_EQ(logged.size(), 3u);
  for (size_t i = 1; i < logged.size(); ++i) {
    EXPECT_GE(logged[i] - logged[i - 1], std::chrono::milliseconds(290)) << i;
  }
  // Each checkpoint's marker was there when its line was logged.
  EXPECT_THAT(marked, ElementsAre(true, true, true));
  for (int step : {0, 4, 16}) {
    const std::string dir =
        options.out_dir + "/checkpoints/step-" + std::to_string(step);
    EXPECT_EQ(std::filesystem::file_size(dir + "/COMPLETE"), 0u);
    EXPECT_TRUE(GptNeoxModel::Load(dir, torch::kCPU).ok());
  }

  // The pace is not part of the cache key; the marker is part of what a
  // cached run must hold.
  options.checkpoint_interval_s = 0;
  absl::StatusOr<TinyLmResult> again = TrainTinyLm(options, nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->cached);
  std::filesystem::remove(options.out_dir + "/checkpoints/step-4/COMPLETE");
  again = TrainTinyLm(options, nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->cached);
  EXPECT_TRUE(std::filesystem::exists(options.out_dir +
                                      "/checkpoints/step-4/COMPLETE"));
}

TEST_F(LmTrainerTest, InvalidOptionsNameTheFlag) {
  TinyLmOptions options = Options("x");
  options.heads = 3;
  absl::Status status = TrainTinyLm(options, nullptr).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--d_model"));

  options = Options("x");
  options.context_length = 100'000;
  status = TrainTinyLm(options, nullptr).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("2 * (--ctx + 1)"));

  options = Options("x");
  options.corpus_path = dir_ + "/missing.txt";
  EXPECT_EQ(TrainTinyLm(options, nullptr).status().code(),
            absl::StatusCode::kNotFound);

  options = Options("x");
  options.checkpoint_interval_s = -1;
  status = TrainTinyLm(options, nullptr).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("--pace_s"));

  for (const char* marker : {"a/b", "..", "config.json"}) {
    options = Options("x");
    options.checkpoint_marker = marker;
    status = TrainTinyLm(options, nullptr).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << marker;
    EXPECT_THAT(std::string(status.message()), HasSubstr("--marker")) << marker;
  }

  options = Options("x");
  options.checkpoint_steps = {};
  EXPECT_EQ(TrainTinyLm(options, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GptNeoxConfigJsonTest, ParsesBack) {
  format::ModelConfig config;
  config.architecture = "gpt_neox";
  config.vocab_size = 256;
  config.hidden_size = 64;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.intermediate_size = 256;
  config.max_position_embeddings = 64;
  absl::StatusOr<format::ModelConfig> parsed =
      format::ParseModelConfig(GptNeoxConfigJson(config), "config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->hidden_size, 64);
  EXPECT_EQ(parsed->num_attention_heads, 4);
  EXPECT_DOUBLE_EQ(parsed->rotary_pct, 0.25);
  EXPECT_DOUBLE_EQ(parsed->layer_norm_eps, 1e-5);
}

}  // namespace
}  // namespace saetrack::engine
