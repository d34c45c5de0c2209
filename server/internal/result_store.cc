#include "server/internal/result_store.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "storage/keys.h"

namespace saetrack::server {

using storage::Column;

void ResultStore::AddSaeWeights(const std::string& job_id, int32_t layer,
                                int64_t step, std::string weights,
                                storage::WriteBatch* batch) {
  batch->Put(Column::kSaeWeights, storage::SaeWeightsKey(job_id, layer, step),
             std::move(weights));
}

void ResultStore::AddFeaturePoints(const std::string& job_id, int32_t layer,
                                   int64_t step, int32_t chain_index,
                                   const v1::FeatureStatsBlock& stats,
                                   storage::WriteBatch* batch) {
  const int n = stats.frequency_size();
  const bool has_cos = stats.decoder_cos_prev_size() == n;
  v1::FeaturePoint point;
  point.set_step(step);
  point.set_chain_index(chain_index);
  std::string value;
  for (int i = 0; i < n; ++i) {
    point.set_frequency(stats.frequency(i));
    point.set_mean_activation(stats.mean_activation(i));
    point.set_max_activation(stats.max_activation(i));
    if (has_cos) point.set_decoder_cos_prev(stats.decoder_cos_prev(i));
    point.set_encoder_norm(stats.encoder_norm(i));
    point.SerializeToString(&value);
    batch->Put(Column::kFeatureHistory,
               storage::FeatureHistoryKey(job_id, layer, i, step), value);
  }
}

void ResultStore::AddCheckpointMetrics(const std::string& job_id,
                                       const v1::CheckpointMetrics& metrics,
                                       storage::WriteBatch* batch) {
  batch->Put(Column::kCheckpointMetrics,
             storage::CheckpointMetricsKey(job_id, metrics.layer(),
                                           metrics.chain_index()),
             metrics.SerializeAsString());
}

absl::StatusOr<std::string> ResultStore::GetSaeWeights(
    const std::string& job_id, int32_t layer, int64_t step) const {
  absl::StatusOr<std::string> value = store_->Get(
      Column::kSaeWeights, storage::SaeWeightsKey(job_id, layer, step));
  if (absl::IsNotFound(value.status())) {
    return absl::NotFoundError(absl::StrCat("no SAE stored for job '", job_id,
                                            "' layer ", layer, " step ", step));
  }
  return value;
}

namespace {

// Parses every value under `prefix` of `column`, in key order, as a T.
// kDataLoss naming `what` when one does not parse.
template <typename T>
absl::StatusOr<std::vector<T>> ScanMessages(const storage::KvStore& store,
                                            Column column,
                                            const std::string& prefix,
                                            const std::string& what) {
  std::vector<T> messages;
  bool corrupt = false;
  absl::Status s = store.Scan(
      column, prefix, "", [&](std::string_view, std::string_view value) {
        corrupt = !messages.emplace_back().ParseFromArray(
            value.data(), static_cast<int>(value.size()));
        return !corrupt;
      });
  if (!s.ok()) return s;
  if (corrupt) return absl::DataLossError(absl::StrCat(what, " is corrupt"));
  return messages;
}

}  // namespace

absl::StatusOr<std::vector<v1::FeaturePoint>> ResultStore::GetFeatureHistory(
    const std::string& job_id, int32_t layer, int32_t feature) const {
  absl::StatusOr<std::vector<v1::FeaturePoint>> points =
      ScanMessages<v1::FeaturePoint>(
          *store_, Column::kFeatureHistory,
          storage::FeatureHistoryPrefix(job_id, layer, feature),
          absl::StrCat("feature history of job '", job_id, "' layer ", layer,
                       " feature ", feature));
  if (!points.ok()) return points;
  // Keys are in step order; a BACKWARD chain runs against it.
  std::stable_sort(points->begin(), points->end(),
                   [](const v1::FeaturePoint& a, const v1::FeaturePoint& b) {
                     return a.chain_index() < b.chain_index();
                   });
  return points;
}

absl::StatusOr<std::vector<v1::CheckpointMetrics>>
ResultStore::GetCheckpointMetrics(const std::string& job_id,
                                  int32_t layer) const {
  return ScanMessages<v1::CheckpointMetrics>(
      *store_, Column::kCheckpointMetrics,
      storage::CheckpointMetricsPrefix(job_id, layer),
      absl::StrCat("checkpoint metrics of job '", job_id, "' layer ", layer));
}

}  // namespace saetrack::server
