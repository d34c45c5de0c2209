#include "format/saelens.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "format/json.h"
#include "format/safetensors.h"

namespace saetrack::format {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kDIn = 4;
constexpr int64_t kDSae = 6;

SaelensConfig ReluConfig() {
  SaelensConfig config;
  config.architecture = "relu_l1";
  config.d_in = kDIn;
  config.d_sae = kDSae;
  config.model_name = "demo-data/lm/step512";
  config.hook_name = HookName(1, "resid_pre");
  config.hook_layer = 1;
  config.checkpoint_step = 512;
  config.job_id = "job-000001";
  return config;
}

SaelensConfig TopKConfig() {
  SaelensConfig config = ReluConfig();
  config.architecture = "topk";
  config.k = 3;
  config.hook_name = HookName(0, "mlp_out");
  config.hook_layer = 0;
  config.job_id = "";
  return config;
}

void ExpectSameConfig(const SaelensConfig& actual,
                      const SaelensConfig& expected) {
  EXPECT_EQ(actual.architecture, expected.architecture);
  EXPECT_EQ(actual.d_in, expected.d_in);
  EXPECT_EQ(actual.d_sae, expected.d_sae);
  EXPECT_EQ(actual.k, expected.k);
  EXPECT_EQ(actual.dtype, expected.dtype);
  EXPECT_EQ(actual.model_name, expected.model_name);
  EXPECT_EQ(actual.hook_name, expected.hook_name);
  EXPECT_EQ(actual.hook_layer, expected.hook_layer);
  EXPECT_EQ(actual.checkpoint_step, expected.checkpoint_step);
  EXPECT_EQ(actual.job_id, expected.job_id);
}

// An SAE in SAELens layout with distinct values in every element; `skip`
// leaves that tensor out, `shapes` overrides shapes by name.
std::string Weights(int64_t d_in, int64_t d_sae, const std::string& skip = "",
                    Dtype b_dec_dtype = Dtype::kF32) {
  SafetensorsWriter writer;
  float next = 0.25f;
  const auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    if (name == skip) return;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> values(static_cast<size_t>(n));
    for (float& v : values) {
      v = next;
      next = next * -1.5f + 0.125f;
      if (next > 1e6f || next < -1e6f) next = 0.375f;
    }
    if (name == "b_dec" && b_dec_dtype == Dtype::kF16) {
      std::string bytes(static_cast<size_t>(2 * n), '\0');
      ASSERT_TRUE(writer.Add(name, Dtype::kF16, shape, bytes).ok());
      return;
    }
    ASSERT_TRUE(writer.AddF32(name, shape, values.data()).ok());
  };
  add("W_enc", {d_in, d_sae});
  add("b_enc", {d_sae});
  add("W_dec", {d_sae, d_in});
  add("b_dec", {d_in});
  return writer.Serialize();
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/saelens_XXXXXX";
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    path_ = pattern;
  }
  ~TempDir() { std::system(absl::StrCat("rm -rf '", path_, "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

bool Exists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0;
}

absl::Status ParseError(const std::string& text) {
  absl::StatusOr<SaelensConfig> config = ParseSaelensConfig(text, "cfg.json");
  EXPECT_FALSE(config.ok()) << text;
  return config.status();
}

// "(at byte N)" for the first occurrence of `needle` in `text`: where the
// value of a field starts.
std::string AtByteOf(const std::string& text, const std::string& needle) {
  const size_t at = text.find(needle);
  EXPECT_NE(at, std::string::npos) << needle;
  return absl::StrCat("(at byte ", at, ")");
}

TEST(HookNameTest, TransformerLensNames) {
  EXPECT_EQ(HookName(1, "resid_pre"), "blocks.1.hook_resid_pre");
  EXPECT_EQ(HookName(0, "resid_post"), "blocks.0.hook_resid_post");
  EXPECT_EQ(HookName(11, "attn_out"), "blocks.11.hook_attn_out");
  EXPECT_EQ(HookName(3, "mlp_out"), "blocks.3.hook_mlp_out");
}

TEST(SaelensConfigTest, RoundTripsRelu) {
  const SaelensConfig config = ReluConfig();
  const std::string json = SaelensConfigToJson(config);
  absl::StatusOr<SaelensConfig> parsed = ParseSaelensConfig(json, "cfg.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameConfig(*parsed, config);
}

TEST(SaelensConfigTest, RoundTripsTopK) {
  const SaelensConfig config = TopKConfig();
  const std::string json = SaelensConfigToJson(config);
  absl::StatusOr<SaelensConfig> parsed = ParseSaelensConfig(json, "cfg.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ExpectSameConfig(*parsed, config);
}

// The fields SAELens reads, in SAELens's spelling.
TEST(SaelensConfigTest, WritesWhatSaelensReads) {
  const std::string relu_json = SaelensConfigToJson(ReluConfig());
  absl::StatusOr<JsonValue> relu = ParseJson(relu_json);
  ASSERT_TRUE(relu.ok()) << relu.status();
  EXPECT_EQ(relu->Find("architecture")->string_value(), "standard");
  EXPECT_EQ(relu->Find("d_in")->AsInt64(), kDIn);
  EXPECT_EQ(relu->Find("d_sae")->AsInt64(), kDSae);
  EXPECT_EQ(relu->Find("dtype")->string_value(), "float32");
  EXPECT_EQ(relu->Find("device")->string_value(), "cpu");
  EXPECT_EQ(relu->Find("model_name")->string_value(), "demo-data/lm/step512");
  EXPECT_EQ(relu->Find("hook_name")->string_value(), "blocks.1.hook_resid_pre");
  EXPECT_EQ(relu->Find("hook_layer")->AsInt64(), 1);
  EXPECT_TRUE(relu->Find("hook_head_index")->is_null());
  EXPECT_EQ(relu->Find("activation_fn_str")->string_value(), "relu");
  EXPECT_TRUE(relu->Find("activation_fn_kwargs")->is_object());
  EXPECT_TRUE(relu->Find("activation_fn_kwargs")->members().empty());
  EXPECT_EQ(relu->Find("k"), nullptr);
  EXPECT_TRUE(relu->Find("apply_b_dec_to_input")->bool_value());
  EXPECT_FALSE(relu->Find("finetuning_scaling_factor")->bool_value());
  EXPECT_EQ(relu->Find("normalize_activations")->string_value(), "none");
  EXPECT_FALSE(relu->Find("prepend_bos")->bool_value());
  EXPECT_TRUE(relu->Find("sae_lens_training_version")->is_null());
  const JsonValue* metadata = relu->Find("metadata");
  ASSERT_NE(metadata, nullptr);
  EXPECT_EQ(metadata->Find("saetrack_architecture")->string_value(), "relu_l1");
  EXPECT_EQ(metadata->Find("checkpoint_step")->AsInt64(), 512);
  EXPECT_EQ(metadata->Find("job_id")->string_value(), "job-000001");
  EXPECT_EQ(metadata->Find("model_name")->string_value(),
            "demo-data/lm/step512");
  EXPECT_EQ(metadata->Find("hook_name")->string_value(),
            "blocks.1.hook_resid_pre");
  // Pretty-printed, one field per line.
  EXPECT_THAT(relu_json, HasSubstr("{\n  \"architecture\": \"standard\",\n"));
  EXPECT_EQ(relu_json.back(), '\n');

  absl::StatusOr<JsonValue> topk = ParseJson(SaelensConfigToJson(TopKConfig()));
  ASSERT_TRUE(topk.ok()) << topk.status();
  EXPECT_EQ(topk->Find("architecture")->string_value(), "topk");
  EXPECT_EQ(topk->Find("activation_fn_str")->string_value(), "topk");
  EXPECT_EQ(topk->Find("activation_fn_kwargs")->Find("k")->AsInt64(), 3);
  EXPECT_EQ(topk->Find("k")->AsInt64(), 3);
  EXPECT_EQ(
      topk->Find("metadata")->Find("saetrack_architecture")->string_value(),
      "topk");
}

// cfg.json of jbloom's gpt2-small-res-jb release, as SAELens 3-5 writes it
// (json.dump, one line).
constexpr char kSaelens5Standard[] =
    R"({"architecture": "standard", "d_in": 768, "d_sae": 24576, )"
    R"("dtype": "float32", "device": "cuda", "model_name": "gpt2-small", )"
    R"("hook_name": "blocks.8.hook_resid_pre", "hook_layer": 8, )"
    R"("hook_head_index": null, "activation_fn_str": "relu", )"
    R"("activation_fn_kwargs": {}, "apply_b_dec_to_input": true, )"
    R"("finetuning_scaling_factor": false, "sae_lens_training_version": null, )"
    R"("prepend_bos": true, "dataset_path": "Skylion007/openwebtext", )"
    R"("dataset_trust_remote_code": true, "context_size": 128, )"
    R"("normalize_activations": "none", )"
    R"("neuronpedia_id": "gpt2-small/8-res-jb", )"
    R"("model_from_pretrained_kwargs": {}})";

TEST(SaelensConfigTest, ParsesSaelens5Standard) {
  absl::StatusOr<SaelensConfig> config =
      ParseSaelensConfig(kSaelens5Standard, "cfg.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "relu_l1");
  EXPECT_EQ(config->d_in, 768);
  EXPECT_EQ(config->d_sae, 24576);
  EXPECT_EQ(config->k, 0);
  EXPECT_EQ(config->dtype, "float32");
  EXPECT_EQ(config->model_name, "gpt2-small");
  EXPECT_EQ(config->hook_name, "blocks.8.hook_resid_pre");
  EXPECT_EQ(config->hook_layer, 8);
  EXPECT_EQ(config->checkpoint_step, 0);
  EXPECT_EQ(config->job_id, "");
}

// SAELens 3.x wrote TopK SAEs as "standard" with a topk activation.
TEST(SaelensConfigTest, ParsesSaelensStandardWithTopKActivation) {
  const std::string text = absl::StrReplaceAll(
      kSaelens5Standard,
      {{R"("activation_fn_str": "relu")", R"("activation_fn_str": "topk")"},
       {R"("activation_fn_kwargs": {})",
        R"("activation_fn_kwargs": {"k": 32})"}});
  absl::StatusOr<SaelensConfig> config = ParseSaelensConfig(text, "cfg.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "topk");
  EXPECT_EQ(config->k, 32);
}

// SAELens 6 (SAE.save_model): hook fields moved into "metadata", k at the
// top level, no hook_layer.
constexpr char kSaelens6TopK[] = R"({
  "d_in": 512,
  "d_sae": 4096,
  "dtype": "float32",
  "device": "cpu",
  "apply_b_dec_to_input": true,
  "normalize_activations": "none",
  "reshape_activations": "none",
  "metadata": {
    "sae_lens_version": "6.5.1",
    "sae_lens_training_version": "6.5.1",
    "model_name": "pythia-70m-deduped",
    "hook_name": "blocks.3.hook_resid_post",
    "hook_head_index": null,
    "prepend_bos": true,
    "context_size": 128
  },
  "k": 32,
  "rescale_acts_by_decoder_norm": false,
  "architecture": "topk"
})";

TEST(SaelensConfigTest, ParsesSaelens6TopK) {
  absl::StatusOr<SaelensConfig> config =
      ParseSaelensConfig(kSaelens6TopK, "cfg.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "topk");
  EXPECT_EQ(config->d_in, 512);
  EXPECT_EQ(config->d_sae, 4096);
  EXPECT_EQ(config->k, 32);
  EXPECT_EQ(config->model_name, "pythia-70m-deduped");
  EXPECT_EQ(config->hook_name, "blocks.3.hook_resid_post");
  EXPECT_EQ(config->hook_layer, 3);  // from the hook name
}

TEST(SaelensConfigTest, AcceptsSaetrackAndSaelensArchitectureNames) {
  for (const char* name : {"standard", "relu", "relu_l1"}) {
    const std::string text = absl::StrReplaceAll(
        kSaelens5Standard,
        {{R"("architecture": "standard")",
          absl::StrCat(R"("architecture": ")", name, "\"")}});
    absl::StatusOr<SaelensConfig> config = ParseSaelensConfig(text, "cfg.json");
    ASSERT_TRUE(config.ok()) << name << ": " << config.status();
    EXPECT_EQ(config->architecture, "relu_l1") << name;
  }
  // Absent: SAELens's default, "standard".
  const std::string text = absl::StrReplaceAll(
      kSaelens5Standard, {{R"("architecture": "standard", )", ""}});
  absl::StatusOr<SaelensConfig> config = ParseSaelensConfig(text, "cfg.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "relu_l1");
}

TEST(SaelensConfigTest, MissingDInNamesTheField) {
  const std::string text =
      absl::StrReplaceAll(kSaelens5Standard, {{R"("d_in": 768, )", ""}});
  const absl::Status status = ParseError(text);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("cfg.json"));
  EXPECT_THAT(status.message(), HasSubstr("\"d_in\" is missing"));
}

TEST(SaelensConfigTest, WrongTypeNamesFieldAndOffset) {
  const std::string text = absl::StrReplaceAll(
      kSaelens5Standard, {{R"("d_sae": 24576)", R"("d_sae": "24576")"}});
  const absl::Status status = ParseError(text);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("cfg.json: field \"d_sae\""));
  EXPECT_THAT(status.message(), HasSubstr(AtByteOf(text, "\"24576\"")));
  EXPECT_THAT(status.message(), HasSubstr("must be an integer, found string"));

  const std::string fraction = absl::StrReplaceAll(
      kSaelens5Standard, {{R"("d_in": 768)", R"("d_in": 76.5)"}});
  EXPECT_THAT(ParseError(fraction).message(),
              HasSubstr("field \"d_in\" " + AtByteOf(fraction, "76.5")));

  const std::string negative = absl::StrReplaceAll(
      kSaelens5Standard, {{R"("d_in": 768)", R"("d_in": -1)"}});
  EXPECT_THAT(ParseError(negative).message(), HasSubstr("\"d_in\""));

  const std::string metadata = absl::StrReplaceAll(
      kSaelens6TopK, {{R"("metadata": {)", R"("metadata": [{)"},
                      {R"("context_size": 128
  })",
                       R"("context_size": 128
  }])"}});
  EXPECT_THAT(ParseError(metadata).message(),
              HasSubstr("field \"metadata\" " + AtByteOf(metadata, "[{")));
}

TEST(SaelensConfigTest, UnknownArchitectureNamesFieldAndOffset) {
  const std::string text = absl::StrReplaceAll(
      kSaelens5Standard,
      {{R"("architecture": "standard")", R"("architecture": "jumprelu")"}});
  const absl::Status status = ParseError(text);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("field \"architecture\" " +
                                          AtByteOf(text, "\"jumprelu\"")));
  EXPECT_THAT(status.message(), HasSubstr("jumprelu"));

  const std::string activation = absl::StrReplaceAll(
      kSaelens5Standard,
      {{R"("activation_fn_str": "relu")", R"("activation_fn_str": "tanh")"}});
  EXPECT_THAT(ParseError(activation).message(),
              HasSubstr("field \"activation_fn_str\" " +
                        AtByteOf(activation, "\"tanh\"")));
}

TEST(SaelensConfigTest, TopKNeedsAConsistentK) {
  const std::string no_k =
      absl::StrReplaceAll(kSaelens6TopK, {{R"("k": 32,)", ""}});
  const absl::Status status = ParseError(no_k);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("field \"k\" is missing"));

  const std::string disagreeing = absl::StrReplaceAll(
      kSaelens6TopK,
      {{R"("k": 32,)", R"("k": 32, "activation_fn_kwargs": {"k": 16},)"}});
  EXPECT_THAT(ParseError(disagreeing).message(),
              HasSubstr("field \"activation_fn_kwargs.k\" " +
                        AtByteOf(disagreeing, "16}")));

  const std::string too_large =
      absl::StrReplaceAll(kSaelens6TopK, {{R"("k": 32,)", R"("k": 5000,)"}});
  EXPECT_THAT(ParseError(too_large).message(),
              HasSubstr("field \"k\" " + AtByteOf(too_large, "5000")));

  const std::string metadata_disagrees = absl::StrReplaceAll(
      kSaelens6TopK, {{R"("sae_lens_version": "6.5.1",)",
                       R"("saetrack_architecture": "relu_l1",)"}});
  EXPECT_THAT(ParseError(metadata_disagrees).message(),
              HasSubstr("field \"metadata.saetrack_architecture\""));
}

TEST(SaelensConfigTest, SyntaxErrorsNameTheOffset) {
  const absl::Status status = ParseError(R"({"d_in": 4,, "d_sae": 6})");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("cfg.json: invalid JSON at byte 11"));
  EXPECT_THAT(ParseError("[1, 2]").message(),
              HasSubstr("expected a JSON object at the top level"));
}

TEST(SaelensDirTest, WriteReadRoundTripKeepsTheWeights) {
  TempDir temp;
  const std::string dir = temp.path() + "/a/b/sae";  // parents created
  for (const SaelensConfig& config : {ReluConfig(), TopKConfig()}) {
    const std::string weights = Weights(kDIn, kDSae);
    ASSERT_TRUE(WriteSaelensDir(dir, config, weights).ok());
    absl::StatusOr<SaelensSae> sae = ReadSaelensDir(dir);
    ASSERT_TRUE(sae.ok()) << sae.status();
    ExpectSameConfig(sae->config, config);
    EXPECT_EQ(sae->safetensors, weights);

    // And tensor by tensor, value for value.
    absl::StatusOr<SafetensorsFile> written =
        SafetensorsFile::FromBytes(sae->safetensors, "read");
    absl::StatusOr<SafetensorsFile> original =
        SafetensorsFile::FromBytes(weights, "original");
    ASSERT_TRUE(written.ok() && original.ok());
    ASSERT_EQ(written->tensors().size(), 4u);
    for (const TensorView& tensor : original->tensors()) {
      const TensorView* copy = written->Find(tensor.name);
      ASSERT_NE(copy, nullptr) << tensor.name;
      EXPECT_EQ(copy->shape, tensor.shape) << tensor.name;
      std::vector<float> a(static_cast<size_t>(tensor.num_elements()));
      std::vector<float> b(a.size());
      ASSERT_TRUE(DecodeToFloat(tensor, a.data()).ok());
      ASSERT_TRUE(DecodeToFloat(*copy, b.data()).ok());
      EXPECT_EQ(a, b) << tensor.name;
    }
    // No temporary files left behind.
    EXPECT_TRUE(Exists(dir + "/cfg.json"));
    EXPECT_TRUE(Exists(dir + "/sae_weights.safetensors"));
    EXPECT_EQ(
        std::system(
            absl::StrCat("test $(ls -A '", dir, "' | wc -l) -eq 2").c_str()),
        0);
  }
}

TEST(SaelensDirTest, ShapeMismatchBetweenConfigAndTensorsNamesTheTensor) {
  TempDir temp;
  const std::string dir = temp.path() + "/sae";
  // Refused before anything is written.
  SaelensConfig wider = ReluConfig();
  wider.d_sae = kDSae + 1;
  absl::Status status = WriteSaelensDir(dir, wider, Weights(kDIn, kDSae));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("sae_weights.safetensors"));
  EXPECT_THAT(status.message(), HasSubstr("tensor \"W_enc\""));
  EXPECT_THAT(status.message(), HasSubstr("has shape [4, 6], expected [4, 7]"));
  EXPECT_FALSE(Exists(dir));

  // A directory whose cfg.json disagrees with its weights.
  ASSERT_TRUE(WriteSaelensDir(dir, ReluConfig(), Weights(kDIn, kDSae)).ok());
  WriteFile(dir + "/cfg.json", SaelensConfigToJson(wider));
  absl::StatusOr<SaelensSae> sae = ReadSaelensDir(dir);
  EXPECT_EQ(sae.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sae.status().message(),
              HasSubstr(dir + "/sae_weights.safetensors: tensor \"W_enc\""));

  // Mismatched tensors among themselves (d_in 5 in the decoder).
  SafetensorsWriter writer;
  std::vector<float> zeros(64, 0.0f);
  ASSERT_TRUE(writer.AddF32("W_enc", {kDIn, kDSae}, zeros.data()).ok());
  ASSERT_TRUE(writer.AddF32("b_enc", {kDSae}, zeros.data()).ok());
  ASSERT_TRUE(writer.AddF32("W_dec", {kDSae, kDIn + 1}, zeros.data()).ok());
  ASSERT_TRUE(writer.AddF32("b_dec", {kDIn}, zeros.data()).ok());
  status = WriteSaelensDir(dir, ReluConfig(), writer.Serialize());
  EXPECT_THAT(status.message(), HasSubstr("tensor \"W_dec\""));
  EXPECT_THAT(status.message(), HasSubstr("expected [6, 4]"));
}

TEST(SaelensDirTest, MissingExtraOrNonF32TensorNamesTheTensor) {
  TempDir temp;
  const std::string dir = temp.path() + "/sae";
  absl::Status status =
      WriteSaelensDir(dir, ReluConfig(), Weights(kDIn, kDSae, "b_enc"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor \"b_enc\" is missing"));

  status =
      WriteSaelensDir(dir, ReluConfig(), Weights(kDIn, kDSae, "", Dtype::kF16));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tensor \"b_dec\""));
  EXPECT_THAT(status.message(), HasSubstr("has dtype F16, expected F32"));

  // A JumpReLU threshold is more than a relu_l1 SAE has.
  ASSERT_TRUE(WriteSaelensDir(dir, ReluConfig(), Weights(kDIn, kDSae)).ok());
  SafetensorsWriter writer;
  absl::StatusOr<SafetensorsFile> good =
      SafetensorsFile::FromBytes(Weights(kDIn, kDSae), "good");
  ASSERT_TRUE(good.ok());
  for (const TensorView& tensor : good->tensors()) {
    ASSERT_TRUE(
        writer.Add(tensor.name, tensor.dtype, tensor.shape, tensor.bytes).ok());
  }
  std::vector<float> threshold(kDSae, 0.5f);
  ASSERT_TRUE(writer.AddF32("threshold", {kDSae}, threshold.data()).ok());
  WriteFile(dir + "/sae_weights.safetensors", writer.Serialize());
  absl::StatusOr<SaelensSae> sae = ReadSaelensDir(dir);
  EXPECT_EQ(sae.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sae.status().message(), HasSubstr("tensor \"threshold\""));

  // Malformed safetensors are data loss, naming the file.
  WriteFile(dir + "/sae_weights.safetensors", "not a safetensors file");
  sae = ReadSaelensDir(dir);
  EXPECT_EQ(sae.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(sae.status().message(), HasSubstr("sae_weights.safetensors"));
}

TEST(SaelensDirTest, MissingFileIsNotFound) {
  TempDir temp;
  const std::string dir = temp.path() + "/sae";
  absl::StatusOr<SaelensSae> sae = ReadSaelensDir(dir);
  EXPECT_EQ(sae.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(sae.status().message(), HasSubstr(dir + "/cfg.json"));

  ASSERT_TRUE(WriteSaelensDir(dir, ReluConfig(), Weights(kDIn, kDSae)).ok());
  ASSERT_EQ(::unlink((dir + "/sae_weights.safetensors").c_str()), 0);
  sae = ReadSaelensDir(dir);
  EXPECT_EQ(sae.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(sae.status().message(),
              HasSubstr(dir + "/sae_weights.safetensors"));
}

TEST(SaelensDirTest, BadConfigFileNamesFileAndField) {
  TempDir temp;
  const std::string dir = temp.path() + "/sae";
  ASSERT_TRUE(WriteSaelensDir(dir, ReluConfig(), Weights(kDIn, kDSae)).ok());
  const std::string text = absl::StrReplaceAll(
      SaelensConfigToJson(ReluConfig()),
      {{R"("architecture": "standard")", R"("architecture": "gated")"}});
  WriteFile(dir + "/cfg.json", text);
  absl::StatusOr<SaelensSae> sae = ReadSaelensDir(dir);
  EXPECT_EQ(sae.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sae.status().message(),
              HasSubstr(dir + "/cfg.json: field \"architecture\" " +
                        AtByteOf(text, "\"gated\"")));
}

TEST(SaelensDirTest, WriteRejectsInvalidConfigs) {
  TempDir temp;
  const std::string dir = temp.path() + "/sae";
  SaelensConfig config = ReluConfig();
  config.architecture = "gated";
  EXPECT_EQ(WriteSaelensDir(dir, config, Weights(kDIn, kDSae)).code(),
            absl::StatusCode::kInvalidArgument);
  config = TopKConfig();
  config.k = 0;
  absl::Status status = WriteSaelensDir(dir, config, Weights(kDIn, kDSae));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("k"));
  config = ReluConfig();
  config.model_name = "\xff\xfe";  // not UTF-8: cfg.json would be unreadable
  EXPECT_EQ(WriteSaelensDir(dir, config, Weights(kDIn, kDSae)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Exists(dir));
}

}  // namespace
}  // namespace saetrack::format
