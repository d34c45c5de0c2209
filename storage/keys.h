// Order-preserving key encodings for the column families of KvStore.
//
// Integers are written big-endian at fixed width with the sign bit flipped,
// so bytewise key order equals numeric order (negative before positive).
// Strings are written as their bytes followed by a 0x00 terminator, so the
// prefix of job "job-1" never matches job "job-10"; they must not contain NUL.
//
// Feature-history keys are feature-major (`job | layer | feature | step`), so
// one prefix scan over FeatureHistoryPrefix(job, layer, feature) returns that
// feature's whole history in step order.
#ifndef SAETRACK_STORAGE_KEYS_H_
#define SAETRACK_STORAGE_KEYS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace saetrack::storage {

// Appends encoded components to a key. Thread-compatible.
class KeyBuilder {
 public:
  // REQUIRES: `s` contains no NUL byte.
  KeyBuilder& AddString(std::string_view s);
  KeyBuilder& AddInt32(int32_t v);
  KeyBuilder& AddInt64(int64_t v);

  const std::string& key() const { return key_; }
  std::string Release() { return std::move(key_); }

 private:
  std::string key_;
};

// Reads components written by KeyBuilder, in the same order. Each Read*
// returns kInvalidArgument when the key is too short or malformed. Holds a
// view of the key: the key must outlive the reader.
class KeyReader {
 public:
  explicit KeyReader(std::string_view key) : rest_(key) {}

  absl::StatusOr<std::string> ReadString();
  absl::StatusOr<int32_t> ReadInt32();
  absl::StatusOr<int64_t> ReadInt64();
  // True when every byte has been read.
  bool AtEnd() const { return rest_.empty(); }

 private:
  std::string_view rest_;
};

// --- keys of the column families ---

// jobs: one record per job.
std::string JobKey(std::string_view job_id);

// tasks: one record per (hook, chain position), grouped by job.
std::string TaskKey(std::string_view job_id, int32_t hook_index,
                    int32_t chain_index);
// Tasks of another kind than training (analysis passes, summaries) at the
// same position: `kind` > 0 is appended, so such keys sort after the
// training task's.
std::string TaskKey(std::string_view job_id, int32_t hook_index,
                    int32_t chain_index, int32_t kind);
// All tasks of a job, in (hook, chain) order.
std::string TaskPrefix(std::string_view job_id);

// sae_weights: one SAE per (job, layer, checkpoint step).
std::string SaeWeightsKey(std::string_view job_id, int32_t layer, int64_t step);
// An SAE larger than one value: its manifest (in place of SaeWeightsKey)
// and its parts, keyed by the lease epoch that wrote them so that parts of
// an attempt that never committed are told apart from the stored ones.
std::string SaeWeightsManifestKey(std::string_view job_id, int32_t layer,
                                  int64_t step);
std::string SaeWeightsPartKey(std::string_view job_id, int32_t layer,
                              int64_t step, int64_t lease_epoch, int32_t part);

// feature_history: one point per (job, layer, feature, checkpoint step).
std::string FeatureHistoryKey(std::string_view job_id, int32_t layer,
                              int32_t feature, int64_t step);
std::string FeatureHistoryPrefix(std::string_view job_id, int32_t layer,
                                 int32_t feature);

struct FeatureHistoryKeyParts {
  std::string job_id;
  int32_t layer = 0;
  int32_t feature = 0;
  int64_t step = 0;
};
// Errors: kInvalidArgument when `key` is not a feature-history key.
absl::StatusOr<FeatureHistoryKeyParts> ParseFeatureHistoryKey(
    std::string_view key);

// checkpoint_metrics: one record per (job, layer, chain position).
std::string CheckpointMetricsKey(std::string_view job_id, int32_t layer,
                                 int32_t chain_index);
std::string CheckpointMetricsPrefix(std::string_view job_id, int32_t layer);

// feature_summaries: one summary per (job, layer, feature), in feature order.
std::string FeatureSummaryKey(std::string_view job_id, int32_t layer,
                              int32_t feature);
std::string FeatureSummaryPrefix(std::string_view job_id, int32_t layer);

// analysis: the drift summary of (job, layer), and the analysis block of
// one checkpoint (kept for the final checkpoint: its reference positions).
std::string DriftSummaryKey(std::string_view job_id, int32_t layer);
std::string AnalysisBlockKey(std::string_view job_id, int32_t layer,
                             int64_t step);

}  // namespace saetrack::storage

#endif  // SAETRACK_STORAGE_KEYS_H_
