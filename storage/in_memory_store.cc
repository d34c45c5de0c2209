// The in-memory KvStore: one std::map per column family behind one mutex.
#include <array>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "storage/kv_store.h"

namespace saetrack::storage {
namespace {

class InMemoryStore final : public KvStore {
 public:
  absl::StatusOr<std::string> Get(Column column,
                                  std::string_view key) const override {
    absl::ReaderMutexLock lock(&mu_);
    const auto& map = columns_[static_cast<int>(column)];
    auto it = map.find(key);
    if (it == map.end()) {
      return absl::NotFoundError(
          absl::StrCat("key not found in ", std::string(ColumnName(column))));
    }
    return it->second;
  }

  absl::Status Write(const WriteBatch& batch,
                     const WriteOptions& /*options*/) override {
    absl::MutexLock lock(&mu_);
    for (const WriteBatch::Op& op : batch.ops()) {
      auto& map = columns_[static_cast<int>(op.column)];
      if (op.type == WriteBatch::OpType::kPut) {
        map.insert_or_assign(op.key, op.value);
      } else {
        map.erase(op.key);
      }
    }
    return absl::OkStatus();
  }

  absl::Status Scan(Column column, std::string_view prefix,
                    std::string_view start, ScanVisitor visit) const override {
    // Copy-free iteration under a reader lock: visitors must not call back
    // into the store for writes (documented as views valid during the call).
    absl::ReaderMutexLock lock(&mu_);
    const auto& map = columns_[static_cast<int>(column)];
    std::string_view first = start > prefix ? start : prefix;
    for (auto it = map.lower_bound(first); it != map.end(); ++it) {
      std::string_view key = it->first;
      if (key.substr(0, prefix.size()) != prefix) break;
      if (!visit(key, it->second)) break;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> LiveDataBytes() const override {
    absl::ReaderMutexLock lock(&mu_);
    uint64_t bytes = 0;
    for (const auto& map : columns_) {
      for (const auto& [key, value] : map) bytes += key.size() + value.size();
    }
    return bytes;
  }

  absl::Status Checkpoint(const std::string& dir) override {
    return absl::UnimplementedError(absl::StrCat(
        "checkpoint to '", dir, "': the in-memory store has no checkpoints"));
  }

 private:
  mutable absl::Mutex mu_;
  std::array<std::map<std::string, std::string, std::less<>>, kNumColumns>
      columns_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<KvStore> NewInMemoryStore() {
  return std::make_unique<InMemoryStore>();
}

}  // namespace saetrack::storage
