#include "server/internal/artifact_staging.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "server/internal/test_fixtures.h"

namespace saetrack::server {
namespace {

using testing::TempDir;

constexpr v1::ArtifactKind kWeights = v1::ARTIFACT_KIND_SAE_WEIGHTS;
constexpr v1::ArtifactKind kStats = v1::ARTIFACT_KIND_FEATURE_STATS;

int FilesIn(const std::string& dir) {
  int n = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator(dir))
    ++n;
  return n;
}

TEST(ArtifactStagingTest, StagesOnDiskAndReadsBack) {
  TempDir tmp;
  auto staging = ArtifactStaging::Open(tmp.path() + "/staging");
  ASSERT_TRUE(staging.ok()) << staging.status();
  ASSERT_TRUE((*staging)->Put("job-1/t0", 3, kWeights, "weights!", "w1").ok());
  ASSERT_TRUE((*staging)->Put("job-1/t0", 3, kStats, "stats", "w1").ok());
  EXPECT_EQ((*staging)->bytes(), 13);
  EXPECT_EQ((*staging)->worker_bytes("w1"), 13);
  EXPECT_EQ((*staging)->worker_bytes("w2"), 0);
  EXPECT_EQ(FilesIn(tmp.path() + "/staging"), 2);

  std::shared_ptr<const ArtifactStaging::Artifact> a =
      (*staging)->Find("job-1/t0", 3, kWeights);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->ReadAll().value(), "weights!");
  std::string part;
  ASSERT_TRUE(a->ReadAt(2, 4, &part).ok());
  EXPECT_EQ(part, "ight");
  EXPECT_EQ((*staging)->Find("job-1/t0", 4, kWeights), nullptr);

  // Replacing keeps one file and counts the new size.
  ASSERT_TRUE((*staging)->Put("job-1/t0", 3, kWeights, "w", "w1").ok());
  EXPECT_EQ((*staging)->bytes(), 6);
  EXPECT_EQ(FilesIn(tmp.path() + "/staging"), 2);
  // The reader of the replaced upload still reads what it had.
  EXPECT_EQ(a->ReadAll().value(), "weights!");

  // A later epoch of the task drops the earlier one's uploads.
  ASSERT_TRUE((*staging)->Put("job-1/t0", 4, kStats, "s4", "w2").ok());
  EXPECT_EQ((*staging)->Find("job-1/t0", 3, kStats), nullptr);
  EXPECT_EQ((*staging)->bytes(), 2);
  EXPECT_EQ((*staging)->worker_bytes("w1"), 0);
  EXPECT_EQ(FilesIn(tmp.path() + "/staging"), 1);

  (*staging)->DropLease("job-1/t0", 4);
  EXPECT_EQ((*staging)->bytes(), 0);
  EXPECT_EQ(FilesIn(tmp.path() + "/staging"), 0);
}

TEST(ArtifactStagingTest, AnUnfinishedUploadLeavesNothing) {
  TempDir tmp;
  auto staging = ArtifactStaging::Open(tmp.path());
  ASSERT_TRUE(staging.ok()) << staging.status();
  {
    auto writer = (*staging)->Begin("t", 1, kWeights, "w1");
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Append(std::string(1000, 'x')).ok());
    // Counted while it arrives, so that concurrent uploads see it.
    EXPECT_EQ((*staging)->bytes(), 1000);
    EXPECT_EQ((*staging)->worker_bytes("w1"), 1000);
    EXPECT_EQ((*staging)->Find("t", 1, kWeights), nullptr);
  }
  EXPECT_EQ((*staging)->bytes(), 0);
  EXPECT_EQ((*staging)->worker_bytes("w1"), 0);
  EXPECT_EQ(FilesIn(tmp.path()), 0);
}

TEST(ArtifactStagingTest, ARestartKeepsStagedUploadsAndRemovesPartialOnes) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/staging";
  {
    auto staging = ArtifactStaging::Open(dir);
    ASSERT_TRUE(staging.ok()) << staging.status();
    ASSERT_TRUE((*staging)->Put("job-9/h0/c1", 7, kWeights, "sae", "w").ok());
    // A process killed mid-upload leaves its partial file behind.
    std::ofstream(dir + "/6a6f62-7-2.staged.5.partial") << "half";
    std::ofstream(dir + "/not-ours.staged") << "junk";
  }
  auto staging = ArtifactStaging::Open(dir);
  ASSERT_TRUE(staging.ok()) << staging.status();
  auto a = (*staging)->Find("job-9/h0/c1", 7, kWeights);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->ReadAll().value(), "sae");
  EXPECT_EQ((*staging)->bytes(), 3);
  EXPECT_EQ(FilesIn(dir), 1);

  // Stale leases are dropped on demand.
  EXPECT_EQ((*staging)->DropStale(
                [](const std::string&, int64_t epoch) { return epoch == 7; }),
            3);
  EXPECT_EQ(FilesIn(dir), 0);
}

}  // namespace
}  // namespace saetrack::server
