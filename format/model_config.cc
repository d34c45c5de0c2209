#include "format/model_config.h"

#include <unistd.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/absl_compat.h"
#include "base/status_macros.h"
#include "format/json.h"
#include "format/mapped_file.h"

namespace saetrack::format {
namespace {

constexpr char kGptNeoxModelType[] = "gpt_neox";
constexpr char kGpt2ModelType[] = "gpt2";

// Hugging Face class names in `architectures` that map to a model type, for
// configs without model_type.
struct KnownArchitecture {
  const char* class_name;
  const char* model_type;
};
constexpr KnownArchitecture kKnownArchitectures[] = {
    {"GPTNeoXForCausalLM", kGptNeoxModelType},
    {"GPT2LMHeadModel", kGpt2ModelType},
    {"GPT2Model", kGpt2ModelType},
};

// Activations the engine implements (HF ACT2FN names).
constexpr const char* kSupportedActivations[] = {
    "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu"};

// Reads typed fields of one config object; every error names the origin
// file, the field and the field's byte offset.
class ConfigReader {
 public:
  ConfigReader(const JsonValue& root, std::string_view origin)
      : root_(root), origin_(origin) {}

  absl::Status Error(std::string_view field, const JsonValue* value,
                     std::string_view what) const {
    if (value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          AsAbsl(origin_), ": field \"", AsAbsl(field), "\" ", AsAbsl(what)));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(origin_), ": field \"", AsAbsl(field),
                     "\" (at byte ", value->offset(), ") ", AsAbsl(what)));
  }

  // The first of `names` present (HF renamed some fields across versions),
  // with the name that matched; nullptr when none is.
  const JsonValue* FindAny(std::initializer_list<std::string_view> names,
                           std::string_view* found_name) const {
    for (std::string_view name : names) {
      if (const JsonValue* value = root_.Find(name)) {
        *found_name = name;
        return value;
      }
    }
    *found_name = *names.begin();
    return nullptr;
  }

  // A positive integer field; `required` fields must be present, optional
  // ones keep `*out` when absent.
  absl::Status PositiveInt(std::initializer_list<std::string_view> names,
                           bool required, int* out) const {
    std::string_view name;
    const JsonValue* value = FindAny(names, &name);
    if (value == nullptr || value->is_null()) {
      if (required) return Error(name, nullptr, "is missing");
      return absl::OkStatus();
    }
    const std::optional<int64_t> integer = value->AsInt64();
    if (!integer.has_value()) {
      return Error(name, value,
                   absl::StrCat("must be an integer, found ",
                                JsonValue::TypeName(value->type())));
    }
    if (*integer <= 0 || *integer > std::numeric_limits<int>::max()) {
      return Error(
          name, value,
          absl::StrCat("must be a positive integer, found ", *integer));
    }
    *out = static_cast<int>(*integer);
    return absl::OkStatus();
  }

  absl::Status OptionalDouble(std::initializer_list<std::string_view> names,
                              double* out) const {
    std::string_view name;
    const JsonValue* value = FindAny(names, &name);
    if (value == nullptr || value->is_null()) return absl::OkStatus();
    if (!value->is_number()) {
      return Error(name, value,
                   absl::StrCat("must be a number, found ",
                                JsonValue::TypeName(value->type())));
    }
    *out = value->number_value();
    return absl::OkStatus();
  }

  absl::Status OptionalBool(std::string_view name, bool* out) const {
    const JsonValue* value = root_.Find(name);
    if (value == nullptr || value->is_null()) return absl::OkStatus();
    if (!value->is_bool()) {
      return Error(name, value,
                   absl::StrCat("must be a boolean, found ",
                                JsonValue::TypeName(value->type())));
    }
    *out = value->bool_value();
    return absl::OkStatus();
  }

  absl::Status OptionalString(std::string_view name, std::string* out) const {
    const JsonValue* value = root_.Find(name);
    if (value == nullptr || value->is_null()) return absl::OkStatus();
    if (!value->is_string()) {
      return Error(name, value,
                   absl::StrCat("must be a string, found ",
                                JsonValue::TypeName(value->type())));
    }
    *out = value->string_value();
    return absl::OkStatus();
  }

  const JsonValue& root() const { return root_; }
  std::string_view origin() const { return origin_; }

 private:
  const JsonValue& root_;
  std::string_view origin_;
};

// Resolves the architecture from model_type, falling back to architectures[0]
// (some exported configs omit model_type).
absl::StatusOr<std::string> ResolveArchitecture(const ConfigReader& reader) {
  const JsonValue* model_type = reader.root().Find("model_type");
  if (model_type != nullptr) {
    if (!model_type->is_string()) {
      return reader.Error("model_type", model_type, "must be a string");
    }
    const std::string& name = model_type->string_value();
    if (name != kGptNeoxModelType && name != kGpt2ModelType) {
      return reader.Error(
          "model_type", model_type,
          absl::StrCat("is \"", name,
                       "\", an unsupported architecture (supported: \"",
                       kGptNeoxModelType, "\", \"", kGpt2ModelType, "\")"));
    }
    return name;
  }
  const JsonValue* architectures = reader.root().Find("architectures");
  if (architectures != nullptr && architectures->is_array() &&
      !architectures->array().empty() &&
      architectures->array()[0].is_string()) {
    const std::string& name = architectures->array()[0].string_value();
    std::vector<std::string> supported;
    for (const KnownArchitecture& known : kKnownArchitectures) {
      if (name == known.class_name) return std::string(known.model_type);
      supported.push_back(absl::StrCat("\"", known.class_name, "\""));
    }
    return reader.Error("architectures", architectures,
                        absl::StrCat("names \"", name,
                                     "\", an unsupported architecture "
                                     "(supported: ",
                                     absl::StrJoin(supported, ", "), ")"));
  }
  return reader.Error("model_type", nullptr, "is missing");
}

// Checks shared by every architecture; `*_field` are the names the config
// uses for hidden size, heads, layer-norm epsilon and activation.
absl::Status CheckCommonFields(const ConfigReader& reader,
                               const ModelConfig& config,
                               std::string_view hidden_field,
                               std::string_view heads_field,
                               std::string_view eps_field,
                               std::string_view activation_field) {
  if (config.hidden_size % config.num_attention_heads != 0) {
    return reader.Error(
        hidden_field, reader.root().Find(hidden_field),
        absl::StrCat("(", config.hidden_size, ") is not divisible by ",
                     AsAbsl(heads_field), " (", config.num_attention_heads,
                     ")"));
  }
  if (!(config.layer_norm_eps > 0)) {
    return reader.Error(
        eps_field, reader.root().Find(eps_field),
        absl::StrCat("must be positive, found ", config.layer_norm_eps));
  }
  bool activation_supported = false;
  for (const char* name : kSupportedActivations) {
    if (config.hidden_act == name) activation_supported = true;
  }
  if (!activation_supported) {
    return reader.Error(
        activation_field, reader.root().Find(activation_field),
        absl::StrCat("is \"", config.hidden_act, "\", not one of: ",
                     absl::StrJoin(kSupportedActivations, ", ")));
  }
  return absl::OkStatus();
}

// GPT2Config fields. HF's attribute_map lets the NeoX-style names stand in
// for the GPT-2 ones, so both are accepted (GPT-2 names first).
absl::Status ParseGpt2Fields(const ConfigReader& reader, ModelConfig* config) {
  SAETRACK_RETURN_IF_ERROR(
      reader.PositiveInt({"vocab_size"}, true, &config->vocab_size));
  SAETRACK_RETURN_IF_ERROR(reader.PositiveInt({"n_embd", "hidden_size"}, true,
                                              &config->hidden_size));
  SAETRACK_RETURN_IF_ERROR(reader.PositiveInt(
      {"n_layer", "num_hidden_layers"}, true, &config->num_hidden_layers));
  SAETRACK_RETURN_IF_ERROR(reader.PositiveInt(
      {"n_head", "num_attention_heads"}, true, &config->num_attention_heads));
  // n_inner: null (the usual value) means 4 * n_embd.
  config->intermediate_size = 4 * config->hidden_size;
  SAETRACK_RETURN_IF_ERROR(
      reader.PositiveInt({"n_inner"}, false, &config->intermediate_size));
  // HF's GPT2Config default; learned positions make it a hard limit.
  config->max_position_embeddings = 1024;
  SAETRACK_RETURN_IF_ERROR(
      reader.PositiveInt({"n_positions", "max_position_embeddings"}, false,
                         &config->max_position_embeddings));
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalDouble({"layer_norm_epsilon"}, &config->layer_norm_eps));
  config->hidden_act = "gelu_new";
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalString("activation_function", &config->hidden_act));
  config->tie_word_embeddings = true;
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalBool("tie_word_embeddings", &config->tie_word_embeddings));
  // GPT-2 has neither rotary embeddings nor a parallel residual.
  config->rotary_pct = 0;
  config->use_parallel_residual = false;

  // Variants the engine does not implement; refusing them beats silently
  // computing a different model.
  bool scale_attn_weights = true;
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalBool("scale_attn_weights", &scale_attn_weights));
  if (!scale_attn_weights) {
    return reader.Error("scale_attn_weights",
                        reader.root().Find("scale_attn_weights"),
                        "is false; only scaled attention is supported");
  }
  bool scale_by_layer = false;
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalBool("scale_attn_by_inverse_layer_idx", &scale_by_layer));
  if (scale_by_layer) {
    return reader.Error("scale_attn_by_inverse_layer_idx",
                        reader.root().Find("scale_attn_by_inverse_layer_idx"),
                        "is true, which is not supported");
  }
  std::string_view name;
  reader.FindAny({"n_embd", "hidden_size"}, &name);
  std::string_view heads_name;
  reader.FindAny({"n_head", "num_attention_heads"}, &heads_name);
  return CheckCommonFields(reader, *config, name, heads_name,
                           "layer_norm_epsilon", "activation_function");
}

// GPTNeoXConfig fields.
absl::Status ParseGptNeoxFields(const ConfigReader& reader,
                                ModelConfig* config) {
  SAETRACK_RETURN_IF_ERROR(
      reader.PositiveInt({"vocab_size"}, true, &config->vocab_size));
  SAETRACK_RETURN_IF_ERROR(
      reader.PositiveInt({"hidden_size"}, true, &config->hidden_size));
  SAETRACK_RETURN_IF_ERROR(reader.PositiveInt({"num_hidden_layers"}, true,
                                              &config->num_hidden_layers));
  SAETRACK_RETURN_IF_ERROR(reader.PositiveInt({"num_attention_heads"}, true,
                                              &config->num_attention_heads));
  SAETRACK_RETURN_IF_ERROR(reader.PositiveInt({"intermediate_size"}, true,
                                              &config->intermediate_size));
  // HF's GPTNeoXConfig default.
  config->max_position_embeddings = 2048;
  SAETRACK_RETURN_IF_ERROR(reader.PositiveInt(
      {"max_position_embeddings"}, false, &config->max_position_embeddings));
  // Newer transformers versions write partial_rotary_factor / rope_theta,
  // at the top level or inside a rope_parameters object.
  const JsonValue* rope_parameters = reader.root().Find("rope_parameters");
  const ConfigReader rope_reader(
      rope_parameters != nullptr && rope_parameters->is_object()
          ? *rope_parameters
          : reader.root(),
      reader.origin());
  SAETRACK_RETURN_IF_ERROR(reader.OptionalDouble(
      {"rotary_pct", "partial_rotary_factor"}, &config->rotary_pct));
  SAETRACK_RETURN_IF_ERROR(rope_reader.OptionalDouble({"partial_rotary_factor"},
                                                      &config->rotary_pct));
  double rotary_base = config->rotary_emb_base;
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalDouble({"rotary_emb_base", "rope_theta"}, &rotary_base));
  SAETRACK_RETURN_IF_ERROR(
      rope_reader.OptionalDouble({"rope_theta"}, &rotary_base));
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalDouble({"layer_norm_eps"}, &config->layer_norm_eps));
  SAETRACK_RETURN_IF_ERROR(reader.OptionalBool("use_parallel_residual",
                                               &config->use_parallel_residual));
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalBool("tie_word_embeddings", &config->tie_word_embeddings));
  SAETRACK_RETURN_IF_ERROR(
      reader.OptionalString("hidden_act", &config->hidden_act));

  // Consistency checks, each naming the offending field.
  SAETRACK_RETURN_IF_ERROR(CheckCommonFields(reader, *config, "hidden_size",
                                             "num_attention_heads",
                                             "layer_norm_eps", "hidden_act"));
  if (!(config->rotary_pct >= 0 && config->rotary_pct <= 1)) {
    std::string_view name;
    const JsonValue* value =
        reader.FindAny({"rotary_pct", "partial_rotary_factor"}, &name);
    return reader.Error(
        name, value,
        absl::StrCat("must be in [0, 1], found ", config->rotary_pct));
  }
  const int head_dim = config->hidden_size / config->num_attention_heads;
  // HF truncates: rotary_ndims = int(head_size * rotary_pct). rotate_half
  // splits the rotary dims in two halves, so they must be even.
  const int rotary_dims = static_cast<int>(head_dim * config->rotary_pct);
  if (rotary_dims % 2 != 0) {
    std::string_view name;
    const JsonValue* value =
        reader.FindAny({"rotary_pct", "partial_rotary_factor"}, &name);
    return reader.Error(
        name, value,
        absl::StrCat("gives an odd number of rotary dimensions (", rotary_dims,
                     " of head size ", head_dim, ")"));
  }
  if (!(rotary_base > 0) || rotary_base != std::floor(rotary_base) ||
      rotary_base > std::numeric_limits<int>::max()) {
    std::string_view name;
    const JsonValue* value =
        reader.FindAny({"rotary_emb_base", "rope_theta"}, &name);
    return reader.Error(
        name, value,
        absl::StrCat("must be a positive integer, found ", rotary_base));
  }
  config->rotary_emb_base = static_cast<int>(rotary_base);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view origin) {
  absl::StatusOr<JsonValue> root = ParseJson(json_text, origin);
  if (!root.ok()) return root.status();
  if (!root->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        AsAbsl(origin), ": expected a JSON object at the top level, found ",
        JsonValue::TypeName(root->type())));
  }
  const ConfigReader reader(*root, origin);
  ModelConfig config;
  absl::StatusOr<std::string> architecture = ResolveArchitecture(reader);
  if (!architecture.ok()) return architecture.status();
  config.architecture = *std::move(architecture);

  if (config.architecture == kGpt2ModelType) {
    SAETRACK_RETURN_IF_ERROR(ParseGpt2Fields(reader, &config));
  } else {
    SAETRACK_RETURN_IF_ERROR(ParseGptNeoxFields(reader, &config));
  }
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string config_path = absl::StrCat(dir, "/config.json");
  absl::StatusOr<MappedFile> text = MappedFile::Open(config_path);
  if (!text.ok()) return text.status();
  if (text->size() > kMaxModelConfigBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": ", text->size(), " bytes exceeds the ",
                     kMaxModelConfigBytes, "-byte limit of a config.json"));
  }
  absl::StatusOr<ModelConfig> config =
      ParseModelConfig(text->data(), config_path);
  if (!config.ok()) return config.status();
  const std::string weights_path = absl::StrCat(dir, "/model.safetensors");
  const std::string index_path =
      absl::StrCat(dir, "/model.safetensors.index.json");
  if (::access(weights_path.c_str(), R_OK) != 0 &&
      ::access(index_path.c_str(), R_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("no readable weights in ", dir,
                                            ": expected ", weights_path, " or ",
                                            index_path));
  }
  return config;
}

}  // namespace saetrack::format
