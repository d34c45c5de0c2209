// The C++ client library of saetrack: typed calls to a coordinator's
// JobService and QueryService, and the download of stored SAEs through its
// WorkerService. No gRPC types cross this header; errors come back as
// absl::Status with the server's code and message.
#ifndef SAETRACK_CLIENT_CLIENT_H_
#define SAETRACK_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/channel_security.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"

namespace saetrack::client {

struct ClientOptions {
  // host:port of the coordinator.
  std::string coordinator = "127.0.0.1:7070";
  // Deadline of each call.
  absl::Duration call_timeout = absl::Seconds(30);
  // TLS and bearer token (all empty: plaintext, no token).
  ChannelSecurity security;
};

// The SAE of one checkpoint in SAELens's layout, as QueryService.ExportSae
// streams it.
struct ExportedSae {
  // The checkpoint exported.
  int64_t step = 0;
  // File name (a plain name, no directory: "cfg.json",
  // "sae_weights.safetensors") -> contents.
  std::map<std::string, std::string> files;
};

// Thread-safe: calls may be made concurrently from several threads.
class SaetrackClient {
 public:
  // Creates a channel; connects lazily, so an unreachable coordinator shows
  // up as kUnavailable on the first call. Reads the files options.security
  // names; when one cannot be read (check first with LoadChannelSecurity to
  // get the reason), every call fails with kInvalidArgument.
  static std::unique_ptr<SaetrackClient> Create(const ClientOptions& options);
  virtual ~SaetrackClient() = default;

  virtual absl::StatusOr<v1::SubmitJobResponse> SubmitJob(
      const v1::JobSpec& spec, const std::string& request_id) = 0;
  virtual absl::StatusOr<v1::Job> GetJob(const std::string& job_id) = 0;
  virtual absl::StatusOr<v1::ListJobsResponse> ListJobs(
      int page_size, const std::string& page_token) = 0;
  virtual absl::StatusOr<v1::GetCheckpointMetricsResponse> GetCheckpointMetrics(
      const std::string& job_id, int layer) = 0;
  // QueryService.GetQualityChecks: the trust checks of one hooked layer. The
  // default returns kUnimplemented (for fakes that do not need it).
  virtual absl::StatusOr<v1::GetQualityChecksResponse> GetQualityChecks(
      const std::string& job_id, int layer);
  // QueryService.GetFeatureHistory, as `request` asks (decoder rows,
  // context windows).
  virtual absl::StatusOr<v1::FeatureHistory> GetFeatureHistory(
      const v1::GetFeatureHistoryRequest& request) = 0;
  // The same without decoder rows or context windows. Not virtual: calls
  // the overload above.
  absl::StatusOr<v1::FeatureHistory> GetFeatureHistory(
      const std::string& job_id, int layer, int feature_id);
  // The stored SAE of `job_id`, hooked layer `layer`, checkpoint step `step`:
  // the bytes of its safetensors file (W_enc, b_enc, W_dec, b_dec), streamed
  // in chunks (WorkerService.DownloadSae) and checked on arrival.
  // Errors: the server's (kNotFound for an SAE that is not stored); kDataLoss
  // naming the offset for a chunk that does not continue the bytes received
  // so far, and naming the sizes or checksums when the stream ends without a
  // last chunk, or its total_size or CRC-32C disagrees with the bytes.
  virtual absl::StatusOr<std::string> DownloadSae(const std::string& job_id,
                                                  int layer, int64_t step) = 0;

  // Cancels the job (JobService.CancelJob; idempotent). The default, for
  // fakes that do not need it, returns kUnimplemented.
  virtual absl::StatusOr<v1::CancelJobResponse> CancelJob(
      const std::string& job_id);
  // Follow mode (JobService.AddCheckpoint, CloseJob, RefreshAnalysis): gives
  // a following job the checkpoint of `step` in `path` (absolute on the
  // coordinator), ends its following, or starts a provisional analysis
  // round. The defaults, for fakes that do not need them, return
  // kUnimplemented.
  virtual absl::StatusOr<v1::AddCheckpointResponse> AddCheckpoint(
      const std::string& job_id, int64_t step, const std::string& path);
  virtual absl::StatusOr<v1::CloseJobResponse> CloseJob(
      const std::string& job_id);
  virtual absl::StatusOr<v1::RefreshAnalysisResponse> RefreshAnalysis(
      const std::string& job_id);
  // Follows the job through JobService.WatchJob: calls `on_update` with each
  // update as it arrives until the stream ends, `on_update` returns false
  // (the call is cancelled; OK), or `timeout` (whole stream; infinite for
  // none) passes (kDeadlineExceeded). Returns OK after a terminal update,
  // else the server's error (kUnavailable when it shut down). The default
  // returns kUnimplemented.
  virtual absl::Status WatchJob(
      const std::string& job_id, absl::Duration timeout,
      const std::function<bool(const v1::JobUpdate&)>& on_update);

  // QueryService.ListFeatures: one page of the features matching the
  // request's filter. The default returns kUnimplemented.
  virtual absl::StatusOr<v1::ListFeaturesResponse> ListFeatures(
      const v1::ListFeaturesRequest& request);
  // QueryService.GetDriftSummary of hooked layer `layer`. The default
  // returns kUnimplemented.
  virtual absl::StatusOr<v1::DriftSummary> GetDriftSummary(
      const std::string& job_id, int layer);
  // QueryService.ExportSae: the SAE of checkpoint `step` (unset: the final,
  // latest-step checkpoint) as the files of a SAELens directory, each
  // reassembled from its chunks and checked as DownloadSae checks its one
  // file. Errors: the server's; kDataLoss naming the file and the offsets
  // or sizes or checksums for a file whose chunks do not continue each
  // other, that ends without a last chunk or whose total_size or CRC-32C
  // disagrees with its bytes, and for a stream that names no file, names a
  // file twice or by a name that is not a plain file name, or whose chunks
  // disagree on the step. The default returns kUnimplemented (an older
  // coordinator).
  virtual absl::StatusOr<ExportedSae> ExportSae(const std::string& job_id,
                                                int layer,
                                                std::optional<int64_t> step);
};

}  // namespace saetrack::client

#endif  // SAETRACK_CLIENT_CLIENT_H_
