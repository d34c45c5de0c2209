#include "storage/keys.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::storage {
namespace {

TEST(KeysTest, Int64OrderMatchesNumericOrder) {
  std::vector<int64_t> values = {
      std::numeric_limits<int64_t>::min(), -1000000, -1, 0, 1, 255, 256, 143000,
      std::numeric_limits<int64_t>::max()};
  for (size_t i = 1; i < values.size(); ++i) {
    std::string a = KeyBuilder().AddInt64(values[i - 1]).Release();
    std::string b = KeyBuilder().AddInt64(values[i]).Release();
    EXPECT_LT(a, b) << values[i - 1] << " vs " << values[i];
    EXPECT_EQ(a.size(), 8u);
  }
}

TEST(KeysTest, Int32OrderMatchesNumericOrder) {
  std::vector<int32_t> values = {
      std::numeric_limits<int32_t>::min(), -5, 0, 7, 65536,
      std::numeric_limits<int32_t>::max()};
  for (size_t i = 1; i < values.size(); ++i) {
    EXPECT_LT(KeyBuilder().AddInt32(values[i - 1]).key(),
              KeyBuilder().AddInt32(values[i]).key());
  }
}

TEST(KeysTest, RoundTrip) {
  std::string key = KeyBuilder()
                        .AddString("job-000042")
                        .AddInt32(-3)
                        .AddInt64(123456789012)
                        .Release();
  KeyReader reader(key);
  EXPECT_EQ(reader.ReadString().value(), "job-000042");
  EXPECT_EQ(reader.ReadInt32().value(), -3);
  EXPECT_EQ(reader.ReadInt64().value(), 123456789012);
  EXPECT_TRUE(reader.AtEnd());
  EXPECT_EQ(reader.ReadInt32().status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KeysTest, FeatureHistoryKeyParsesBack) {
  std::string key = FeatureHistoryKey("job-1", 5, 1023, 143000);
  absl::StatusOr<FeatureHistoryKeyParts> parts = ParseFeatureHistoryKey(key);
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(parts->job_id, "job-1");
  EXPECT_EQ(parts->layer, 5);
  EXPECT_EQ(parts->feature, 1023);
  EXPECT_EQ(parts->step, 143000);
  EXPECT_EQ(ParseFeatureHistoryKey(key + "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseFeatureHistoryKey("job-1").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KeysTest, FeaturePrefixSelectsOneFeatureInStepOrder) {
  std::string prefix = FeatureHistoryPrefix("job-1", 2, 7);
  // Steps that would sort wrongly as decimal strings or little-endian.
  std::vector<int64_t> steps = {0, 1, 2, 4, 8, 512, 1000, 10000, 143000};
  std::vector<std::string> keys;
  for (int64_t s : steps) keys.push_back(FeatureHistoryKey("job-1", 2, 7, s));
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  for (const std::string& k : keys) EXPECT_EQ(k.rfind(prefix, 0), 0u);
  // Neighbouring features, layers and jobs do not share the prefix.
  EXPECT_NE(FeatureHistoryKey("job-1", 2, 8, 0).rfind(prefix, 0), 0u);
  EXPECT_NE(FeatureHistoryKey("job-1", 3, 7, 0).rfind(prefix, 0), 0u);
  EXPECT_NE(FeatureHistoryKey("job-10", 2, 7, 0).rfind(prefix, 0), 0u);
  EXPECT_NE(FeatureHistoryKey("job-", 2, 7, 0).rfind(prefix, 0), 0u);
}

TEST(KeysTest, JobPrefixesDoNotOverlap) {
  EXPECT_NE(TaskKey("job-10", 0, 0).rfind(TaskPrefix("job-1"), 0), 0u);
  EXPECT_EQ(TaskKey("job-1", 0, 3).rfind(TaskPrefix("job-1"), 0), 0u);
  EXPECT_LT(TaskKey("job-1", 0, 9), TaskKey("job-1", 1, 0));
  EXPECT_LT(CheckpointMetricsKey("j", 1, 2), CheckpointMetricsKey("j", 1, 10));
  EXPECT_EQ(
      CheckpointMetricsKey("j", 1, 2).rfind(CheckpointMetricsPrefix("j", 1), 0),
      0u);
  EXPECT_NE(SaeWeightsKey("j", 1, 100), SaeWeightsKey("j", 2, 100));
}

}  // namespace
}  // namespace saetrack::storage
