#include "format/saelens.h"

#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/absl_compat.h"
#include "base/status_macros.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "format/safetensors.h"

namespace saetrack::format {
namespace {

constexpr char kReluL1[] = "relu_l1";
constexpr char kTopK[] = "topk";

// SAELens's architecture name for a saetrack one.
const char* SaelensArchitectureName(const std::string& architecture) {
  return architecture == kTopK ? "topk" : "standard";
}

// ---------------------------------------------------------------------------
// Pretty printing. json.h only serialises compactly; cfg.json is meant to be
// read by people too (SAELens's own files are indented by some versions), so
// indent here, delegating scalars to SerializeJson so that numbers and
// strings are spelled exactly as everywhere else.

void AppendPretty(const JsonValue& value, int depth, std::string& out) {
  const std::string indent(static_cast<size_t>(2 * (depth + 1)), ' ');
  const std::string closing_indent(static_cast<size_t>(2 * depth), ' ');
  if (value.is_object() && !value.members().empty()) {
    out += "{\n";
    bool first = true;
    for (const JsonValue::Member& member : value.members()) {
      if (!first) out += ",\n";
      first = false;
      absl::StrAppend(&out, indent, JsonQuote(member.first), ": ");
      AppendPretty(member.second, depth + 1, out);
    }
    absl::StrAppend(&out, "\n", closing_indent, "}");
  } else if (value.is_array() && !value.array().empty()) {
    out += "[\n";
    bool first = true;
    for (const JsonValue& element : value.array()) {
      if (!first) out += ",\n";
      first = false;
      out += indent;
      AppendPretty(element, depth + 1, out);
    }
    absl::StrAppend(&out, "\n", closing_indent, "]");
  } else {
    // Scalars, {} and [].
    out += SerializeJson(value);
  }
}

// ---------------------------------------------------------------------------
// Reading typed fields. Every error names the origin file, the (dotted)
// field and, when the field is present, its byte offset.

class FieldReader {
 public:
  // `object` is the JSON object read; `prefix` is prepended (with a dot) to
  // field names in errors ("" for the top level).
  FieldReader(const JsonValue* object, std::string_view origin,
              std::string prefix)
      : object_(object), origin_(origin), prefix_(std::move(prefix)) {}

  std::string FieldName(std::string_view field) const {
    return prefix_.empty() ? std::string(field)
                           : absl::StrCat(prefix_, ".", AsAbsl(field));
  }

  absl::Status Error(std::string_view field, const JsonValue* value,
                     std::string_view what) const {
    if (value == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(AsAbsl(origin_), ": field \"", FieldName(field), "\" ",
                       AsAbsl(what)));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(origin_), ": field \"", FieldName(field),
                     "\" (at byte ", value->offset(), ") ", AsAbsl(what)));
  }

  // The field, or nullptr when absent, null, or when this reader has no
  // object (e.g. no "metadata").
  const JsonValue* Find(std::string_view field) const {
    if (object_ == nullptr) return nullptr;
    const JsonValue* value = object_->Find(field);
    if (value == nullptr || value->is_null()) return nullptr;
    return value;
  }

  absl::Status WrongType(std::string_view field, const JsonValue* value,
                         std::string_view expected) const {
    return Error(field, value,
                 absl::StrCat("must be ", AsAbsl(expected), ", found ",
                              JsonValue::TypeName(value->type())));
  }

  // An integer in [min, max]; nullopt when absent.
  absl::StatusOr<std::optional<int64_t>> Integer(std::string_view field,
                                                 int64_t min,
                                                 int64_t max) const {
    const JsonValue* value = Find(field);
    if (value == nullptr) return std::optional<int64_t>();
    const std::optional<int64_t> integer = value->AsInt64();
    if (!integer.has_value()) {
      return value->is_number()
                 ? Error(field, value,
                         absl::StrCat("must be an integer, found ",
                                      value->number_value()))
                 : WrongType(field, value, "an integer");
    }
    if (*integer < min || *integer > max) {
      return Error(
          field, value,
          absl::StrCat("must be in [", min, ", ", max, "], found ", *integer));
    }
    return integer;
  }

  // A string; nullopt when absent.
  absl::StatusOr<std::optional<std::string>> String(
      std::string_view field) const {
    const JsonValue* value = Find(field);
    if (value == nullptr) return std::optional<std::string>();
    if (!value->is_string()) return WrongType(field, value, "a string");
    return std::optional<std::string>(value->string_value());
  }

  // A nested object as a reader (over nothing when absent).
  absl::StatusOr<FieldReader> Object(std::string_view field) const {
    const JsonValue* value = Find(field);
    if (value != nullptr && !value->is_object()) {
      return WrongType(field, value, "an object");
    }
    return FieldReader(value, origin_, FieldName(field));
  }

 private:
  const JsonValue* object_;
  std::string_view origin_;
  std::string prefix_;
};

// The layer L of a TransformerLens hook name "blocks.L.<anything>", or
// nullopt.
std::optional<int64_t> LayerOfHookName(std::string_view hook_name) {
  constexpr std::string_view kPrefix = "blocks.";
  if (hook_name.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  hook_name.remove_prefix(kPrefix.size());
  const size_t dot = hook_name.find('.');
  if (dot == std::string_view::npos || dot == 0) return std::nullopt;
  int64_t layer = 0;
  if (!absl::SimpleAtoi(AsAbsl(hook_name.substr(0, dot)), &layer) ||
      layer < 0) {
    return std::nullopt;
  }
  return layer;
}

// Resolves the saetrack architecture. SAELens spells it in "architecture"
// ("standard", "topk", ...) and, before 4.x had a TopK architecture, as
// "standard" with activation_fn_str "topk" (newer files still carry the
// activation function; SAELens 6 renames it "activation_fn").
absl::StatusOr<std::string> ResolveArchitecture(const FieldReader& top) {
  SAETRACK_ASSIGN_OR_RETURN(const std::optional<std::string> name,
                            top.String("architecture"));
  std::string architecture = kReluL1;
  if (name.has_value()) {
    if (*name == "standard" || *name == "relu" || *name == kReluL1) {
      architecture = kReluL1;
    } else if (*name == kTopK) {
      architecture = kTopK;
    } else {
      return top.Error("architecture", top.Find("architecture"),
                       absl::StrCat("is \"", *name,
                                    "\", not a supported architecture "
                                    "(supported: \"standard\", \"relu\", "
                                    "\"relu_l1\", \"topk\")"));
    }
  }
  for (const char* field : {"activation_fn_str", "activation_fn"}) {
    SAETRACK_ASSIGN_OR_RETURN(const std::optional<std::string> activation,
                              top.String(field));
    if (!activation.has_value()) continue;
    if (*activation == kTopK) {
      architecture = kTopK;
    } else if (*activation != "relu") {
      return top.Error(field, top.Find(field),
                       absl::StrCat("is \"", *activation,
                                    "\", not a supported activation function "
                                    "(supported: \"relu\", \"topk\")"));
    } else if (architecture == kTopK) {
      return top.Error(field, top.Find(field),
                       "is \"relu\" but the architecture is \"topk\"");
    }
  }
  return architecture;
}

// k of a TopK config: top-level "k" (SAELens 6, saetrack) and/or
// activation_fn_kwargs.k (SAELens 3-5); both must agree when both exist.
absl::StatusOr<int> ResolveK(const FieldReader& top, int64_t d_sae) {
  SAETRACK_ASSIGN_OR_RETURN(const std::optional<int64_t> top_k,
                            top.Integer("k", 1, d_sae));
  SAETRACK_ASSIGN_OR_RETURN(const FieldReader kwargs,
                            top.Object("activation_fn_kwargs"));
  SAETRACK_ASSIGN_OR_RETURN(const std::optional<int64_t> kwargs_k,
                            kwargs.Integer("k", 1, d_sae));
  if (top_k.has_value() && kwargs_k.has_value() && *top_k != *kwargs_k) {
    return kwargs.Error(
        "k", kwargs.Find("k"),
        absl::StrCat("is ", *kwargs_k, " but field \"k\" is ", *top_k));
  }
  if (!top_k.has_value() && !kwargs_k.has_value()) {
    return top.Error("k", nullptr,
                     "is missing (a topk SAE needs \"k\" or "
                     "\"activation_fn_kwargs\": {\"k\": ...})");
  }
  // d_sae bounds k, and the config stores it as an int.
  const int64_t k = top_k.has_value() ? *top_k : *kwargs_k;
  if (k > std::numeric_limits<int>::max()) {
    return top.Error("k", top.Find("k"), "is too large");
  }
  return static_cast<int>(k);
}

// A string field read from the top level, else from "metadata" (SAELens 6
// moved hook and model fields there).
absl::StatusOr<std::optional<std::string>> TopOrMetadataString(
    const FieldReader& top, const FieldReader& metadata,
    std::string_view field) {
  SAETRACK_ASSIGN_OR_RETURN(std::optional<std::string> value,
                            top.String(field));
  if (value.has_value()) return value;
  return metadata.String(field);
}

// Checks `config` as WriteSaelensDir needs it (the parser enforces the same
// rules on files).
absl::Status ValidateConfig(const SaelensConfig& config) {
  if (config.architecture != kReluL1 && config.architecture != kTopK) {
    return absl::InvalidArgumentError(
        absl::StrCat("SAELens config: architecture \"", config.architecture,
                     "\" is not \"relu_l1\" or \"topk\""));
  }
  if (config.d_in <= 0 || config.d_sae <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("SAELens config: d_in (", config.d_in, ") and d_sae (",
                     config.d_sae, ") must be positive"));
  }
  if (config.architecture == kTopK &&
      (config.k < 1 || config.k > config.d_sae)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SAELens config: topk needs k in [1, d_sae = ", config.d_sae,
        "], found ", config.k));
  }
  if (config.hook_layer < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SAELens config: hook_layer must be >= 0, found ", config.hook_layer));
  }
  return absl::OkStatus();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Checks that `weights` holds exactly the four SAE tensors, F32, in the
// shapes `config` implies. Errors name the file and the tensor.
absl::Status ValidateWeights(const SafetensorsFile& weights,
                             const SaelensConfig& config) {
  struct Expected {
    const char* name;
    std::vector<int64_t> shape;
  };
  const Expected expected[] = {
      {"W_enc", {config.d_in, config.d_sae}},
      {"b_enc", {config.d_sae}},
      {"W_dec", {config.d_sae, config.d_in}},
      {"b_dec", {config.d_in}},
  };
  const auto describe = [&](const TensorView& tensor) {
    return absl::StrCat(weights.origin(), ": tensor \"", tensor.name,
                        "\" (data at byte ", tensor.file_offset, ")");
  };
  for (const Expected& want : expected) {
    const TensorView* tensor = weights.Find(want.name);
    if (tensor == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          weights.origin(), ": tensor \"", want.name,
          "\" is missing (a SAELens SAE needs W_enc, b_enc, W_dec, b_dec)"));
    }
    if (tensor->dtype != Dtype::kF32) {
      return absl::InvalidArgumentError(
          absl::StrCat(describe(*tensor), " has dtype ",
                       DtypeName(tensor->dtype), ", expected F32"));
    }
    if (tensor->shape != want.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          describe(*tensor), " has shape ", ShapeString(tensor->shape),
          ", expected ", ShapeString(want.shape), " for d_in = ", config.d_in,
          ", d_sae = ", config.d_sae, " of the config"));
    }
  }
  // Anything else (a JumpReLU threshold, a fine-tuning scaling factor) would
  // change what the SAE computes; dropping it silently would be wrong.
  for (const TensorView& tensor : weights.tensors()) {
    bool known = false;
    for (const Expected& want : expected) known |= tensor.name == want.name;
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat(describe(tensor),
                       " is not part of a relu_l1 or topk SAE (expected only "
                       "W_enc, b_enc, W_dec, b_dec)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CreateDirectories(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::ErrnoToStatus(error.value(),
                               absl::StrCat("cannot create directory ", dir));
  }
  return absl::OkStatus();
}

}  // namespace

std::string HookName(int layer, std::string_view site) {
  return absl::StrCat("blocks.", layer, ".hook_", AsAbsl(site));
}

std::string SaelensConfigToJson(const SaelensConfig& cfg) {
  const bool topk = cfg.architecture == kTopK;
  JsonValue::Object kwargs;
  if (topk) kwargs.emplace_back("k", JsonValue::Integer(cfg.k));

  // Field set and order follow SAELens's SAEConfig.to_dict (3.x-5.x).
  // context_size, dataset_path and dataset_trust_remote_code are required
  // constructor arguments of SAELens 3-5's SAEConfig (its loader defaults
  // neither context_size nor dataset_path), so they are written, as null /
  // "" / false, for those versions to load the file.
  JsonValue::Object members;
  members.emplace_back(
      "architecture",
      JsonValue::String(SaelensArchitectureName(cfg.architecture)));
  members.emplace_back("d_in", JsonValue::Integer(cfg.d_in));
  members.emplace_back("d_sae", JsonValue::Integer(cfg.d_sae));
  members.emplace_back("dtype", JsonValue::String(cfg.dtype));
  members.emplace_back("device", JsonValue::String("cpu"));
  members.emplace_back("model_name", JsonValue::String(cfg.model_name));
  members.emplace_back("hook_name", JsonValue::String(cfg.hook_name));
  members.emplace_back("hook_layer", JsonValue::Integer(cfg.hook_layer));
  members.emplace_back("hook_head_index", JsonValue());
  members.emplace_back("activation_fn_str",
                       JsonValue::String(topk ? "topk" : "relu"));
  members.emplace_back("activation_fn_kwargs",
                       JsonValue::MakeObject(std::move(kwargs)));
  if (topk) members.emplace_back("k", JsonValue::Integer(cfg.k));
  members.emplace_back("apply_b_dec_to_input", JsonValue::Bool(true));
  members.emplace_back("finetuning_scaling_factor", JsonValue::Bool(false));
  members.emplace_back("sae_lens_training_version", JsonValue());
  // saetrack's contexts are plain windows of the token file, no BOS added.
  members.emplace_back("prepend_bos", JsonValue::Bool(false));
  members.emplace_back("dataset_path", JsonValue::String(""));
  members.emplace_back("dataset_trust_remote_code", JsonValue::Bool(false));
  members.emplace_back("context_size", JsonValue());
  members.emplace_back("normalize_activations", JsonValue::String("none"));
  members.emplace_back("neuronpedia_id", JsonValue());
  members.emplace_back("model_from_pretrained_kwargs",
                       JsonValue::MakeObject({}));
  members.emplace_back(
      "metadata",
      JsonValue::MakeObject({
          {"saetrack_architecture", JsonValue::String(cfg.architecture)},
          {"checkpoint_step", JsonValue::Integer(cfg.checkpoint_step)},
          {"job_id", JsonValue::String(cfg.job_id)},
          {"model_name", JsonValue::String(cfg.model_name)},
          {"hook_name", JsonValue::String(cfg.hook_name)},
      }));

  std::string out;
  AppendPretty(JsonValue::MakeObject(std::move(members)), 0, out);
  out.push_back('\n');
  return out;
}

absl::StatusOr<SaelensConfig> ParseSaelensConfig(std::string_view json,
                                                 std::string_view origin) {
  SAETRACK_ASSIGN_OR_RETURN(const JsonValue root, ParseJson(json, origin));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        AsAbsl(origin), ": expected a JSON object at the top level, found ",
        JsonValue::TypeName(root.type())));
  }
  const FieldReader top(&root, origin, "");
  SAETRACK_ASSIGN_OR_RETURN(const FieldReader metadata, top.Object("metadata"));
  SaelensConfig config;

  SAETRACK_ASSIGN_OR_RETURN(config.architecture, ResolveArchitecture(top));
  // saetrack's own record of the architecture must agree with SAELens's.
  SAETRACK_ASSIGN_OR_RETURN(const std::optional<std::string> saetrack_arch,
                            metadata.String("saetrack_architecture"));
  if (saetrack_arch.has_value() && *saetrack_arch != config.architecture) {
    return metadata.Error("saetrack_architecture",
                          metadata.Find("saetrack_architecture"),
                          absl::StrCat("is \"", *saetrack_arch,
                                       "\" but the SAELens fields say \"",
                                       config.architecture, "\""));
  }

  constexpr int64_t kMaxInt64 = std::numeric_limits<int64_t>::max();
  const std::pair<const char*, int64_t*> sizes[] = {{"d_in", &config.d_in},
                                                    {"d_sae", &config.d_sae}};
  for (const auto& [field, out] : sizes) {
    SAETRACK_ASSIGN_OR_RETURN(const std::optional<int64_t> value,
                              top.Integer(field, 1, kMaxInt64));
    if (!value.has_value()) return top.Error(field, nullptr, "is missing");
    *out = *value;
  }
  if (config.architecture == kTopK) {
    SAETRACK_ASSIGN_OR_RETURN(config.k, ResolveK(top, config.d_sae));
  }

  SAETRACK_ASSIGN_OR_RETURN(const std::optional<std::string> dtype,
                            top.String("dtype"));
  if (dtype.has_value()) config.dtype = *dtype;

  SAETRACK_ASSIGN_OR_RETURN(const std::optional<std::string> model_name,
                            TopOrMetadataString(top, metadata, "model_name"));
  if (model_name.has_value()) config.model_name = *model_name;
  // SAELens before 1.x called the hook "hook_point".
  SAETRACK_ASSIGN_OR_RETURN(std::optional<std::string> hook_name,
                            TopOrMetadataString(top, metadata, "hook_name"));
  if (!hook_name.has_value()) {
    SAETRACK_ASSIGN_OR_RETURN(hook_name, top.String("hook_point"));
  }
  if (hook_name.has_value()) config.hook_name = *hook_name;

  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  std::optional<int64_t> hook_layer;
  for (const FieldReader* reader : {&top, &metadata}) {
    for (const char* field : {"hook_layer", "hook_point_layer"}) {
      if (hook_layer.has_value()) break;
      SAETRACK_ASSIGN_OR_RETURN(hook_layer, reader->Integer(field, 0, kMaxInt));
    }
  }
  if (!hook_layer.has_value()) hook_layer = LayerOfHookName(config.hook_name);
  if (hook_layer.has_value() && *hook_layer <= kMaxInt) {
    config.hook_layer = static_cast<int>(*hook_layer);
  }

  SAETRACK_ASSIGN_OR_RETURN(const std::optional<int64_t> step,
                            metadata.Integer("checkpoint_step", 0, kMaxInt64));
  if (step.has_value()) config.checkpoint_step = *step;
  SAETRACK_ASSIGN_OR_RETURN(const std::optional<std::string> job_id,
                            metadata.String("job_id"));
  if (job_id.has_value()) config.job_id = *job_id;
  return config;
}

absl::Status WriteSaelensDir(const std::string& dir, const SaelensConfig& cfg,
                             std::string_view sae_safetensors) {
  SAETRACK_RETURN_IF_ERROR(ValidateConfig(cfg));
  const std::string config_path = absl::StrCat(dir, "/", kSaelensConfigFile);
  const std::string weights_path = absl::StrCat(dir, "/", kSaelensWeightsFile);
  SAETRACK_ASSIGN_OR_RETURN(
      const SafetensorsFile weights,
      SafetensorsFile::FromBytes(std::string(sae_safetensors), weights_path));
  SAETRACK_RETURN_IF_ERROR(ValidateWeights(weights, cfg));
  // Reading the text back catches what the serialiser cannot reject itself
  // (strings that are not UTF-8), so no unreadable cfg.json is written.
  const std::string config_json = SaelensConfigToJson(cfg);
  SAETRACK_RETURN_IF_ERROR(
      ParseSaelensConfig(config_json, config_path).status());

  SAETRACK_RETURN_IF_ERROR(CreateDirectories(dir));
  SAETRACK_RETURN_IF_ERROR(WriteFileAtomically(weights_path, sae_safetensors));
  return WriteFileAtomically(config_path, config_json);
}

absl::StatusOr<SaelensSae> ReadSaelensDir(const std::string& dir) {
  const std::string config_path = absl::StrCat(dir, "/", kSaelensConfigFile);
  const std::string weights_path = absl::StrCat(dir, "/", kSaelensWeightsFile);
  SAETRACK_ASSIGN_OR_RETURN(const std::string config_json,
                            ReadFileToString(config_path));
  SaelensSae sae;
  SAETRACK_ASSIGN_OR_RETURN(sae.config,
                            ParseSaelensConfig(config_json, config_path));
  // One read: the bytes returned are the bytes validated.
  SAETRACK_ASSIGN_OR_RETURN(sae.safetensors, ReadFileToString(weights_path));
  SAETRACK_ASSIGN_OR_RETURN(
      const SafetensorsFile weights,
      SafetensorsFile::FromBytes(sae.safetensors, weights_path));
  SAETRACK_RETURN_IF_ERROR(ValidateWeights(weights, sae.config));
  return sae;
}

}  // namespace saetrack::format
