#include "tools/recurrence_report.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <optional>

#include "format/json.h"

namespace saetrack::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

RecurrencePair Pair(int64_t prev, int64_t step, int64_t scratch,
                    std::optional<int64_t> recurrent) {
  RecurrencePair p;
  p.prev_step = prev;
  p.step = step;
  p.result.target_fvu = 0.01;
  p.result.scratch_tokens = scratch;
  p.result.recurrent_tokens = recurrent;
  p.result.batch_tokens = 1024;
  return p;
}

TEST(DefaultStudyStepsTest, SecondMiddleAndLastInChainOrder) {
  EXPECT_THAT(DefaultStudySteps({0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512}),
              ElementsAre(1, 16, 512));
  EXPECT_THAT(DefaultStudySteps({512, 256, 128, 64}),
              ElementsAre(256, 128, 64));
  EXPECT_THAT(DefaultStudySteps({0, 8, 64}), ElementsAre(8, 64));
  EXPECT_THAT(DefaultStudySteps({0, 8}), ElementsAre(8));
  EXPECT_THAT(DefaultStudySteps({0}), IsEmpty());
}

TEST(RecurrenceReportTest, MedianCountsANeverAsZeroAndTheClaimNeedsAll) {
  RecurrenceReport report;
  report.pairs = {Pair(0, 1, 1'000'000, 20'000),  // 50x
                  Pair(1, 2, 1'000'000, 40'000),  // 25x
                  Pair(2, 4, 1'000'000, 0)};      // 0 tokens: one batch
  EXPECT_DOUBLE_EQ(report.MedianSpeedup(), 50);
  EXPECT_EQ(report.Never(), 0);
  EXPECT_TRUE(report.ClaimHolds());
  EXPECT_THAT(RecurrenceVerdict(report),
              HasSubstr("speed-up reproduces here: median 50.0x over 3"));

  report.pairs[2].result.recurrent_tokens.reset();
  EXPECT_DOUBLE_EQ(report.MedianSpeedup(), 25);
  EXPECT_EQ(report.Never(), 1);
  EXPECT_FALSE(report.ClaimHolds());
  EXPECT_EQ(RecurrenceVerdict(report),
            "the paper's >= 20x speed-up does NOT reproduce here: median "
            "25.0x over 3 checkpoints, >= 20x at step(s) 1, 2; 1 of 3 never "
            "reached the from-scratch FVU");
}

TEST(RecurrenceReportTest, TableAndJsonCarryTheSameNumbers) {
  RecurrenceReport report;
  report.job_id = "job-000001";
  report.layer = 1;
  report.site = "resid_pre";
  report.architecture = "relu_l1";
  report.sparsity = "l1 0.01";
  report.d_in = 64;
  report.d_sae = 512;
  report.batch_size = 1024;
  report.scratch_tokens = 1'000'000;
  report.job_tokens_later = 50'000;
  report.pairs = {Pair(8, 16, 1'000'000, 400'000),
                  Pair(256, 512, 1'000'000, std::nullopt)};
  report.pairs[0].job_fvu = 0.0208;
  report.pairs[0].job_tokens = 50'000;
  const std::string table = FormatRecurrenceReport(report);
  EXPECT_THAT(table, HasSubstr("     8     16   0.0100     1.00M    0.0000    "
                               "400.0k     2.5x   0.0208     50.0k\n"));
  EXPECT_THAT(table, HasSubstr("   256    512   0.0100     1.00M    0.0000     "
                               "never      <1x        -         -\n"));
  EXPECT_THAT(table, HasSubstr("does NOT reproduce here: median 1.2x over 2 "
                               "checkpoints, >= 20x at none; 1 of 2 never"));

  const auto json = format::ParseJson(RecurrenceReportJson(report));
  ASSERT_TRUE(json.ok()) << json.status();
  const format::JsonValue* pairs = json->Find("pairs");
  ASSERT_NE(pairs, nullptr);
  ASSERT_EQ(pairs->array().size(), 2u);
  EXPECT_DOUBLE_EQ(pairs->array()[0].Find("speedup")->number_value(), 2.5);
  EXPECT_TRUE(pairs->array()[1].Find("recurrent_tokens")->is_null());
  EXPECT_DOUBLE_EQ(json->Find("median_speedup")->number_value(), 1.25);
  EXPECT_FALSE(json->Find("holds")->bool_value());
}

}  // namespace
}  // namespace saetrack::worker
