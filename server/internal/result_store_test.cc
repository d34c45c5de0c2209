#include "server/internal/result_store.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/keys.h"
#include "storage/kv_store.h"

namespace saetrack::server {
namespace {

using storage::Column;

constexpr int64_t kPart = 1024;

// Bytes that differ at every offset, so a part read at the wrong place shows.
std::string Pattern(int64_t n) {
  std::string s(static_cast<size_t>(n), '\0');
  for (int64_t i = 0; i < n; ++i)
    s[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return s;
}

ResultStore::ReadFn ReaderOf(const std::string& bytes) {
  return [&bytes](int64_t offset, int64_t n, std::string* out) {
    out->append(bytes, static_cast<size_t>(offset), static_cast<size_t>(n));
    return absl::OkStatus();
  };
}

int Count(const storage::KvStore& store, Column column) {
  int n = 0;
  EXPECT_TRUE(store
                  .Scan(column, "", "",
                        [&](std::string_view, std::string_view) {
                          ++n;
                          return true;
                        })
                  .ok());
  return n;
}

class ResultStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<storage::KvStore> store_ = storage::NewInMemoryStore();
  ResultStore results_{store_.get(), kPart};
};

TEST_F(ResultStoreTest, SmallSaesAreStoredWhole) {
  const std::string sae = Pattern(kPart);
  storage::WriteBatch batch;
  ASSERT_TRUE(
      results_.StageSaeWeights("j", 1, 8, 3, kPart, ReaderOf(sae), &batch)
          .ok());
  // Nothing is written before the batch.
  EXPECT_EQ(Count(*store_, Column::kSaeWeights), 0);
  ASSERT_TRUE(store_->Write(batch, {}).ok());
  EXPECT_EQ(Count(*store_, Column::kSaeWeights), 1);
  EXPECT_EQ(results_.GetSaeWeights("j", 1, 8).value(), sae);
}

TEST_F(ResultStoreTest, LargeSaesAreStoredInPartsAndPublishedByTheBatch) {
  const std::string sae = Pattern(5 * kPart + 17);
  storage::WriteBatch batch;
  ASSERT_TRUE(results_
                  .StageSaeWeights("j", 1, 8, 3,
                                   static_cast<int64_t>(sae.size()),
                                   ReaderOf(sae), &batch)
                  .ok());
  // Six parts are written, but no SAE is visible until the batch is.
  EXPECT_EQ(Count(*store_, Column::kSaeWeights), 6);
  EXPECT_TRUE(absl::IsNotFound(results_.GetSaeWeights("j", 1, 8).status()));
  ASSERT_TRUE(store_->Write(batch, {}).ok());
  EXPECT_EQ(results_.GetSaeWeights("j", 1, 8).value(), sae);
  std::vector<size_t> pieces;
  std::string streamed;
  auto total = results_.ReadSaeWeights("j", 1, 8, [&](std::string_view p) {
    pieces.push_back(p.size());
    streamed.append(p);
    return absl::OkStatus();
  });
  ASSERT_TRUE(total.ok()) << total.status();
  EXPECT_EQ(*total, static_cast<int64_t>(sae.size()));
  EXPECT_EQ(streamed, sae);
  EXPECT_EQ(pieces, (std::vector<size_t>{1024, 1024, 1024, 1024, 1024, 17}));
  // The pending record went with the batch: a restart cleans nothing.
  EXPECT_EQ(results_.RecoverSaeParts().value(), 0);
  EXPECT_EQ(results_.GetSaeWeights("j", 1, 8).value(), sae);
}

TEST_F(ResultStoreTest, PartsOfAnAttemptThatNeverCommittedAreRemoved) {
  const std::string stored = Pattern(2 * kPart + 1);
  {
    storage::WriteBatch batch;
    ASSERT_TRUE(results_
                    .StageSaeWeights("j", 0, 4, 1,
                                     static_cast<int64_t>(stored.size()),
                                     ReaderOf(stored), &batch)
                    .ok());
    ASSERT_TRUE(store_->Write(batch, {}).ok());
  }
  // Epoch 2 writes its parts and dies before its batch (a crash).
  const std::string lost = Pattern(4 * kPart);
  storage::WriteBatch never_written;
  ASSERT_TRUE(results_
                  .StageSaeWeights("j", 0, 4, 2,
                                   static_cast<int64_t>(lost.size()),
                                   ReaderOf(lost), &never_written)
                  .ok());
  EXPECT_EQ(Count(*store_, Column::kSaeWeights), 1 + 3 + 4);
  EXPECT_EQ(results_.RecoverSaeParts().value(), 1);
  // Only the committed SAE and its parts are left.
  EXPECT_EQ(Count(*store_, Column::kSaeWeights), 1 + 3);
  EXPECT_EQ(Count(*store_, Column::kMeta), 0);
  EXPECT_EQ(results_.GetSaeWeights("j", 0, 4).value(), stored);

  // A retried completion of the committed lease keeps its parts.
  storage::WriteBatch retry;
  ASSERT_TRUE(results_
                  .StageSaeWeights("j", 0, 4, 1,
                                   static_cast<int64_t>(stored.size()),
                                   ReaderOf(stored), &retry)
                  .ok());
  ASSERT_TRUE(results_.AbandonSaeParts("j", 0, 4, 1).ok());
  EXPECT_EQ(results_.GetSaeWeights("j", 0, 4).value(), stored);
  EXPECT_EQ(Count(*store_, Column::kMeta), 0);
}

TEST_F(ResultStoreTest, AMissingPartIsDataLoss) {
  const std::string sae = Pattern(3 * kPart);
  storage::WriteBatch batch;
  ASSERT_TRUE(results_
                  .StageSaeWeights("j", 0, 4, 1,
                                   static_cast<int64_t>(sae.size()),
                                   ReaderOf(sae), &batch)
                  .ok());
  ASSERT_TRUE(store_->Write(batch, {}).ok());
  storage::WriteBatch damage;
  damage.Delete(Column::kSaeWeights,
                storage::SaeWeightsPartKey("j", 0, 4, 1, 1));
  ASSERT_TRUE(store_->Write(damage, {}).ok());
  absl::StatusOr<std::string> got = results_.GetSaeWeights("j", 0, 4);
  EXPECT_TRUE(absl::IsDataLoss(got.status())) << got.status();
  EXPECT_NE(got.status().message().find("part 1 of 3 is missing"),
            std::string::npos)
      << got.status();
}

}  // namespace
}  // namespace saetrack::server
