// saetrack.v1.QueryService.
#ifndef SAETRACK_SERVER_INTERNAL_QUERY_SERVICE_H_
#define SAETRACK_SERVER_INTERNAL_QUERY_SERVICE_H_

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "format/confined_path.h"
#include "format/tokenizer.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/result_store.h"
#include "server/internal/task_scheduler.h"

namespace saetrack::server {

// Answers queries over stored results. Does not own its collaborators (all
// must outlive it). Thread-safe.
class QueryServiceImpl final : public v1::QueryService::Service {
 public:
  // `roots`: the coordinator's data roots; the token and tokenizer files
  // that contexts are read from are opened confined to them (a symlink
  // swapped in after submission is refused). Empty: not confined.
  QueryServiceImpl(const TaskScheduler* scheduler, const ResultStore* results,
                   CoordinatorMetrics* metrics, format::DataRoots roots = {})
      : scheduler_(scheduler),
        results_(results),
        metrics_(metrics),
        roots_(std::move(roots)) {}

  grpc::Status GetFeatureHistory(grpc::ServerContext* context,
                                 const v1::GetFeatureHistoryRequest* request,
                                 v1::FeatureHistory* response) override;
  grpc::Status GetCheckpointMetrics(
      grpc::ServerContext* context,
      const v1::GetCheckpointMetricsRequest* request,
      v1::GetCheckpointMetricsResponse* response) override;
  grpc::Status GetQualityChecks(
      grpc::ServerContext* context, const v1::GetQualityChecksRequest* request,
      v1::GetQualityChecksResponse* response) override;
  grpc::Status ListFeatures(grpc::ServerContext* context,
                            const v1::ListFeaturesRequest* request,
                            v1::ListFeaturesResponse* response) override;
  grpc::Status GetDriftSummary(grpc::ServerContext* context,
                               const v1::GetDriftSummaryRequest* request,
                               v1::DriftSummary* response) override;
  grpc::Status ExportSae(grpc::ServerContext* context,
                         const v1::ExportSaeRequest* request,
                         grpc::ServerWriter<v1::ExportChunk>* writer) override;

 private:
  absl::Status DoListFeatures(const v1::ListFeaturesRequest& request,
                              v1::ListFeaturesResponse* response);
  absl::Status DoGetDriftSummary(const v1::GetDriftSummaryRequest& request,
                                 v1::DriftSummary* response);
  absl::Status DoExportSae(const v1::ExportSaeRequest& request,
                           grpc::ServerWriter<v1::ExportChunk>* writer);
  // Fills the windows (and text, with a tokenizer) of every context of
  // `history` from the job's token file.
  absl::Status FillContexts(const v1::JobSpec& spec, int before, int after,
                            v1::FeatureHistory* history);
  // Fills every point's decoder row from the stored SAEs.
  absl::Status FillDecoders(const std::string& job_id, int32_t layer,
                            v1::FeatureHistory* history) const;
  // kFailedPrecondition explaining why the analysis summary of a layer is
  // absent (no analysis pass in the spec, or not computed yet).
  absl::Status SummaryMissing(const v1::Job& job, int32_t layer) const;
  // The tokenizer at `path`, loaded once; null when it does not load.
  std::shared_ptr<const format::Tokenizer> TokenizerAt(const std::string& path);

  absl::Status DoGetFeatureHistory(const v1::GetFeatureHistoryRequest& request,
                                   v1::FeatureHistory* response);
  absl::Status DoGetCheckpointMetrics(
      const v1::GetCheckpointMetricsRequest& request,
      v1::GetCheckpointMetricsResponse* response);
  absl::Status DoGetQualityChecks(const v1::GetQualityChecksRequest& request,
                                  v1::GetQualityChecksResponse* response);
  // The job, if it exists and hooks `layer`; else kNotFound naming which.
  absl::StatusOr<v1::Job> JobWithLayer(const std::string& job_id,
                                       int32_t layer) const;

  const TaskScheduler* const scheduler_;
  const ResultStore* const results_;
  CoordinatorMetrics* const metrics_;
  const format::DataRoots roots_;

  absl::Mutex tokenizers_mu_;
  std::map<std::string, std::shared_ptr<const format::Tokenizer>> tokenizers_
      ABSL_GUARDED_BY(tokenizers_mu_);
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_QUERY_SERVICE_H_
