// Contract tests run against every KvStore implementation.
#include "storage/kv_store.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/keys.h"

namespace saetrack::storage {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

using Entries = std::vector<std::pair<std::string, std::string>>;

Entries ScanAll(const KvStore& store, Column column, std::string_view prefix,
                std::string_view start = {}) {
  Entries out;
  absl::Status s = store.Scan(
      column, prefix, start, [&](std::string_view k, std::string_view v) {
        out.emplace_back(std::string(k), std::string(v));
        return true;
      });
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

struct InMemoryFactory {
  std::unique_ptr<KvStore> Make() { return NewInMemoryStore(); }
};

struct RocksDbFactory {
  RocksDbFactory() {
    std::string tmpl = testing::TempDir() + "/kv_store_test.XXXXXX";
    dir = mkdtemp(tmpl.data());
  }
  ~RocksDbFactory() { std::filesystem::remove_all(dir); }
  std::unique_ptr<KvStore> Make() {
    absl::StatusOr<std::unique_ptr<KvStore>> store =
        OpenRocksDbStore({.path = dir + "/db"});
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }
  std::string dir;
};

template <typename Factory>
class KvStoreTest : public testing::Test {
 protected:
  void SetUp() override {
    store_ = factory_.Make();
    ASSERT_NE(store_, nullptr);
  }
  Factory factory_;
  std::unique_ptr<KvStore> store_;
};

using Implementations = testing::Types<InMemoryFactory, RocksDbFactory>;
TYPED_TEST_SUITE(KvStoreTest, Implementations);

TYPED_TEST(KvStoreTest, GetMissingIsNotFound) {
  EXPECT_EQ(this->store_->Get(Column::kJobs, "nope").status().code(),
            absl::StatusCode::kNotFound);
}

TYPED_TEST(KvStoreTest, PutGetDelete) {
  WriteBatch batch;
  batch.Put(Column::kJobs, "a", "1");
  batch.Put(Column::kTasks, "a", "task");
  ASSERT_TRUE(this->store_->Write(batch, {.sync = true}).ok());
  EXPECT_EQ(this->store_->Get(Column::kJobs, "a").value(), "1");
  // Column families are separate namespaces.
  EXPECT_EQ(this->store_->Get(Column::kTasks, "a").value(), "task");
  EXPECT_EQ(this->store_->Get(Column::kMeta, "a").status().code(),
            absl::StatusCode::kNotFound);

  WriteBatch del;
  del.Delete(Column::kJobs, "a");
  ASSERT_TRUE(this->store_->Write(del, {}).ok());
  EXPECT_EQ(this->store_->Get(Column::kJobs, "a").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(this->store_->Get(Column::kTasks, "a").value(), "task");
}

TYPED_TEST(KvStoreTest, BatchAppliesInOrder) {
  WriteBatch batch;
  batch.Put(Column::kMeta, "k", "first");
  batch.Put(Column::kMeta, "k", "second");
  batch.Put(Column::kMeta, "gone", "x");
  batch.Delete(Column::kMeta, "gone");
  EXPECT_EQ(batch.ByteSize(), 1u + 5 + 1 + 6 + 4 + 1 + 4);
  ASSERT_TRUE(this->store_->Write(batch, {}).ok());
  EXPECT_EQ(this->store_->Get(Column::kMeta, "k").value(), "second");
  EXPECT_EQ(this->store_->Get(Column::kMeta, "gone").status().code(),
            absl::StatusCode::kNotFound);
}

TYPED_TEST(KvStoreTest, BinaryKeysAndValues) {
  std::string key("\x00\xff\x01", 3);
  std::string value("v\x00w", 3);
  WriteBatch batch;
  batch.Put(Column::kSaeWeights, key, value);
  ASSERT_TRUE(this->store_->Write(batch, {}).ok());
  EXPECT_EQ(this->store_->Get(Column::kSaeWeights, key).value(), value);
}

TYPED_TEST(KvStoreTest, LargeValueRoundTrips) {
  // Above min_blob_size: goes to a blob file in RocksDB.
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31);
  WriteBatch batch;
  batch.Put(Column::kSaeWeights, SaeWeightsKey("job-1", 0, 512), big);
  ASSERT_TRUE(this->store_->Write(batch, {.sync = true}).ok());
  EXPECT_EQ(
      this->store_->Get(Column::kSaeWeights, SaeWeightsKey("job-1", 0, 512))
          .value(),
      big);
}

TYPED_TEST(KvStoreTest, PrefixScanReturnsFeatureHistoryInStepOrder) {
  WriteBatch batch;
  // Written out of order, with neighbours that must not be returned.
  for (int64_t step : {1000, 0, 143000, 8, 1}) {
    batch.Put(Column::kFeatureHistory, FeatureHistoryKey("job-1", 3, 42, step),
              std::to_string(step));
  }
  batch.Put(Column::kFeatureHistory, FeatureHistoryKey("job-1", 3, 41, 5), "x");
  batch.Put(Column::kFeatureHistory, FeatureHistoryKey("job-1", 3, 43, 5), "x");
  batch.Put(Column::kFeatureHistory, FeatureHistoryKey("job-10", 3, 42, 5),
            "x");
  ASSERT_TRUE(this->store_->Write(batch, {}).ok());

  Entries got = ScanAll(*this->store_, Column::kFeatureHistory,
                        FeatureHistoryPrefix("job-1", 3, 42));
  std::vector<std::string> values;
  for (auto& [k, v] : got) values.push_back(v);
  EXPECT_THAT(values, ElementsAre("0", "1", "8", "1000", "143000"));
}

TYPED_TEST(KvStoreTest, ScanFromStartKeyAndStopEarly) {
  WriteBatch batch;
  for (std::string k : {"p/a", "p/b", "p/c", "p/d", "q/a"}) {
    batch.Put(Column::kJobs, k, k);
  }
  batch.Put(Column::kJobs, std::string("p\xff", 2), "ff");
  ASSERT_TRUE(this->store_->Write(batch, {}).ok());

  EXPECT_THAT(
      ScanAll(*this->store_, Column::kJobs, "p/", "p/b"),
      ElementsAre(Pair("p/b", "p/b"), Pair("p/c", "p/c"), Pair("p/d", "p/d")));
  // A start before the prefix starts at the prefix.
  EXPECT_EQ(ScanAll(*this->store_, Column::kJobs, "p/", "a").size(), 4u);
  // A prefix ending in 0xFF has no simple successor.
  EXPECT_THAT(ScanAll(*this->store_, Column::kJobs, std::string("p\xff", 2)),
              ElementsAre(Pair(std::string("p\xff", 2), "ff")));
  // Whole column.
  EXPECT_EQ(ScanAll(*this->store_, Column::kJobs, "").size(), 6u);

  int visited = 0;
  ASSERT_TRUE(this->store_
                  ->Scan(Column::kJobs, "p/", "",
                         [&](std::string_view, std::string_view) {
                           return ++visited < 2;
                         })
                  .ok());
  EXPECT_EQ(visited, 2);
}

TYPED_TEST(KvStoreTest, EmptyScanVisitsNothing) {
  EXPECT_TRUE(ScanAll(*this->store_, Column::kCheckpointMetrics,
                      CheckpointMetricsPrefix("job-1", 0))
                  .empty());
}

TEST(InMemoryStoreTest, CheckpointIsUnimplementedAndBytesAreCounted) {
  std::unique_ptr<KvStore> store = NewInMemoryStore();
  EXPECT_EQ(store->Checkpoint("/tmp/x").code(),
            absl::StatusCode::kUnimplemented);
  WriteBatch batch;
  batch.Put(Column::kJobs, "ab", "cde");
  ASSERT_TRUE(store->Write(batch, {}).ok());
  EXPECT_EQ(store->LiveDataBytes().value(), 5u);
}

// A store whose every call fails with INTERNAL.
class FailingStore final : public KvStore {
 public:
  absl::StatusOr<std::string> Get(Column, std::string_view) const override {
    return absl::InternalError("get");
  }
  absl::Status Write(const WriteBatch&, const WriteOptions&) override {
    return absl::InternalError("write");
  }
  absl::Status Scan(Column, std::string_view, std::string_view,
                    ScanVisitor) const override {
    return absl::InternalError("scan");
  }
  absl::StatusOr<uint64_t> LiveDataBytes() const override {
    return absl::InternalError("bytes");
  }
  absl::Status Checkpoint(const std::string&) override {
    return absl::InternalError("checkpoint");
  }
};

TEST(ErrorObservingStoreTest, ReportsEveryFailureByOperation) {
  int reads = 0;
  int writes = 0;
  std::unique_ptr<KvStore> store = NewErrorObservingStore(
      std::make_unique<FailingStore>(),
      [&](StoreOp op) { ++(op == StoreOp::kRead ? reads : writes); });
  EXPECT_EQ(store->Get(Column::kJobs, "k").status().message(), "get");
  EXPECT_EQ(store
                ->Scan(Column::kJobs, "", "",
                       [](std::string_view, std::string_view) { return true; })
                .message(),
            "scan");
  EXPECT_FALSE(store->LiveDataBytes().ok());
  EXPECT_EQ(reads, 3);
  EXPECT_EQ(store->Write(WriteBatch(), {}).message(), "write");
  EXPECT_EQ(store->Checkpoint("/x").message(), "checkpoint");
  EXPECT_EQ(writes, 2);
}

TEST(ErrorObservingStoreTest, NotFoundIsNotAnError) {
  int errors = 0;
  std::unique_ptr<KvStore> store =
      NewErrorObservingStore(NewInMemoryStore(), [&](StoreOp) { ++errors; });
  EXPECT_EQ(store->Get(Column::kJobs, "absent").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Checkpoint("/x").code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(errors, 0);
}

}  // namespace
}  // namespace saetrack::storage
