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

}  // namespace
}  // namespace saetrack::storage
