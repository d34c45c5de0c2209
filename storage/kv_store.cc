#include "storage/kv_store.h"

#include <utility>

namespace saetrack::storage {

std::string_view ColumnName(Column column) {
  switch (column) {
    case Column::kJobs:
      return "jobs";
    case Column::kTasks:
      return "tasks";
    case Column::kSaeWeights:
      return "sae_weights";
    case Column::kFeatureHistory:
      return "feature_history";
    case Column::kCheckpointMetrics:
      return "checkpoint_metrics";
    case Column::kIdempotency:
      return "idempotency";
    case Column::kMeta:
      return "meta";
  }
  return "unknown";
}

void WriteBatch::Put(Column column, std::string key, std::string value) {
  byte_size_ += key.size() + value.size();
  ops_.push_back({OpType::kPut, column, std::move(key), std::move(value)});
}

void WriteBatch::Delete(Column column, std::string key) {
  byte_size_ += key.size();
  ops_.push_back({OpType::kDelete, column, std::move(key), std::string()});
}

}  // namespace saetrack::storage
