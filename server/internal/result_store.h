// Typed records of the result side of the database: SAE weights, feature
// histories and checkpoint metrics.
#ifndef SAETRACK_SERVER_INTERNAL_RESULT_STORE_H_
#define SAETRACK_SERVER_INTERNAL_RESULT_STORE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "saetrack/v1/query.pb.h"
#include "saetrack/v1/worker.pb.h"
#include "storage/kv_store.h"

namespace saetrack::server {

// Encodes one SAE's results into a write batch and reads results back. Does
// not own the store (which must outlive it). Thread-safe, as the store is.
class ResultStore {
 public:
  // SAE weights larger than `sae_part_bytes` are stored in parts.
  explicit ResultStore(storage::KvStore* store,
                       int64_t sae_part_bytes = int64_t{64} << 20)
      : store_(store), sae_part_bytes_(sae_part_bytes) {}

  // Reads `n` bytes at `offset` of an artifact, appending them to `out`.
  using ReadFn =
      std::function<absl::Status(int64_t offset, int64_t n, std::string* out)>;
  // Adds the SAE weights of (job, layer, step) to `batch`.
  static void AddSaeWeights(const std::string& job_id, int32_t layer,
                            int64_t step, std::string weights,
                            storage::WriteBatch* batch);
  // Adds the `size` bytes of SAE weights that `read` gives to `batch`: in
  // one value up to sae_part_bytes; larger ones are written now as parts of
  // that size (one part in memory at a time, not synced: the synced batch
  // that completes the task syncs the log they are in) and `batch` gets
  // their manifest. Call AbandonSaeParts when `batch` is not written.
  absl::Status StageSaeWeights(const std::string& job_id, int32_t layer,
                               int64_t step, int64_t lease_epoch, int64_t size,
                               const ReadFn& read,
                               storage::WriteBatch* batch) const;
  // Removes the parts StageSaeWeights wrote for `lease_epoch`, unless the
  // stored manifest is theirs.
  absl::Status AbandonSaeParts(const std::string& job_id, int32_t layer,
                               int64_t step, int64_t lease_epoch) const;
  // Removes the parts of every attempt that never committed (at start);
  // returns how many attempts were cleaned.
  absl::StatusOr<int> RecoverSaeParts() const;
  // Adds one FeaturePoint per feature of `stats`.
  // REQUIRES: the vectors of `stats` have equal lengths (decoder_cos_prev may
  // be empty).
  static void AddFeaturePoints(const std::string& job_id, int32_t layer,
                               int64_t step, int32_t chain_index,
                               const v1::FeatureStatsBlock& stats,
                               storage::WriteBatch* batch);
  // Adds `metrics` under (job, metrics.layer, metrics.chain_index).
  static void AddCheckpointMetrics(const std::string& job_id,
                                   const v1::CheckpointMetrics& metrics,
                                   storage::WriteBatch* batch);

  // Adds the analysis pass of (job, layer, step) to the feature points
  // already stored for it (read here; the training task wrote them): the
  // analysis-set statistics, progress measure and logit effects (on the
  // point: about 225 bytes with the default 10 each way), and the top
  // contexts apart (AddFeatureContexts). With
  // `keep_block`, also stores `block` itself (the final checkpoint's, whose
  // top positions the other passes download as their reference).
  // REQUIRES: the vectors of `block` have lengths d_sae (d_sae * top_k for
  // the top_* ones, d_sae * logit_effects_k for the logit effects' or all
  // four empty). Errors: kNotFound naming a missing point, storage
  // errors.
  absl::Status AddAnalysis(const std::string& job_id, int32_t layer,
                           int64_t step, const v1::FeatureAnalysisBlock& block,
                           bool keep_block, storage::WriteBatch* batch) const;
  // The stored analysis block of (job, layer, step). Errors: kNotFound.
  absl::StatusOr<std::string> GetAnalysisBlock(const std::string& job_id,
                                               int32_t layer,
                                               int64_t step) const;

  static void AddFeatureSummary(const std::string& job_id, int32_t layer,
                                const v1::FeatureSummary& summary,
                                storage::WriteBatch* batch);
  static void AddDriftSummary(const v1::DriftSummary& summary,
                              storage::WriteBatch* batch);
  static void AddFeaturePoint(const std::string& job_id, int32_t layer,
                              int32_t feature, const v1::FeaturePoint& point,
                              storage::WriteBatch* batch);
  // The top contexts of one point, kept apart from the point itself (they
  // are most of its bytes and few queries want them): a FeaturePoint with
  // only step and contexts set.
  static void AddFeatureContexts(const std::string& job_id, int32_t layer,
                                 int32_t feature, const v1::FeaturePoint& point,
                                 storage::WriteBatch* batch);
  // Every stored contexts record of one feature, in step order.
  absl::StatusOr<std::vector<v1::FeaturePoint>> GetFeatureContexts(
      const std::string& job_id, int32_t layer, int32_t feature) const;
  // nullopt when not stored (yet).
  absl::StatusOr<std::optional<v1::FeaturePoint>> GetFeatureContextsAt(
      const std::string& job_id, int32_t layer, int32_t feature,
      int64_t step) const;
  // nullopt when not stored (yet).
  absl::StatusOr<std::optional<v1::FeatureSummary>> GetFeatureSummary(
      const std::string& job_id, int32_t layer, int32_t feature) const;
  absl::StatusOr<std::optional<v1::DriftSummary>> GetDriftSummary(
      const std::string& job_id, int32_t layer) const;
  // Every stored feature summary of (job, layer) passed to `fn` in feature
  // order until it returns false.
  absl::Status ScanFeatureSummaries(
      const std::string& job_id, int32_t layer,
      const std::function<bool(const v1::FeatureSummary&)>& fn) const;

  // Errors: kNotFound naming the SAE when it is not stored; kDataLoss when
  // its parts are missing or do not match their manifest.
  absl::StatusOr<std::string> GetSaeWeights(const std::string& job_id,
                                            int32_t layer, int64_t step) const;
  // The same bytes passed to `fn` piece by piece (at most sae_part_bytes
  // each) without holding the whole; returns the total size. Errors as
  // GetSaeWeights, and `fn`'s.
  absl::StatusOr<int64_t> ReadSaeWeights(
      const std::string& job_id, int32_t layer, int64_t step,
      const std::function<absl::Status(std::string_view piece)>& fn) const;
  // The stored points of one feature, in chain order (one prefix scan).
  absl::StatusOr<std::vector<v1::FeaturePoint>> GetFeatureHistory(
      const std::string& job_id, int32_t layer, int32_t feature) const;
  // The stored metrics of one layer, in chain order.
  absl::StatusOr<std::vector<v1::CheckpointMetrics>> GetCheckpointMetrics(
      const std::string& job_id, int32_t layer) const;

 private:
  storage::KvStore* const store_;
  const int64_t sae_part_bytes_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_RESULT_STORE_H_
