// RocksDB-specific behaviour: persistence across reopen and open errors.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/keys.h"
#include "storage/kv_store.h"

namespace saetrack::storage {
namespace {

using ::testing::HasSubstr;

class RocksDbStoreTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "/rocksdb_store_test.XXXXXX";
    dir_ = mkdtemp(tmpl.data());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(RocksDbStoreTest, ReopenKeepsEveryColumnFamily) {
  const std::string path = dir_ + "/db";
  std::string big(64 << 10, 'w');
  {
    auto store = OpenRocksDbStore({.path = path});
    ASSERT_TRUE(store.ok()) << store.status();
    WriteBatch batch;
    for (int i = 0; i < kNumColumns; ++i) {
      batch.Put(static_cast<Column>(i), "key",
                std::string(ColumnName(static_cast<Column>(i))));
    }
    batch.Put(Column::kSaeWeights, SaeWeightsKey("job-1", 0, 1), big);
    ASSERT_TRUE((*store)->Write(batch, {.sync = true}).ok());
  }
  auto store = OpenRocksDbStore({.path = path});
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < kNumColumns; ++i) {
    Column c = static_cast<Column>(i);
    EXPECT_EQ((*store)->Get(c, "key").value(), ColumnName(c));
  }
  EXPECT_EQ(
      (*store)->Get(Column::kSaeWeights, SaeWeightsKey("job-1", 0, 1)).value(),
      big);
  // Large SAE values live in blob files.
  bool has_blob = false;
  for (const auto& entry : std::filesystem::directory_iterator(path)) {
    if (entry.path().extension() == ".blob") has_blob = true;
  }
  EXPECT_TRUE(has_blob);
}

TEST_F(RocksDbStoreTest, CreatesMissingDirectory) {
  auto store = OpenRocksDbStore({.path = dir_ + "/a/b/db"});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/a/b/db/CURRENT"));
}

TEST_F(RocksDbStoreTest, FailedOpenNamesTheDirectory) {
  // A regular file where the database directory should be.
  const std::string path = dir_ + "/not-a-dir";
  std::ofstream(path) << "x";
  auto store = OpenRocksDbStore({.path = path});
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(path));
}

TEST_F(RocksDbStoreTest, SecondOpenOfSameDirectoryFailsWhileFirstIsOpen) {
  const std::string path = dir_ + "/db";
  auto first = OpenRocksDbStore({.path = path});
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = OpenRocksDbStore({.path = path});
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr(path));
}

TEST(RocksDbStoreOptionsTest, EmptyPathIsInvalid) {
  EXPECT_EQ(OpenRocksDbStore({}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RocksDbStoreTest, CheckpointIsAnOpenableCopy) {
  const std::string path = dir_ + "/db";
  const std::string copy = dir_ + "/backup";
  std::string big(64 << 10, 'w');
  {
    auto store = OpenRocksDbStore({.path = path});
    ASSERT_TRUE(store.ok()) << store.status();
    WriteBatch batch;
    batch.Put(Column::kJobs, "job-1", "record");
    batch.Put(Column::kSaeWeights, SaeWeightsKey("job-1", 0, 1), big);
    ASSERT_TRUE((*store)->Write(batch, {}).ok());
    ASSERT_TRUE((*store)->Checkpoint(copy).ok());
    // Checkpoint flushed the memtables: the live data counts every write.
    absl::StatusOr<uint64_t> bytes = (*store)->LiveDataBytes();
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_GE(*bytes, big.size());

    absl::Status again = (*store)->Checkpoint(copy);
    EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
    EXPECT_THAT(again.message(), HasSubstr(copy));
    absl::Status relative = (*store)->Checkpoint("relative/backup");
    EXPECT_EQ(relative.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(relative.message(), HasSubstr("relative/backup"));
    absl::Status no_parent = (*store)->Checkpoint(dir_ + "/missing/backup");
    EXPECT_EQ(no_parent.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(no_parent.message(), HasSubstr(dir_ + "/missing"));
    std::ofstream(dir_ + "/file") << "x";
    absl::Status file_parent = (*store)->Checkpoint(dir_ + "/file/backup");
    EXPECT_EQ(file_parent.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(file_parent.message(), HasSubstr(dir_ + "/file/backup"));
  }
  auto store = OpenRocksDbStore({.path = copy});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Get(Column::kJobs, "job-1").value(), "record");
  EXPECT_EQ(
      (*store)->Get(Column::kSaeWeights, SaeWeightsKey("job-1", 0, 1)).value(),
      big);
}

TEST_F(RocksDbStoreTest, ObserverSeesNoErrorsWhenCallsSucceed) {
  int reads = 0;
  int writes = 0;
  auto base = OpenRocksDbStore({.path = dir_ + "/db"});
  ASSERT_TRUE(base.ok()) << base.status();
  std::unique_ptr<KvStore> store = NewErrorObservingStore(
      *std::move(base),
      [&](StoreOp op) { ++(op == StoreOp::kRead ? reads : writes); });
  WriteBatch batch;
  batch.Put(Column::kJobs, "k", "v");
  ASSERT_TRUE(store->Write(batch, {}).ok());
  EXPECT_TRUE(store->Get(Column::kJobs, "absent").status().code() ==
              absl::StatusCode::kNotFound);
  EXPECT_EQ(reads + writes, 0);
  // Refused arguments are not storage failures.
  EXPECT_FALSE(store->Checkpoint("relative").ok());
  EXPECT_EQ(writes, 0);
}

}  // namespace
}  // namespace saetrack::storage
