#include "storage/kv_store.h"

#include <memory>
#include <string>
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
    case Column::kFeatureSummaries:
      return "feature_summaries";
    case Column::kAnalysis:
      return "analysis";
    case Column::kFeatureContexts:
      return "feature_contexts";
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

namespace {

class ErrorObservingStore final : public KvStore {
 public:
  ErrorObservingStore(std::unique_ptr<KvStore> base,
                      absl::AnyInvocable<void(StoreOp) const> on_error)
      : base_(std::move(base)), on_error_(std::move(on_error)) {}

  absl::StatusOr<std::string> Get(Column column,
                                  std::string_view key) const override {
    absl::StatusOr<std::string> value = base_->Get(column, key);
    if (!value.ok() && !absl::IsNotFound(value.status())) {
      on_error_(StoreOp::kRead);
    }
    return value;
  }

  absl::Status Write(const WriteBatch& batch,
                     const WriteOptions& options) override {
    return Observe(base_->Write(batch, options), StoreOp::kWrite);
  }

  absl::Status Scan(Column column, std::string_view prefix,
                    std::string_view start, ScanVisitor visit) const override {
    return Observe(base_->Scan(column, prefix, start, visit), StoreOp::kRead);
  }

  absl::StatusOr<uint64_t> LiveDataBytes() const override {
    absl::StatusOr<uint64_t> bytes = base_->LiveDataBytes();
    if (!bytes.ok()) on_error_(StoreOp::kRead);
    return bytes;
  }

  absl::Status Checkpoint(const std::string& dir) override {
    absl::Status s = base_->Checkpoint(dir);
    // Refused arguments and the in-memory store are not storage failures.
    if (!s.ok() && !absl::IsInvalidArgument(s) && !absl::IsAlreadyExists(s) &&
        !absl::IsUnimplemented(s)) {
      on_error_(StoreOp::kWrite);
    }
    return s;
  }

 private:
  absl::Status Observe(absl::Status s, StoreOp op) const {
    if (!s.ok()) on_error_(op);
    return s;
  }

  const std::unique_ptr<KvStore> base_;
  const absl::AnyInvocable<void(StoreOp) const> on_error_;
};

}  // namespace

std::unique_ptr<KvStore> NewErrorObservingStore(
    std::unique_ptr<KvStore> base,
    absl::AnyInvocable<void(StoreOp) const> on_error) {
  return std::make_unique<ErrorObservingStore>(std::move(base),
                                               std::move(on_error));
}

}  // namespace saetrack::storage
