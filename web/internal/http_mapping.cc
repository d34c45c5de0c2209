#include "web/internal/http_mapping.h"

#include <cmath>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace saetrack::web::internal {
namespace {

absl::Status Invalid(absl::string_view name, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("query parameter '", name, "': ", why));
}

absl::Status CheckKnown(const QueryParams& params,
                        const std::set<std::string>& known) {
  for (const auto& [name, value] : params) {
    if (known.count(name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown query parameter '", name,
                       "'; expected one of: ", absl::StrJoin(known, ", ")));
    }
  }
  return absl::OkStatus();
}

const std::string* Find(const QueryParams& params, const std::string& name) {
  auto it = params.find(name);
  if (it == params.end() || it->second.empty()) return nullptr;
  return &it->second;
}

absl::StatusOr<int64_t> ParseInt(absl::string_view name,
                                 absl::string_view value, int64_t lo,
                                 int64_t hi) {
  int64_t v = 0;
  if (value.empty() || !absl::ascii_isdigit(value[0]) ||
      !absl::SimpleAtoi(value, &v)) {
    return Invalid(name, absl::StrCat("'", value, "' is not an integer"));
  }
  if (v < lo || v > hi) {
    return Invalid(name, absl::StrCat(v, " is outside [", lo, ", ", hi, "]"));
  }
  return v;
}

absl::StatusOr<double> ParseFrequency(absl::string_view name,
                                      absl::string_view value) {
  double v = 0;
  if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) {
    return Invalid(name, absl::StrCat("'", value, "' is not a finite number"));
  }
  if (v < 0 || v > 1) {
    return Invalid(name, absl::StrCat(v, " is outside [0, 1]"));
  }
  return v;
}

}  // namespace

std::string JsonString(absl::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<int>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kFailedPrecondition:
      return 412;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

std::string ErrorJson(const absl::Status& status) {
  std::string code = absl::StatusCodeToString(status.code());
  absl::AsciiStrToUpper(&code);
  for (char& c : code) {
    if (c == ' ') c = '_';
  }
  return absl::StrCat(R"({"error":{"code":")", code, R"(","http_status":)",
                      HttpStatusFor(status.code()), R"(,"message":)",
                      JsonString(status.message()), "}}");
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  // Printing a well-formed message cannot fail.
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

absl::Status CheckJobId(absl::string_view job_id) {
  if (job_id.empty() || job_id.size() > 128) {
    return absl::InvalidArgumentError("job: a job id has 1 to 128 characters");
  }
  for (char c : job_id) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') {
      return absl::InvalidArgumentError(
          absl::StrCat("job: '", absl::CEscape(job_id),
                       "' is not a job id (letters, digits, '-', '_', '.')"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> ParseIndex(absl::string_view name,
                                   absl::string_view value) {
  int64_t v = 0;
  if (value.empty() || value.size() > 10 ||
      value.find_first_not_of("0123456789") != absl::string_view::npos ||
      !absl::SimpleAtoi(value, &v) || v > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": '", absl::CEscape(value),
                     "' is not an integer in [0, 2147483647]"));
  }
  return static_cast<int32_t>(v);
}

absl::StatusOr<v1::ListFeaturesRequest> ParseListFeatures(
    const std::string& job_id, int32_t layer, const QueryParams& params) {
  if (absl::Status s =
          CheckKnown(params, {"kind", "order", "min_formation", "max_formation",
                              "min_frequency", "max_frequency", "page_size",
                              "page_token"});
      !s.ok()) {
    return s;
  }
  v1::ListFeaturesRequest request;
  request.set_job_id(job_id);
  request.set_layer(layer);
  if (const std::string* kind = Find(params, "kind")) {
    if (*kind == "token_level") {
      request.set_kind(v1::FEATURE_KIND_TOKEN_LEVEL);
    } else if (*kind == "concept_level") {
      request.set_kind(v1::FEATURE_KIND_CONCEPT_LEVEL);
    } else if (*kind == "dead") {
      request.set_kind(v1::FEATURE_KIND_DEAD);
    } else if (*kind != "any") {
      return Invalid("kind", absl::StrCat("'", absl::CEscape(*kind),
                                          "' is not one of token_level, "
                                          "concept_level, dead, any"));
    }
  }
  if (const std::string* order = Find(params, "order")) {
    if (*order == "id") {
      request.set_order_by(v1::ListFeaturesRequest::FEATURE_ID);
    } else if (*order == "formation") {
      request.set_order_by(v1::ListFeaturesRequest::FORMATION_STEP);
    } else if (*order == "drift") {
      request.set_order_by(v1::ListFeaturesRequest::FINAL_DRIFT);
    } else if (*order == "frequency") {
      request.set_order_by(v1::ListFeaturesRequest::FREQUENCY);
    } else {
      return Invalid("order", absl::StrCat("'", absl::CEscape(*order),
                                           "' is not one of id, formation, "
                                           "drift, frequency"));
    }
  }
  constexpr int64_t kMaxStep = int64_t{1} << 53;
  if (const std::string* v = Find(params, "min_formation")) {
    absl::StatusOr<int64_t> step = ParseInt("min_formation", *v, 0, kMaxStep);
    if (!step.ok()) return step.status();
    request.set_min_formation_step(*step);
  }
  if (const std::string* v = Find(params, "max_formation")) {
    absl::StatusOr<int64_t> step = ParseInt("max_formation", *v, 0, kMaxStep);
    if (!step.ok()) return step.status();
    request.set_max_formation_step(*step);
  }
  if (const std::string* v = Find(params, "min_frequency")) {
    absl::StatusOr<double> f = ParseFrequency("min_frequency", *v);
    if (!f.ok()) return f.status();
    request.set_min_frequency(*f);
  }
  if (const std::string* v = Find(params, "max_frequency")) {
    absl::StatusOr<double> f = ParseFrequency("max_frequency", *v);
    if (!f.ok()) return f.status();
    request.set_max_frequency(*f);
  }
  if (const std::string* v = Find(params, "page_size")) {
    absl::StatusOr<int64_t> size = ParseInt("page_size", *v, 1, 10000);
    if (!size.ok()) return size.status();
    request.set_page_size(static_cast<int32_t>(*size));
  }
  if (const std::string* v = Find(params, "page_token")) {
    request.set_page_token(*v);
  }
  return request;
}

absl::StatusOr<v1::GetFeatureHistoryRequest> ParseFeatureHistory(
    const std::string& job_id, int32_t layer, int32_t feature_id,
    const QueryParams& params) {
  if (absl::Status s = CheckKnown(params, {"contexts", "before", "after"});
      !s.ok()) {
    return s;
  }
  v1::GetFeatureHistoryRequest request;
  request.set_job_id(job_id);
  request.set_layer(layer);
  request.set_feature_id(feature_id);
  if (const std::string* v = Find(params, "contexts")) {
    if (*v != "0" && *v != "1") {
      return Invalid("contexts",
                     absl::StrCat("'", absl::CEscape(*v), "' is not 0 or 1"));
    }
    request.set_include_contexts(*v == "1");
  }
  if (const std::string* v = Find(params, "before")) {
    absl::StatusOr<int64_t> n = ParseInt("before", *v, 0, 64);
    if (!n.ok()) return n.status();
    request.set_context_before(static_cast<int32_t>(*n));
  }
  if (const std::string* v = Find(params, "after")) {
    absl::StatusOr<int64_t> n = ParseInt("after", *v, 0, 64);
    if (!n.ok()) return n.status();
    request.set_context_after(static_cast<int32_t>(*n));
  }
  return request;
}

absl::Status CheckJobListParams(const QueryParams& params) {
  if (absl::Status s = CheckKnown(params, {"page_size", "page_token"});
      !s.ok()) {
    return s;
  }
  if (const std::string* v = Find(params, "page_size")) {
    absl::StatusOr<int64_t> size = ParseInt("page_size", *v, 1, 1000);
    if (!size.ok()) return size.status();
  }
  return absl::OkStatus();
}

}  // namespace saetrack::web::internal
