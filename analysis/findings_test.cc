#include "analysis/findings.h"

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::analysis {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// --- drift -----------------------------------------------------------------

TEST(DriftFindingTest, NotMeasuredWithoutCheckpoints) {
  const Finding f = DriftFinding({});
  EXPECT_EQ(f.verdict, Verdict::kNotMeasured);
  EXPECT_EQ(f.sentence, "drift: not measured (no checkpoint analysed)");
}

TEST(DriftFindingTest, ReproducesWhenTheMedianNeverFalls) {
  const Finding f = DriftFinding({{0, 10, 100}, {0.25, 0.5, 1.0}});
  EXPECT_EQ(f.verdict, Verdict::kReproduces);
  EXPECT_EQ(f.sentence,
            "drift: reproduces, features keep their index and converge: the "
            "median cos to the final direction goes from 0.250 at step 0 to "
            "1.000 at step 100, never falling");
}

TEST(DriftFindingTest, OneCheckpointReproduces) {
  const Finding f = DriftFinding({{7}, {1.0}});
  EXPECT_EQ(f.verdict, Verdict::kReproduces);
  EXPECT_THAT(f.sentence, HasSubstr("from 1.000 at step 7 to 1.000 at step 7"));
}

TEST(DriftFindingTest, FallsWithinToleranceStillReproduce) {
  // A fall of exactly the tolerance is not a fall.
  const Finding f = DriftFinding({{0, 1, 2}, {0.5, 0.5 - 1e-3 + 1e-12, 1.0}});
  EXPECT_EQ(f.verdict, Verdict::kReproduces);
  EXPECT_THAT(f.sentence, HasSubstr("never falling"));
}

TEST(DriftFindingTest, DoesNotReproduceWhenTheMedianFalls) {
  const Finding f = DriftFinding({{0, 10, 20, 30}, {0.5, 0.4, 0.6, 0.598}});
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_EQ(f.sentence,
            "drift: does NOT reproduce monotonic convergence: the median cos "
            "to the final direction goes from 0.500 at step 0 to 0.598 at step "
            "30 but falls at 2 checkpoint(s)");
}

TEST(DriftFindingTest, JustBeyondToleranceIsAFall) {
  const Finding f = DriftFinding({{0, 1}, {0.5, 0.5 - 1.001e-3}});
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_THAT(f.sentence, HasSubstr("falls at 1 checkpoint(s)"));
}

// --- phases ----------------------------------------------------------------

// A fit where three segments win by BIC: ΔBIC 60 and 10 for one and two.
PhaseShape Shape(double s1, double s2, double s3, double r2) {
  return {s1, s2, s3, 100, 2000, r2, 3, {-100.0, -150.0, -160.0}};
}

TEST(PhasesFindingTest, NotMeasuredWithoutAFit) {
  const Finding f = PhasesFinding(std::nullopt);
  EXPECT_EQ(f.verdict, Verdict::kNotMeasured);
  EXPECT_EQ(f.sentence, "phases: not measured (fewer than four checkpoints)");
}

TEST(PhasesFindingTest, ReproducesWhenTheMiddleIsFlattestAndTheFitGood) {
  const Finding f = PhasesFinding(Shape(0.2, 0.01, 0.1, 0.95));
  EXPECT_EQ(f.verdict, Verdict::kReproduces);
  EXPECT_EQ(f.sentence,
            "phases: reproduces, a fast initial drift, a slower middle phase, "
            "then convergence to the final direction: slopes 0.2000 / 0.0100 "
            "/ 0.1000 with breakpoints at steps 100 and 2000 (r² 0.950; ΔBIC "
            "60.0 / 10.0 / 0.0 for 1 / 2 / 3 segments)");
}

TEST(PhasesFindingTest, RSquaredAtTheThresholdReproduces) {
  EXPECT_EQ(PhasesFinding(Shape(0.2, 0.01, 0.1, 0.9)).verdict,
            Verdict::kReproduces);
}

TEST(PhasesFindingTest, PoorFitDoesNotReproduce) {
  const Finding f = PhasesFinding(Shape(0.2, 0.01, 0.1, 0.8999));
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_EQ(f.sentence,
            "phases: does NOT reproduce the paper's fast-slow-fast shape (the "
            "fit is poor): slopes 0.2000 / 0.0100 / 0.1000 with breakpoints at "
            "steps 100 and 2000 (r² 0.900; ΔBIC 60.0 / 10.0 / 0.0 for 1 / 2 / "
            "3 segments)");
}

TEST(PhasesFindingTest, SpeedingUpDoesNotReproduce) {
  const Finding f = PhasesFinding(Shape(0.01, 0.1, 0.2, 0.99));
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_THAT(f.sentence, HasSubstr("(the drift speeds up phase by phase)"));
}

TEST(PhasesFindingTest, SlowingDownDoesNotReproduce) {
  const Finding f = PhasesFinding(Shape(0.2, 0.1, 0.01, 0.99));
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_THAT(f.sentence, HasSubstr("(the drift slows down phase by phase)"));
}

TEST(PhasesFindingTest, SteepMiddleDoesNotReproduce) {
  const Finding f = PhasesFinding(Shape(0.1, 0.3, 0.2, 0.99));
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_THAT(f.sentence, HasSubstr("(the middle phase is the steepest)"));
}

TEST(PhasesFindingTest, MiddleTiedWithAnotherSlopeIsNotFlattest) {
  // Strictly flattest is required; equal slopes are neither speeding up nor
  // slowing down.
  const Finding f = PhasesFinding(Shape(0.1, 0.1, 0.2, 0.99));
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_THAT(f.sentence, HasSubstr("(the middle phase is the steepest)"));
}

TEST(PhasesFindingTest, TwoSegmentsWinningIsNotThreePhases) {
  // The paper's fast-then-slow start, but BIC prefers two segments: the
  // layout repeats the second slope as the third.
  PhaseShape p = {0.2,    0.01, 0.01, 100,
                  143000, 0.99, 2,    {-100.0, -160.0, -157.5}};
  const Finding f = PhasesFinding(p);
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_EQ(f.sentence,
            "phases: does NOT reproduce three phases, the data support 2 "
            "segments (ΔBIC 60.0 / 0.0 / 2.5 for 1 / 2 / 3 segments): slopes "
            "0.2000 / 0.0100 with a breakpoint at step 100 (r² 0.990)");
}

TEST(PhasesFindingTest, OneSegmentWinningIsNotThreePhases) {
  PhaseShape p = {0.01,   0.01, 0.01, 143000,
                  143000, 0.97, 1,    {-200.0, -195.0, -190.25}};
  const Finding f = PhasesFinding(p);
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_EQ(f.sentence,
            "phases: does NOT reproduce three phases, the data support 1 "
            "segment (a straight line in log(step + 1)) (ΔBIC 0.0 / 5.0 / 9.8 "
            "for 1 / 2 / 3 segments): slope 0.0100 (r² 0.970)");
}

TEST(PhasesFindingTest, NotMeasuredWhenThreeSegmentsCouldNotCompete) {
  PhaseShape p = {0.2,  0.01, 0.01, 100,
                  1000, 0.99, 2,    {-10.0, -12.0, std::nullopt}};
  const Finding f = PhasesFinding(p);
  EXPECT_EQ(f.verdict, Verdict::kNotMeasured);
  EXPECT_EQ(f.sentence,
            "phases: not measured (fewer than 7 checkpoints, too few for "
            "three segments to compete; ΔBIC 2.0 / 0.0 / - for 1 / 2 / 3 "
            "segments)");
}

TEST(PhasesFindingTest, AFitWithoutEvidenceIsNotMeasured) {
  // The paper's shape, but stored before models were compared.
  PhaseShape p = Shape(0.2, 0.01, 0.1, 0.95);
  p.segments = 0;
  p.bic = {};
  const Finding f = PhasesFinding(p);
  EXPECT_EQ(f.verdict, Verdict::kNotMeasured);
  EXPECT_EQ(f.sentence,
            "phases: not measured (the stored fit has three segments but no "
            "comparison with fewer; summarise the job again)");
}

TEST(PhasesFindingTest, ThreeSegmentsMustWinNotJustCompete) {
  // Three segments with the paper's slopes lose to two by 0.1: the verdict
  // follows the chosen model, not the three-segment fit.
  PhaseShape p = Shape(0.2, 0.01, 0.1, 0.95);
  p.segments = 2;
  p.bic = {-100.0, -160.1, -160.0};
  EXPECT_EQ(PhasesFinding(p).verdict, Verdict::kDoesNotReproduce);
  p.segments = 3;
  p.bic = {-100.0, -160.0, -160.1};
  EXPECT_EQ(PhasesFinding(p).verdict, Verdict::kReproduces);
}

TEST(BicEvidenceTest, DifferencesToTheBest) {
  EXPECT_EQ(DescribeBicEvidence({-1.0, -3.25, -2.0}),
            "ΔBIC 2.2 / 0.0 / 1.2 for 1 / 2 / 3 segments");
  EXPECT_EQ(DescribeBicEvidence({4.0, std::nullopt, std::nullopt}),
            "ΔBIC 0.0 / - / - for 1 / 2 / 3 segments");
  EXPECT_EQ(DescribeBicEvidence({}), "");
}

// --- formation -------------------------------------------------------------

KindFormation Kind(double mean, double median, int64_t formed = 3) {
  return {formed, mean, median};
}

TEST(FormationFindingTest, NotMeasuredWithoutBothKindsFormed) {
  const std::string sentence =
      "formation: not measured (no formed token-level or concept-level "
      "features)";
  for (const Finding& f : {FormationFinding(std::nullopt, Kind(10, 10)),
                           FormationFinding(Kind(10, 10), std::nullopt),
                           FormationFinding(Kind(10, 10, 0), Kind(20, 20)),
                           FormationFinding(Kind(10, 10), Kind(20, 20, 0))}) {
    EXPECT_EQ(f.verdict, Verdict::kNotMeasured);
    EXPECT_EQ(f.sentence, sentence);
  }
}

TEST(FormationFindingTest, ReproducesWhenLaterOnMeanAndMedian) {
  const Finding f = FormationFinding(Kind(10.24, 8), Kind(20.5, 16));
  EXPECT_EQ(f.verdict, Verdict::kReproduces);
  EXPECT_EQ(f.sentence,
            "formation: reproduces, concept-level features form later: mean "
            "formation step 20.5 (concept-level) vs 10.2 (token-level), "
            "medians 16 vs 8");
}

TEST(FormationFindingTest, WeaklyWhenLaterOnAverageOnly) {
  const Finding f = FormationFinding(Kind(10, 8), Kind(20, 8));
  EXPECT_EQ(f.verdict, Verdict::kReproducesWeakly);
  EXPECT_EQ(f.sentence,
            "formation: reproduces only weakly, concept-level features form "
            "later on average but not at the median: mean formation step 20.0 "
            "(concept-level) vs 10.0 (token-level), medians 8 vs 8");
}

TEST(FormationFindingTest, WeaklyWhenLaterAtTheMedianOnly) {
  const Finding f = FormationFinding(Kind(10, 8), Kind(10, 9));
  EXPECT_EQ(f.verdict, Verdict::kReproducesWeakly);
  EXPECT_THAT(f.sentence,
              StartsWith("formation: reproduces only weakly, concept-level "
                         "features form later on the median only: "));
}

TEST(FormationFindingTest, EqualStepsDoNotReproduce) {
  const Finding f = FormationFinding(Kind(10, 8), Kind(10, 8));
  EXPECT_EQ(f.verdict, Verdict::kDoesNotReproduce);
  EXPECT_EQ(f.sentence,
            "formation: does NOT reproduce, concept-level features do not "
            "form later: mean formation step 10.0 (concept-level) vs 10.0 "
            "(token-level), medians 8 vs 8");
}

TEST(FormationFindingTest, EarlierDoesNotReproduce) {
  EXPECT_EQ(FormationFinding(Kind(20, 16), Kind(10, 8)).verdict,
            Verdict::kDoesNotReproduce);
}

// --- all three -------------------------------------------------------------

TEST(PaperFindingsTest, ThreeFindingsInOrder) {
  FindingsInput input;
  const std::vector<Finding> findings = PaperFindings(input);
  ASSERT_EQ(findings.size(), 3u);
  EXPECT_THAT(findings[0].sentence, StartsWith("drift: "));
  EXPECT_THAT(findings[1].sentence, StartsWith("phases: "));
  EXPECT_THAT(findings[2].sentence, StartsWith("formation: "));
}

// --- over runs ---------------------------------------------------------------

TEST(SpreadTest, MedianAndRangeOverPresentFiniteValues) {
  EXPECT_FALSE(SpreadOf({}).has_value());
  EXPECT_FALSE(SpreadOf({std::nullopt, std::nan("")}).has_value());
  const std::optional<Spread> odd = SpreadOf({3.0, std::nullopt, 1.0, 2.0});
  ASSERT_TRUE(odd.has_value());
  EXPECT_EQ(odd->runs, 3);
  EXPECT_DOUBLE_EQ(odd->median, 2.0);
  EXPECT_DOUBLE_EQ(odd->min, 1.0);
  EXPECT_DOUBLE_EQ(odd->max, 3.0);
  const std::optional<Spread> even = SpreadOf({0.5, 0.1});
  ASSERT_TRUE(even.has_value());
  EXPECT_EQ(even->runs, 2);
  EXPECT_DOUBLE_EQ(even->median, 0.3);
  EXPECT_DOUBLE_EQ(even->min, 0.1);
}

TEST(DescribeVerdictsTest, CountsMostFrequentFirst) {
  EXPECT_EQ(DescribeVerdicts({}), "");
  EXPECT_EQ(DescribeVerdicts({Verdict::kReproduces}),
            "reproduces in 1 of 1 run");
  EXPECT_EQ(DescribeVerdicts({Verdict::kReproduces, Verdict::kReproduces}),
            "reproduces in 2 of 2 runs");
  EXPECT_EQ(
      DescribeVerdicts({Verdict::kDoesNotReproduce, Verdict::kReproducesWeakly,
                        Verdict::kDoesNotReproduce}),
      "does NOT reproduce in 2 of 3 runs, reproduces only weakly in 1");
  // A tie keeps the order reproduces, weakly, not, not measured.
  EXPECT_EQ(
      DescribeVerdicts({Verdict::kNotMeasured, Verdict::kReproducesWeakly}),
      "reproduces only weakly in 1 of 2 runs, not measured in 1");
  EXPECT_EQ(DescribeVerdicts({Verdict::kDoesNotReproduce, Verdict::kReproduces},
                             kNoiseWords),
            "signal in 1 of 2 runs, within the noise in 1");
}

TEST(DriftAgainstNoiseTest, SignalOnlyBeyondTheTwoSaeMatch) {
  const Finding signal = DriftAgainstNoise(0, 0.093, 0.970, 0.254);
  EXPECT_EQ(signal.verdict, Verdict::kReproduces);
  EXPECT_EQ(signal.sentence,
            "drift vs noise at step 0: signal, the median cos to the final "
            "direction (0.093) against two SAEs trained on that checkpoint "
            "(0.970; two random dictionaries 0.254)");
  // At or above the match two SAEs of the same checkpoint reach, the drift
  // is no larger than the noise of training.
  EXPECT_EQ(DriftAgainstNoise(512, 0.818, 0.656, 0.254).verdict,
            Verdict::kDoesNotReproduce);
  EXPECT_THAT(DriftAgainstNoise(512, 0.818, 0.656, 0.254).sentence,
              HasSubstr("within the noise"));
  EXPECT_EQ(DriftAgainstNoise(64, 0.656, 0.656, 0.254).verdict,
            Verdict::kDoesNotReproduce);
  // Within the margin below it: only weakly.
  EXPECT_EQ(DriftAgainstNoise(64, 0.62, 0.656, 0.254).verdict,
            Verdict::kReproducesWeakly);
  EXPECT_EQ(DriftAgainstNoise(64, 0.60, 0.656, 0.254).verdict,
            Verdict::kReproduces);
  EXPECT_EQ(DriftAgainstNoise(64, std::nan(""), 0.656, 0.254).verdict,
            Verdict::kNotMeasured);
}

}  // namespace
}  // namespace saetrack::analysis
