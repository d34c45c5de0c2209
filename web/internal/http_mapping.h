// The seam between HTTP and the saetrack.v1 API in saetrack-web: URL input
// checked and turned into requests, answers and errors turned into JSON and
// HTTP status codes. Pure functions; thread-safe.
#ifndef SAETRACK_WEB_INTERNAL_HTTP_MAPPING_H_
#define SAETRACK_WEB_INTERNAL_HTTP_MAPPING_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "saetrack/v1/query.pb.h"

namespace saetrack::web::internal {

// Query parameters of one request, by name (the last value of a repeated
// name wins).
using QueryParams = std::map<std::string, std::string>;

// INVALID_ARGUMENT, OUT_OF_RANGE -> 400, UNAUTHENTICATED -> 401,
// PERMISSION_DENIED -> 403, NOT_FOUND -> 404, ALREADY_EXISTS, ABORTED -> 409,
// FAILED_PRECONDITION -> 412, RESOURCE_EXHAUSTED -> 429, UNIMPLEMENTED -> 501,
// UNAVAILABLE -> 503, DEADLINE_EXCEEDED -> 504, everything else -> 500;
// OK -> 200.
int HttpStatusFor(absl::StatusCode code);

// `text` as a JSON string literal (quotes, backslashes and control
// characters escaped; other bytes, UTF-8 included, as they are).
std::string JsonString(absl::string_view text);

// {"error":{"code":"NOT_FOUND","http_status":404,"message":"..."}}.
std::string ErrorJson(const absl::Status& status);

// The proto JSON mapping, one line, proto field names, default values
// printed (what the CLI's --json prints, without the indentation).
std::string ToJson(const google::protobuf::Message& message);

// A job id as the coordinator makes them: 1 to 128 of [A-Za-z0-9._-].
// kInvalidArgument naming `job` otherwise.
absl::Status CheckJobId(absl::string_view job_id);

// A decimal integer in [0, 2^31 - 1]; kInvalidArgument naming `name`.
absl::StatusOr<int32_t> ParseIndex(absl::string_view name,
                                   absl::string_view value);

// ListFeatures of (job, layer) from the query parameters kind
// (token_level|concept_level|dead|any), order (id|formation|drift|frequency),
// min_formation/max_formation (steps, integers >= 0),
// min_frequency/max_frequency (finite numbers in [0, 1]), page_size
// (1..10000) and page_token. kInvalidArgument naming the parameter for a
// malformed value or an unknown parameter.
absl::StatusOr<v1::ListFeaturesRequest> ParseListFeatures(
    const std::string& job_id, int32_t layer, const QueryParams& params);

// GetFeatureHistory of (job, layer, feature) from the query parameters
// contexts (0|1), before and after (context window tokens, 0..64).
// kInvalidArgument naming the parameter otherwise.
absl::StatusOr<v1::GetFeatureHistoryRequest> ParseFeatureHistory(
    const std::string& job_id, int32_t layer, int32_t feature_id,
    const QueryParams& params);

// ListJobs paging: page_size (1..1000) and page_token.
absl::Status CheckJobListParams(const QueryParams& params);

}  // namespace saetrack::web::internal

#endif  // SAETRACK_WEB_INTERNAL_HTTP_MAPPING_H_
