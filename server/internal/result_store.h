// Typed records of the result side of the database: SAE weights, feature
// histories and checkpoint metrics.
#ifndef SAETRACK_SERVER_INTERNAL_RESULT_STORE_H_
#define SAETRACK_SERVER_INTERNAL_RESULT_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "saetrack/v1/query.pb.h"
#include "saetrack/v1/worker.pb.h"
#include "storage/kv_store.h"

namespace saetrack::server {

// Encodes one SAE's results into a write batch and reads results back. Does
// not own the store (which must outlive it). Thread-safe, as the store is.
class ResultStore {
 public:
  explicit ResultStore(storage::KvStore* store) : store_(store) {}

  // Adds the SAE weights of (job, layer, step).
  static void AddSaeWeights(const std::string& job_id, int32_t layer,
                            int64_t step, std::string weights,
                            storage::WriteBatch* batch);
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

  // Errors: kNotFound naming the SAE when it is not stored.
  absl::StatusOr<std::string> GetSaeWeights(const std::string& job_id,
                                            int32_t layer, int64_t step) const;
  // The stored points of one feature, in chain order (one prefix scan).
  absl::StatusOr<std::vector<v1::FeaturePoint>> GetFeatureHistory(
      const std::string& job_id, int32_t layer, int32_t feature) const;
  // The stored metrics of one layer, in chain order.
  absl::StatusOr<std::vector<v1::CheckpointMetrics>> GetCheckpointMetrics(
      const std::string& job_id, int32_t layer) const;

 private:
  storage::KvStore* const store_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_RESULT_STORE_H_
