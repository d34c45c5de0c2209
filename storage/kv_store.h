// The coordinator's key-value storage: a few column families, atomic multi-key
// writes and ordered prefix scans. Two implementations: RocksDB in a directory
// (the real one) and an in-memory map (for unit tests of the layers above).
// No RocksDB type appears here; rocksdb::Status is converted to absl::Status
// inside the RocksDB implementation only.
#ifndef SAETRACK_STORAGE_KV_STORE_H_
#define SAETRACK_STORAGE_KV_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saetrack::storage {

// Column families, one per access pattern.
enum class Column {
  kJobs,               // job_id -> Job record.
  kTasks,              // TaskKey(job, hook, chain) -> task record.
  kSaeWeights,         // SaeWeightsKey(job, layer, step) -> safetensors bytes.
  kFeatureHistory,     // FeatureHistoryKey(job, layer, feature, step) -> point.
  kCheckpointMetrics,  // CheckpointMetricsKey(job, layer, chain) -> metrics.
  kIdempotency,        // request_id -> job_id + spec fingerprint.
  kMeta,               // counters.
  kFeatureSummaries,   // FeatureSummaryKey(job, layer, feature) -> summary.
  kAnalysis,           // Drift summaries and reference analysis blocks.
  kFeatureContexts,    // FeatureHistoryKey(...) -> top contexts of a point.
};
inline constexpr int kNumColumns = 10;

// The column family's name on disk ("jobs", "sae_weights", ...).
std::string_view ColumnName(Column column);

// A list of puts and deletes applied atomically by KvStore::Write. Operations
// apply in the order they were added. Thread-compatible.
class WriteBatch {
 public:
  enum class OpType { kPut, kDelete };
  struct Op {
    OpType type;
    Column column;
    std::string key;
    std::string value;  // Empty for kDelete.
  };

  void Put(Column column, std::string key, std::string value);
  void Delete(Column column, std::string key);

  const std::vector<Op>& ops() const { return ops_; }
  bool empty() const { return ops_.empty(); }
  // Sum of the sizes of all keys and values.
  size_t ByteSize() const { return byte_size_; }

 private:
  std::vector<Op> ops_;
  size_t byte_size_ = 0;
};

struct WriteOptions {
  // Wait until the write-ahead log is synced to disk before returning. Use for
  // state transitions that must survive a machine crash.
  bool sync = false;
};

// Called for every entry of a scan, in ascending key order. Return false to
// stop the scan early. The views are valid only during the call, and the
// visitor must not call back into the store.
using ScanVisitor =
    absl::FunctionRef<bool(std::string_view key, std::string_view value)>;

// Thread-safe: all methods may be called concurrently. Writes are atomic: a
// concurrent reader sees all of a batch or none of it.
class KvStore {
 public:
  virtual ~KvStore() = default;

  // The value stored under `key`. Errors: kNotFound when absent; others for
  // I/O failures.
  virtual absl::StatusOr<std::string> Get(Column column,
                                          std::string_view key) const = 0;

  // Applies every operation of `batch` atomically (write-ahead logged).
  // On error nothing of the batch is applied.
  virtual absl::Status Write(const WriteBatch& batch,
                             const WriteOptions& options) = 0;

  // Visits, in ascending bytewise key order, every entry of `column` whose key
  // starts with `prefix` and is >= `start` (empty `start`: from the first key
  // with the prefix). An empty prefix scans the whole column family.
  virtual absl::Status Scan(Column column, std::string_view prefix,
                            std::string_view start,
                            ScanVisitor visit) const = 0;

  // Bytes of live data held by the store: for RocksDB the SST and live blob
  // files of every column family (memtables excluded), for the in-memory
  // store the sum of key and value sizes.
  virtual absl::StatusOr<uint64_t> LiveDataBytes() const = 0;

  // Writes a consistent, openable copy of the whole store into `dir`, which
  // must be an absolute path that does not exist yet (its parent must).
  // Errors: kInvalidArgument (relative path), kAlreadyExists, kUnimplemented
  // (in-memory store), others for I/O failures; all name `dir`.
  virtual absl::Status Checkpoint(const std::string& dir) = 0;
};

// Which kind of store call failed, for NewErrorObservingStore.
enum class StoreOp { kRead, kWrite };

// Wraps `base`: every call is forwarded, and every failure except a Get's
// kNotFound is reported to `on_error` (read: Get, Scan, LiveDataBytes;
// write: Write, Checkpoint) before being returned unchanged. `on_error` must
// be thread-safe.
std::unique_ptr<KvStore> NewErrorObservingStore(
    std::unique_ptr<KvStore> base,
    absl::AnyInvocable<void(StoreOp) const> on_error);

struct RocksDbStoreOptions {
  // Directory of the database. Created, with its parents and any missing
  // column families, when absent.
  std::string path;

  // --- performance ---
  // Values of the sae_weights column family at least this large are stored in
  // blob files (integrated BlobDB) instead of the LSM tree.
  uint64_t min_blob_size = 4096;
  // Background compaction/flush threads.
  int background_jobs = 2;
};

// Opens (or creates) a RocksDB store. Errors name `options.path`.
absl::StatusOr<std::unique_ptr<KvStore>> OpenRocksDbStore(
    const RocksDbStoreOptions& options);

// An empty store held in memory; lost on destruction.
std::unique_ptr<KvStore> NewInMemoryStore();

}  // namespace saetrack::storage

#endif  // SAETRACK_STORAGE_KV_STORE_H_
