#include "server/internal/upload_checks.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "format/json.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/reflection.h"

namespace saetrack::server {
namespace {

using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::Reflection;

// Cosines computed in float may pass +-1 by rounding.
constexpr double kCosineSlack = 1e-4;

absl::Status OutOfRange(const std::string& field, double value,
                        const char* range) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", value, " out of range ", range));
}

// A double field of CheckpointMetrics (or a message inside it) at `field`.
absl::Status CheckMetricDouble(const std::string& field,
                               const std::string& name, double value) {
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " is not finite"));
  }
  if (absl::StrContains(name, "fraction")) {
    if (value < 0 || value > 1) return OutOfRange(field, value, "[0, 1]");
  } else if (absl::StrContains(name, "cos")) {
    if (std::abs(value) > 1 + kCosineSlack) {
      return OutOfRange(field, value, "[-1, 1]");
    }
  } else if (name != "loss_recovered" && value < 0) {
    return OutOfRange(field, value, "(must be >= 0)");
  }
  return absl::OkStatus();
}

absl::Status CheckMetricInteger(const std::string& field, int64_t value) {
  if (value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " out of range (must be >= 0)"));
  }
  return absl::OkStatus();
}

// Walks every set field of `message` (recursively) with the rules of
// CheckCheckpointMetrics.
absl::Status CheckMetricMessage(const Message& message,
                                const std::string& prefix) {
  const Reflection* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string base = absl::StrCat(prefix, ".", f->name());
    const int n = f->is_repeated() ? reflection->FieldSize(message, f) : 1;
    for (int i = 0; i < n; ++i) {
      const std::string field =
          f->is_repeated() ? absl::StrCat(base, "[", i, "]") : base;
      absl::Status s;
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_DOUBLE:
          s = CheckMetricDouble(
              field, f->name(),
              f->is_repeated() ? reflection->GetRepeatedDouble(message, f, i)
                               : reflection->GetDouble(message, f));
          break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          s = CheckMetricDouble(
              field, f->name(),
              f->is_repeated() ? reflection->GetRepeatedFloat(message, f, i)
                               : reflection->GetFloat(message, f));
          break;
        case FieldDescriptor::CPPTYPE_INT32:
          s = CheckMetricInteger(
              field, f->is_repeated()
                         ? reflection->GetRepeatedInt32(message, f, i)
                         : reflection->GetInt32(message, f));
          break;
        case FieldDescriptor::CPPTYPE_INT64:
          s = CheckMetricInteger(
              field, f->is_repeated()
                         ? reflection->GetRepeatedInt64(message, f, i)
                         : reflection->GetInt64(message, f));
          break;
        case FieldDescriptor::CPPTYPE_MESSAGE:
          s = CheckMetricMessage(
              f->is_repeated() ? reflection->GetRepeatedMessage(message, f, i)
                               : reflection->GetMessage(message, f),
              field);
          break;
        default:  // Strings, bools, unsigned seeds: any value is fine.
          break;
      }
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckLength(const char* artifact, const char* field, int size,
                         int64_t expected, const char* expected_name) {
  if (size == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(artifact, ".", field, ": ", size, " entries, expected ",
                   expected_name, " = ", expected));
}

// Every entry of `values` finite and in [lo, hi]; NaN allowed when
// `nan_ok` (an undefined value).
absl::Status CheckFloats(const char* artifact, const char* field,
                         const google::protobuf::RepeatedField<float>& values,
                         double lo, double hi, bool nan_ok = false) {
  for (int i = 0; i < values.size(); ++i) {
    const float v = values[i];
    if (std::isnan(v) && nan_ok) continue;
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat(
          artifact, ".", field, "[", i, "]: ", v, " is not finite"));
    }
    if (v < lo || v > hi) {
      return absl::InvalidArgumentError(
          absl::StrCat(artifact, ".", field, "[", i, "]: ", v,
                       " out of range [", lo, ", ", hi, "]"));
    }
  }
  return absl::OkStatus();
}

constexpr double kAny = std::numeric_limits<double>::max();

// Token ids of logit effects: the coordinator does not load the model, so
// it bounds them by a limit above any LM vocabulary (2^24) rather than the
// model's own vocab; the tokenizer, when the job has one, decodes those it
// knows at query time.
constexpr int32_t kMaxVocab = int32_t{1} << 24;

// The shape of tensor `name` in safetensors header `header`; empty when
// absent or malformed.
std::vector<int64_t> ShapeOf(const format::JsonValue& header,
                             const char* name) {
  const format::JsonValue* tensor = header.Find(name);
  std::vector<int64_t> shape;
  if (tensor == nullptr || !tensor->is_object()) return shape;
  const format::JsonValue* dims = tensor->Find("shape");
  if (dims == nullptr || !dims->is_array()) return shape;
  for (const format::JsonValue& d : dims->array()) {
    std::optional<int64_t> v = d.AsInt64();
    if (!v.has_value()) return {};
    shape.push_back(*v);
  }
  return shape;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    absl::StrAppend(&out, i > 0 ? ", " : "", shape[i]);
  }
  return out + "]";
}

}  // namespace

absl::Status CheckCheckpointMetrics(const v1::CheckpointMetrics& metrics,
                                    const UploadLease& lease) {
  if (metrics.layer() != 0 && metrics.layer() != lease.layer) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics.layer: ", metrics.layer(),
                     " differs from the lease's layer ", lease.layer));
  }
  if (metrics.step() != 0 && metrics.step() != lease.step) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics.step: ", metrics.step(),
                     " differs from the lease's step ", lease.step));
  }
  if (metrics.chain_index() != 0 &&
      metrics.chain_index() != lease.chain_index) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics.chain_index: ", metrics.chain_index(),
        " differs from the lease's chain index ", lease.chain_index));
  }
  if (metrics.d_sae() != 0 && metrics.d_sae() != lease.d_sae) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics.d_sae: ", metrics.d_sae(),
                     " differs from the job's spec.sae.d_sae ", lease.d_sae));
  }
  if (absl::Status s = CheckMetricMessage(metrics, "metrics"); !s.ok()) {
    return s;
  }
  if (metrics.l0() > lease.d_sae) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics.l0: ", metrics.l0(), " exceeds d_sae ",
                     lease.d_sae, " (the mean count of active features)"));
  }
  return absl::OkStatus();
}

absl::Status CheckFeatureStats(const v1::FeatureStatsBlock& stats, int d_sae) {
  constexpr char kArtifact[] = "FEATURE_STATS";
  for (absl::Status s :
       {CheckLength(kArtifact, "frequency", stats.frequency_size(), d_sae,
                    "d_sae"),
        CheckLength(kArtifact, "mean_activation", stats.mean_activation_size(),
                    d_sae, "d_sae"),
        CheckLength(kArtifact, "max_activation", stats.max_activation_size(),
                    d_sae, "d_sae"),
        CheckLength(kArtifact, "encoder_norm", stats.encoder_norm_size(), d_sae,
                    "d_sae"),
        stats.decoder_cos_prev_size() == 0
            ? absl::OkStatus()
            : CheckLength(kArtifact, "decoder_cos_prev",
                          stats.decoder_cos_prev_size(), d_sae, "d_sae"),
        CheckFloats(kArtifact, "frequency", stats.frequency(), 0, 1),
        CheckFloats(kArtifact, "mean_activation", stats.mean_activation(),
                    -kAny, kAny),
        CheckFloats(kArtifact, "max_activation", stats.max_activation(), -kAny,
                    kAny),
        CheckFloats(kArtifact, "encoder_norm", stats.encoder_norm(), 0, kAny),
        CheckFloats(kArtifact, "decoder_cos_prev", stats.decoder_cos_prev(),
                    -1 - kCosineSlack, 1 + kCosineSlack, /*nan_ok=*/true)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// The logit effects of a FEATURE_ANALYSIS block (CheckFeatureAnalysis).
absl::Status CheckLogitEffects(const v1::FeatureAnalysisBlock& block, int d_sae,
                               const v1::JobSpec& spec) {
  constexpr char kArtifact[] = "FEATURE_ANALYSIS";
  const int k = block.logit_effects_k();
  const int spec_k = spec.analysis().logit_effects_k();
  // k may be below the spec's when the model's vocab is smaller than it.
  if (k < 0 || k > spec_k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FEATURE_ANALYSIS.logit_effects_k: ", k,
        " must be in [0, spec.analysis.logit_effects_k = ", spec_k, "]"));
  }
  const int64_t n = int64_t{d_sae} * k;
  constexpr char kN[] = "d_sae * logit_effects_k";
  for (absl::Status s : {CheckLength(kArtifact, "promoted_tokens",
                                     block.promoted_tokens_size(), n, kN),
                         CheckLength(kArtifact, "promoted_values",
                                     block.promoted_values_size(), n, kN),
                         CheckLength(kArtifact, "suppressed_tokens",
                                     block.suppressed_tokens_size(), n, kN),
                         CheckLength(kArtifact, "suppressed_values",
                                     block.suppressed_values_size(), n, kN),
                         CheckFloats(kArtifact, "promoted_values",
                                     block.promoted_values(), -kAny, kAny),
                         CheckFloats(kArtifact, "suppressed_values",
                                     block.suppressed_values(), -kAny, kAny)}) {
    if (!s.ok()) return s;
  }
  for (const auto& [name, tokens] :
       {std::pair<const char*, const google::protobuf::RepeatedField<int32_t>*>{
            "promoted_tokens", &block.promoted_tokens()},
        {"suppressed_tokens", &block.suppressed_tokens()}}) {
    for (int j = 0; j < tokens->size(); ++j) {
      if (tokens->Get(j) < 0 || tokens->Get(j) >= kMaxVocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            "FEATURE_ANALYSIS.", name, "[", j, "]: ", tokens->Get(j),
            " is not a token id in [0, ", kMaxVocab, ")"));
      }
    }
  }
  // Sorted per feature: promoted descending, suppressed ascending.
  for (int64_t j = 0; j < n; ++j) {
    if (j % k == 0) continue;
    const int i = static_cast<int>(j);
    if (block.promoted_values(i) > block.promoted_values(i - 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FEATURE_ANALYSIS.promoted_values[", j,
          "]: ", block.promoted_values(i), " exceeds the entry before it (",
          "descending per feature)"));
    }
    if (block.suppressed_values(i) < block.suppressed_values(i - 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FEATURE_ANALYSIS.suppressed_values[", j,
          "]: ", block.suppressed_values(i), " is below the entry before it (",
          "ascending per feature)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckFeatureAnalysis(const v1::FeatureAnalysisBlock& block,
                                  const UploadLease& lease,
                                  const v1::JobSpec& spec) {
  constexpr char kArtifact[] = "FEATURE_ANALYSIS";
  if (block.top_k() != lease.top_k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FEATURE_ANALYSIS.top_k: ", block.top_k(),
        " differs from the job's spec.analysis.top_k ", lease.top_k));
  }
  const int64_t context_length = spec.data().context_length();
  const int64_t analysis_tokens = spec.analysis().analysis_tokens();
  if (context_length > 0 && analysis_tokens > 0) {
    const int64_t most = (analysis_tokens + context_length - 1) /
                         context_length * context_length;
    const int64_t n = block.analysis_positions();
    if (n <= 0 || n > most || n % context_length != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FEATURE_ANALYSIS.analysis_positions: ", n,
          " must be a positive multiple of spec.data.context_length ",
          context_length, " and at most ", most,
          " (spec.analysis.analysis_tokens in whole contexts)"));
    }
  } else if (block.analysis_positions() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FEATURE_ANALYSIS.analysis_positions: ", block.analysis_positions(),
        " must be > 0"));
  }
  const int d_sae = lease.d_sae;
  const int64_t top = int64_t{d_sae} * lease.top_k;
  constexpr char kTop[] = "d_sae * top_k";
  for (absl::Status s :
       {CheckLength(kArtifact, "frequency", block.frequency_size(), d_sae,
                    "d_sae"),
        CheckLength(kArtifact, "mean_activation", block.mean_activation_size(),
                    d_sae, "d_sae"),
        CheckLength(kArtifact, "max_activation", block.max_activation_size(),
                    d_sae, "d_sae"),
        CheckLength(kArtifact, "progress_activation",
                    block.progress_activation_size(), d_sae, "d_sae"),
        CheckLength(kArtifact, "progress_feature",
                    block.progress_feature_size(), d_sae, "d_sae"),
        // Optional: absent from workers that do not measure it.
        block.progress_token_controlled_size() == 0
            ? absl::OkStatus()
            : CheckLength(kArtifact, "progress_token_controlled",
                          block.progress_token_controlled_size(), d_sae,
                          "d_sae"),
        CheckLength(kArtifact, "top_positions", block.top_positions_size(), top,
                    kTop),
        CheckLength(kArtifact, "top_values", block.top_values_size(), top,
                    kTop),
        CheckLength(kArtifact, "top_tokens", block.top_tokens_size(), top,
                    kTop),
        CheckFloats(kArtifact, "frequency", block.frequency(), 0, 1),
        CheckFloats(kArtifact, "mean_activation", block.mean_activation(),
                    -kAny, kAny),
        CheckFloats(kArtifact, "max_activation", block.max_activation(), -kAny,
                    kAny),
        CheckFloats(kArtifact, "top_values", block.top_values(), -kAny, kAny),
        CheckFloats(kArtifact, "progress_activation",
                    block.progress_activation(), -kAny, kAny, true),
        CheckFloats(kArtifact, "progress_feature", block.progress_feature(),
                    -kAny, kAny, true),
        CheckFloats(kArtifact, "progress_token_controlled",
                    block.progress_token_controlled(), -kAny, kAny, true)}) {
    if (!s.ok()) return s;
  }
  for (const auto& [name, value] :
       {std::pair<const char*, double>{"activation_baseline",
                                       block.activation_baseline()},
        {"feature_baseline", block.feature_baseline()}}) {
    if (std::isinf(value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FEATURE_ANALYSIS.", name, ": ", value, " is not finite"));
    }
  }
  if (absl::Status s = CheckLogitEffects(block, d_sae, spec); !s.ok()) {
    return s;
  }
  for (int64_t j = 0; j < top; ++j) {
    const int32_t p = block.top_positions(static_cast<int>(j));
    if (p < -1 || p >= block.analysis_positions()) {
      return absl::InvalidArgumentError(
          absl::StrCat("FEATURE_ANALYSIS.top_positions[", j, "]: ", p,
                       " is outside the analysis set's ",
                       block.analysis_positions(), " positions (-1 pads)"));
    }
    const int32_t t = block.top_tokens(static_cast<int>(j));
    if (t < -1) {
      return absl::InvalidArgumentError(
          absl::StrCat("FEATURE_ANALYSIS.top_tokens[", j, "]: ", t,
                       " is not a token id (-1 pads)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSaeWeightsHeader(std::string_view header, int d_sae,
                                   int d_in) {
  absl::StatusOr<format::JsonValue> json =
      format::ParseJson(header, "SAE_WEIGHTS header");
  if (!json.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SAE_WEIGHTS: ", json.status().message()));
  }
  const std::vector<int64_t> w_enc = ShapeOf(*json, "W_enc");
  const int64_t in = w_enc.size() == 2 ? w_enc[0] : 0;
  if (in <= 0 || (d_in > 0 && in != d_in)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SAE_WEIGHTS.W_enc: shape ", ShapeString(w_enc), ", expected [d_in",
        d_in > 0 ? absl::StrCat(" = ", d_in) : "", ", d_sae = ", d_sae, "]"));
  }
  const std::pair<const char*, std::vector<int64_t>> expected[] = {
      {"W_enc", {in, d_sae}},
      {"b_enc", {d_sae}},
      {"W_dec", {d_sae, in}},
      {"b_dec", {in}}};
  for (const auto& [name, shape] : expected) {
    const std::vector<int64_t> got = ShapeOf(*json, name);
    if (got != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SAE_WEIGHTS.", name, ": shape ", ShapeString(got), ", expected ",
          ShapeString(shape), " (d_sae ", d_sae, ", d_in ", in, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace saetrack::server
