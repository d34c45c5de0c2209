#include "analysis/dynamics.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::analysis {
namespace {

using ::testing::HasSubstr;

// Pythia's 154 checkpoint steps on the phase fit's x axis, log(step + 1).
std::vector<double> PythiaX() {
  std::vector<int64_t> steps = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  for (int64_t s = 1000; s <= 143000; s += 1000) steps.push_back(s);
  return LogSteps(steps);
}

// y on a known continuous three-segment curve over PythiaX(), plus Gaussian
// noise. b2 beyond the last x makes it two segments, b1 too a line.
struct Curve {
  std::vector<double> x, y;
};
Curve ThreeSegments(double b1, double b2, double s1, double s2, double s3,
                    double noise, unsigned seed) {
  Curve c;
  c.x = PythiaX();
  std::mt19937 rng(seed);
  std::normal_distribution<double> gaussian(0, noise);
  for (double x : c.x) {
    const double y = 0.1 + s1 * x + (s2 - s1) * std::max(0.0, x - b1) +
                     (s3 - s2) * std::max(0.0, x - b2);
    c.y.push_back(y + (noise > 0 ? gaussian(rng) : 0.0));
  }
  return c;
}

TEST(PhaseFitTest, RecoversKnownBreakpointsFromNoisyCurves) {
  // Breakpoints at log(step+1) = 2.5 (step ~11) and 8.0 (step ~3000):
  // fast initial drift, slow middle, near-flat end.
  for (unsigned seed = 1; seed <= 5; ++seed) {
    const Curve c = ThreeSegments(2.5, 8.0, 0.20, 0.05, 0.004, 0.01, seed);
    absl::StatusOr<PhaseFit> fit = FitPiecewiseLinear(c.x, c.y, 3);
    ASSERT_TRUE(fit.ok()) << fit.status();
    EXPECT_EQ(fit->segments, 3);
    EXPECT_NEAR(fit->breakpoint1, 2.5, 0.4) << "seed " << seed;
    EXPECT_NEAR(fit->breakpoint2, 8.0, 0.6) << "seed " << seed;
    EXPECT_NEAR(fit->slope1, 0.20, 0.04) << "seed " << seed;
    EXPECT_NEAR(fit->slope2, 0.05, 0.015) << "seed " << seed;
    EXPECT_NEAR(fit->slope3, 0.004, 0.01) << "seed " << seed;
    EXPECT_GT(fit->r_squared, 0.98);
  }
}

TEST(PhaseFitTest, ExactOnNoiselessData) {
  const std::vector<double> x = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<double> y;
  for (double v : x) {
    y.push_back(1 + 2 * v - 1.5 * std::max(0.0, v - 3) -
                0.5 * std::max(0.0, v - 6));
  }
  absl::StatusOr<PhaseFit> fit = FitPiecewiseLinear(x, y, 3);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_DOUBLE_EQ(fit->breakpoint1, 3);
  EXPECT_DOUBLE_EQ(fit->breakpoint2, 6);
  EXPECT_NEAR(fit->slope1, 2, 1e-9);
  EXPECT_NEAR(fit->slope2, 0.5, 1e-9);
  EXPECT_NEAR(fit->slope3, 0, 1e-9);
  EXPECT_NEAR(fit->intercept, 1, 1e-9);
  EXPECT_NEAR(fit->rss, 0, 1e-18);
  EXPECT_DOUBLE_EQ(fit->r_squared, 1);

  // Nine points: all three models compete, and the exact one wins although
  // the two-segment fit is good too.
  absl::StatusOr<PhaseModels> models = FitPhases(x, y);
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->chosen, 3);
  EXPECT_DOUBLE_EQ(models->best().breakpoint1, 3);
  EXPECT_DOUBLE_EQ(models->best().breakpoint2, 6);
  EXPECT_GT(models->fits[1]->r_squared, 0.97);
  EXPECT_LT(models->fits[2]->bic, models->fits[1]->bic);
}

TEST(PhaseFitTest, FewerSegmentsFillTheUnusedBreakpointsAndSlopes) {
  const std::vector<double> x = {0, 1, 2, 3, 4, 5};
  const std::vector<double> y = {0, 1, 2, 2.5, 3, 3.5};  // a bend at x = 2
  absl::StatusOr<PhaseFit> two = FitPiecewiseLinear(x, y, 2);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->segments, 2);
  EXPECT_DOUBLE_EQ(two->breakpoint1, 2);
  EXPECT_DOUBLE_EQ(two->breakpoint2, 5);  // the last x
  EXPECT_NEAR(two->slope1, 1, 1e-12);
  EXPECT_NEAR(two->slope2, 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(two->slope3, two->slope2);
  EXPECT_NEAR(two->intercept, 0, 1e-12);
  EXPECT_NEAR(two->rss, 0, 1e-24);

  absl::StatusOr<PhaseFit> one = FitPiecewiseLinear(x, y, 1);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->segments, 1);
  EXPECT_DOUBLE_EQ(one->breakpoint1, 5);
  EXPECT_DOUBLE_EQ(one->breakpoint2, 5);
  EXPECT_DOUBLE_EQ(one->slope2, one->slope1);
  EXPECT_DOUBLE_EQ(one->slope3, one->slope1);
  // The least-squares line: slope Σ(x − 2.5)(y − 2) / Σ(x − 2.5)² = 12/17.5.
  EXPECT_NEAR(one->slope1, 12 / 17.5, 1e-12);
  EXPECT_NEAR(one->intercept, 2 - 2.5 * 12 / 17.5, 1e-12);
  // BIC = n·ln(rss / n) + 2·ln n for the line.
  EXPECT_NEAR(one->bic, 6 * std::log(one->rss / 6) + 2 * std::log(6.0), 1e-12);
}

TEST(PhaseFitTest, AStraightLineIsOneSegment) {
  for (double noise : {0.0, 1e-3, 0.05}) {
    for (unsigned seed = 1; seed <= 5; ++seed) {
      const Curve c = ThreeSegments(100, 100, 0.01, 0.01, 0.01, noise, seed);
      absl::StatusOr<PhaseModels> models = FitPhases(c.x, c.y);
      ASSERT_TRUE(models.ok()) << models.status();
      EXPECT_EQ(models->chosen, 1) << "noise " << noise << " seed " << seed;
      ASSERT_TRUE(models->fits[2].has_value());
      EXPECT_NEAR(models->best().slope1, 0.01, noise > 0 ? 0.005 : 1e-12);
    }
  }
}

TEST(PhaseFitTest, APlantedBendIsTwoSegments) {
  // A bend at log(step + 1) = 6 (step ~400).
  for (unsigned seed = 1; seed <= 10; ++seed) {
    const Curve c = ThreeSegments(6.0, 100, 0.05, 0.005, 0.005, 0.01, seed);
    absl::StatusOr<PhaseModels> models = FitPhases(c.x, c.y);
    ASSERT_TRUE(models.ok()) << models.status();
    EXPECT_EQ(models->chosen, 2) << "seed " << seed;
    EXPECT_NEAR(models->best().breakpoint1, 6.0, 0.5) << "seed " << seed;
    EXPECT_NEAR(models->best().slope1, 0.05, 0.01) << "seed " << seed;
    EXPECT_NEAR(models->best().slope2, 0.005, 0.005) << "seed " << seed;
  }
}

TEST(PhaseFitTest, APlantedThreeSegmentCurveWithNoiseIsThreeSegments) {
  for (unsigned seed = 1; seed <= 10; ++seed) {
    const Curve c = ThreeSegments(2.5, 8.0, 0.20, 0.05, 0.004, 0.02, seed);
    absl::StatusOr<PhaseModels> models = FitPhases(c.x, c.y);
    ASSERT_TRUE(models.ok()) << models.status();
    EXPECT_EQ(models->chosen, 3) << "seed " << seed;
    EXPECT_NEAR(models->best().breakpoint1, 2.5, 0.6) << "seed " << seed;
    EXPECT_NEAR(models->best().breakpoint2, 8.0, 0.8) << "seed " << seed;
    EXPECT_LT(models->fits[2]->bic, models->fits[1]->bic);
    EXPECT_LT(models->fits[1]->bic, models->fits[0]->bic);
  }
}

TEST(PhaseFitTest, PureNoiseIsOneSegment) {
  // The breakpoints are searched, so a noise curve sometimes looks bent
  // enough to pay for them under BIC: on these 1,000 seeds 19 chose two
  // segments or three and 3 chose three (1.7% and 0.3% on 2,000).
  int more = 0, three = 0;
  for (unsigned seed = 1; seed <= 1000; ++seed) {
    const Curve c = ThreeSegments(100, 100, 0, 0, 0, 0.01, seed);
    absl::StatusOr<PhaseModels> models = FitPhases(c.x, c.y);
    ASSERT_TRUE(models.ok()) << models.status();
    ASSERT_TRUE(models->fits[2].has_value());
    if (models->chosen > 1) ++more;
    if (models->chosen == 3) ++three;
  }
  EXPECT_LE(more, 25);  // 2.5%
  EXPECT_LE(three, 5);
}

TEST(PhaseFitTest, FlatDataIsOneExactSegment) {
  const std::vector<double> x = PythiaX();
  const std::vector<double> y(x.size(), 0.75);
  absl::StatusOr<PhaseModels> models = FitPhases(x, y);
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->chosen, 1);
  EXPECT_DOUBLE_EQ(models->best().r_squared, 1);
  EXPECT_NEAR(models->best().slope1, 0, 1e-12);
  EXPECT_NEAR(models->best().intercept, 0.75, 1e-12);
}

TEST(PhaseFitTest, VariationBelowTheResolutionIsOneSegment) {
  // Cosines of a feature that does not move, rounded to float: a staircase
  // of float spacings whose shape two or three segments may follow.
  const std::vector<double> x = PythiaX();
  std::vector<double> y;
  for (size_t i = 0; i < x.size(); ++i) {
    y.push_back(static_cast<float>(1 - 2e-7 * (i < 40    ? 1
                                               : i < 100 ? 0.5
                                                         : 0)));
  }
  absl::StatusOr<PhaseModels> models =
      FitPhases(x, y, std::numeric_limits<float>::epsilon());
  ASSERT_TRUE(models.ok()) << models.status();
  EXPECT_EQ(models->chosen, 1);
  // Without the resolution the steps are taken for signal.
  absl::StatusOr<PhaseModels> exact = FitPhases(x, y);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_GT(exact->chosen, 1);
}

TEST(PhaseFitTest, OnlyModelsWithMorePointsThanParametersCompete) {
  EXPECT_EQ(MinPointsToCompete(1), 2);
  EXPECT_EQ(MinPointsToCompete(2), 5);
  EXPECT_EQ(MinPointsToCompete(3), 7);
  // A sharp bend that two or three segments would fit exactly.
  const std::vector<double> x = {0, 1, 2, 3, 4, 5, 6};
  const std::vector<double> y = {0, 3, 3.1, 3.2, 0, -3, -6};
  for (int n = 2; n <= 7; ++n) {
    const std::vector<double> xs(x.begin(), x.begin() + n);
    const std::vector<double> ys(y.begin(), y.begin() + n);
    absl::StatusOr<PhaseModels> models = FitPhases(xs, ys);
    ASSERT_TRUE(models.ok()) << models.status();
    EXPECT_EQ(models->points, n);
    EXPECT_TRUE(models->fits[0].has_value()) << n;
    EXPECT_EQ(models->fits[1].has_value(), n >= 5) << n;
    EXPECT_EQ(models->fits[2].has_value(), n >= 7) << n;
    EXPECT_LE(models->chosen, n >= 7 ? 3 : n >= 5 ? 2 : 1) << n;
  }
  // Fitting (without competing) needs one point more than the segments.
  EXPECT_TRUE(FitPiecewiseLinear({0, 1}, {0, 1}, 1).ok());
  EXPECT_TRUE(FitPiecewiseLinear({0, 1, 2}, {0, 1, 0}, 2).ok());
  EXPECT_TRUE(FitPiecewiseLinear({0, 1, 2, 3}, {0, 1, 0, 1}, 3).ok());
}

TEST(PhaseFitTest, BadInputNamesTheProblem) {
  EXPECT_THAT(
      std::string(
          FitPiecewiseLinear({0, 1, 2}, {0, 1, 2}, 3).status().message()),
      HasSubstr("at least 4 points"));
  EXPECT_THAT(
      std::string(FitPiecewiseLinear({0, 1}, {0, 1}, 2).status().message()),
      HasSubstr("at least 3 points"));
  EXPECT_THAT(std::string(FitPhases({0}, {0}).status().message()),
              HasSubstr("at least 2 points, got 1"));
  EXPECT_EQ(
      FitPiecewiseLinear({0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}, 4).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      FitPiecewiseLinear({0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}, 0).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(FitPhases({0, 1, 2, 3}, {0, 1}).status().message()),
              HasSubstr("4 x values but 2 y values"));
  const absl::Status unordered = FitPhases({0, 2, 1, 3}, {0, 1, 2, 3}).status();
  EXPECT_EQ(unordered.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unordered.message()), HasSubstr("point 2"));
  EXPECT_THAT(std::string(FitPiecewiseLinear({0, 1, 2, 3}, {0, NAN, 2, 3}, 3)
                              .status()
                              .message()),
              HasSubstr("point 1 is not finite"));
  EXPECT_THAT(
      std::string(FitPhases({0, 1, INFINITY}, {0, 1, 2}).status().message()),
      HasSubstr("point 2 is not finite"));
}

// --- the reference: the direct O(n³) search -------------------------------

// For every candidate breakpoint set, the least-squares fit by QR of the
// n x (segments + 1) design and the rss from its residuals; the first best
// set in x order wins, a later set only when its rss is lower by more than
// 1e-9 of the total sum of squares (breakpoints anywhere in the first or the
// last interval fit equally well). Sets whose design is rank-deficient are
// skipped.
PhaseFit ReferenceFit(const std::vector<double>& x,
                      const std::vector<double>& y, int segments) {
  const int n = static_cast<int>(x.size());
  std::vector<double> candidates;
  for (int i = 1; i + 1 < n; ++i) {
    candidates.push_back(0.5 * (x[i - 1] + x[i]));
    candidates.push_back(x[i]);
  }
  candidates.push_back(0.5 * (x[n - 2] + x[n - 1]));
  std::vector<std::vector<double>> sets;
  if (segments == 1) sets.push_back({});
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (segments == 2) sets.push_back({candidates[i]});
    for (size_t j = i + 1; segments == 3 && j < candidates.size(); ++j) {
      sets.push_back({candidates[i], candidates[j]});
    }
  }
  double mean = 0;
  for (double v : y) mean += v;
  mean /= n;
  double total = 0;
  for (double v : y) total += (v - mean) * (v - mean);

  PhaseFit best;
  best.rss = std::numeric_limits<double>::infinity();
  for (const std::vector<double>& set : sets) {
    Eigen::MatrixXd design(n, segments + 1);
    Eigen::VectorXd target(n);
    for (int k = 0; k < n; ++k) {
      design(k, 0) = 1;
      design(k, 1) = x[k];
      for (size_t j = 0; j < set.size(); ++j) {
        design(k, j + 2) = std::max(0.0, x[k] - set[j]);
      }
      target(k) = y[k];
    }
    Eigen::ColPivHouseholderQR<Eigen::MatrixXd> qr(design);
    qr.setThreshold(1e-9);
    if (qr.rank() < segments + 1) continue;
    const Eigen::VectorXd w = qr.solve(target);
    const double rss = (target - design * w).squaredNorm();
    if (!(rss < best.rss - 1e-9 * total)) continue;
    best.segments = segments;
    best.rss = rss;
    best.intercept = w(0);
    best.slope1 = w(1);
    best.slope2 = w(1) + (segments >= 2 ? w(2) : 0);
    best.slope3 = best.slope2 + (segments >= 3 ? w(3) : 0);
    best.breakpoint1 = set.size() > 0 ? set[0] : x.back();
    best.breakpoint2 = set.size() > 1 ? set[1] : x.back();
  }
  best.r_squared = total > 0 ? 1 - best.rss / total : 1;
  best.bic = n * std::log(std::max(best.rss / n, 1e-12 * total / n)) +
             2.0 * segments * std::log(static_cast<double>(n));
  return best;
}

// |a − b| within 1e-9 of the larger of |b| and `scale`.
void ExpectClose(double a, double b, double scale, const std::string& what) {
  EXPECT_LE(std::abs(a - b), 1e-9 * std::max(std::abs(b), scale))
      << what << ": " << a << " vs " << b;
}

TEST(PhaseFitTest, EqualsTheDirectSearchOnRandomData) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> uniform(0, 1);
  std::normal_distribution<double> gaussian(0, 1);
  int compared = 0;
  for (int n : {4, 5, 6, 7, 9, 12, 20, 40, 154}) {
    for (int trial = 0; trial < 6; ++trial) {
      std::vector<double> x;
      if (n == 154) {
        x = PythiaX();
      } else {
        double at = uniform(rng);
        for (int i = 0; i < n; ++i) {
          x.push_back(at);
          at += 0.01 + uniform(rng);
        }
      }
      std::vector<double> y;
      double walk = 0, mean = 0, total = 0;
      for (int i = 0; i < n; ++i) {
        // Alternately white noise and a random walk (smooth, bendy curves).
        walk += gaussian(rng);
        y.push_back(trial % 2 == 0 ? gaussian(rng) : 0.9 + 0.01 * walk);
        mean += y.back() / n;
      }
      for (double v : y) total += (v - mean) * (v - mean);
      const std::string where =
          "n " + std::to_string(n) + " trial " + std::to_string(trial);
      for (int segments = 1; segments <= 3; ++segments) {
        absl::StatusOr<PhaseFit> fast = FitPiecewiseLinear(x, y, segments);
        ASSERT_TRUE(fast.ok()) << fast.status() << " " << where;
        const PhaseFit slow = ReferenceFit(x, y, segments);
        const std::string what =
            where + " segments " + std::to_string(segments);
        EXPECT_EQ(fast->segments, segments);
        EXPECT_DOUBLE_EQ(fast->breakpoint1, slow.breakpoint1) << what;
        EXPECT_DOUBLE_EQ(fast->breakpoint2, slow.breakpoint2) << what;
        const double slope_scale =
            std::max({std::abs(slow.slope1), std::abs(slow.slope2),
                      std::abs(slow.slope3)});
        ExpectClose(fast->slope1, slow.slope1, slope_scale, what + " slope1");
        ExpectClose(fast->slope2, slow.slope2, slope_scale, what + " slope2");
        ExpectClose(fast->slope3, slow.slope3, slope_scale, what + " slope3");
        ExpectClose(fast->intercept, slow.intercept, 1, what + " intercept");
        // Exact fits (three segments through four points) leave rounding.
        ExpectClose(fast->rss, slow.rss, 1e-6 * total, what + " rss");
        ExpectClose(fast->r_squared, slow.r_squared, 1, what + " r²");
        ExpectClose(fast->bic, slow.bic, 1, what + " bic");
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, 9 * 6 * 3);
}

TEST(QuantileTest, InterpolatesLikeNumpyAndIgnoresNan) {
  EXPECT_DOUBLE_EQ(*Quantile({1, 2, 3, 4}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(*Quantile({4, 1, 3, 2}, 0.25), 1.75);
  EXPECT_DOUBLE_EQ(*Quantile({1, NAN, 3}, 1.0), 3);
  EXPECT_DOUBLE_EQ(*Quantile({5}, 0.9), 5);
  EXPECT_FALSE(Quantile({}, 0.5).has_value());
  EXPECT_FALSE(Quantile({NAN}, 0.5).has_value());
}

TEST(FormationTest, FirstCheckpointAtTauOfTheFinalValue) {
  EXPECT_EQ(FormationIndex({0.0, 0.1, 0.3, 0.6, 0.8, 1.0}, 0.5), 3);
  EXPECT_EQ(FormationIndex({0.9, 0.1, 0.3, 1.0}, 0.5), 0);
  EXPECT_EQ(FormationIndex({0.0, 0.2, 1.0}, 1.0), 2);
  EXPECT_FALSE(FormationIndex({0.3, 0.1, 0.0}, 0.5).has_value());
  EXPECT_FALSE(FormationIndex({}, 0.5).has_value());
}

TEST(ClassifyTokensTest, TokenLevelWhenOneTokenDominates) {
  const TokenConcentration token = ClassifyTokens({7, 7, 7, 7, 9}, 0.8);
  EXPECT_EQ(token.top_token, 7);
  EXPECT_DOUBLE_EQ(token.share, 0.8);
  EXPECT_TRUE(token.token_level);
  const TokenConcentration concept = ClassifyTokens({1, 2, 3, 1, 2}, 0.8);
  EXPECT_EQ(concept.top_token, 1);  // tie: the smallest id
  EXPECT_DOUBLE_EQ(concept.share, 0.4);
  EXPECT_FALSE(concept.token_level);
  EXPECT_FALSE(ClassifyTokens({}, 0.8).token_level);
}

TEST(MeanPairwiseCosineTest, KnownVectors) {
  EXPECT_DOUBLE_EQ(*MeanPairwiseCosine({{1, 0}, {2, 0}, {3, 0}}), 1.0);
  // (1,0),(0,1),(1,1): cosines 0, 1/sqrt2, 1/sqrt2.
  EXPECT_NEAR(*MeanPairwiseCosine({{1, 0}, {0, 1}, {1, 1}}),
              (2 / std::sqrt(2.0)) / 3, 1e-12);
  EXPECT_DOUBLE_EQ(*MeanPairwiseCosine({{1, 0}, {-1, 0}}), -1.0);
  EXPECT_FALSE(MeanPairwiseCosine({{1, 0}}).has_value());
}

TEST(PcaTrajectoryTest, PointsOnALineUseOneAxis) {
  // x(t) = p + t·u in 5-D: all variance on the first axis, spacing kept.
  std::vector<std::vector<float>> rows;
  const std::vector<float> p = {1, -2, 0.5, 3, 0}, u = {0.6, 0, 0.8, 0, 0};
  for (int t = 0; t < 6; ++t) {
    std::vector<float> r(5);
    for (int k = 0; k < 5; ++k) r[k] = p[k] + t * u[k];
    rows.push_back(r);
  }
  absl::StatusOr<Trajectory2d> pca = PcaTrajectory(rows);
  ASSERT_TRUE(pca.ok()) << pca.status();
  EXPECT_NEAR(pca->explained1, 1.0, 1e-9);
  EXPECT_NEAR(pca->explained2, 0.0, 1e-9);
  for (int t = 0; t < 6; ++t) {
    EXPECT_NEAR(pca->points[t].first, t - 2.5, 1e-5);  // centred, |u| = 1
    EXPECT_NEAR(pca->points[t].second, 0, 1e-5);
  }
  EXPECT_GE(pca->points.back().first, 0);  // sign convention
}

TEST(PcaTrajectoryTest, EllipseInAPlaneIsRecoveredUpToRotation) {
  // An ellipse with semi-axes 3 and 1 in a rotated plane of 8-D space: the
  // two axes carry 9:1 of the variance and pairwise distances are kept.
  const double pi = std::acos(-1.0);
  std::vector<double> a(8), b(8);
  for (int k = 0; k < 8; ++k) {
    a[k] = std::cos(0.3 * k);
    b[k] = std::sin(0.7 * k + 1);
  }
  // Gram-Schmidt so a, b are orthonormal.
  auto dot = [](const std::vector<double>& x, const std::vector<double>& y) {
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
    return s;
  };
  const double na = std::sqrt(dot(a, a));
  for (double& v : a) v /= na;
  const double ab = dot(a, b);
  for (int k = 0; k < 8; ++k) b[k] -= ab * a[k];
  const double nb = std::sqrt(dot(b, b));
  for (double& v : b) v /= nb;
  std::vector<std::vector<float>> rows;
  std::vector<std::pair<double, double>> truth;
  for (int i = 0; i < 16; ++i) {
    const double angle = 2 * pi * i / 16;
    const double u = 3 * std::cos(angle), v = std::sin(angle);
    truth.emplace_back(u, v);
    std::vector<float> r(8);
    for (int k = 0; k < 8; ++k)
      r[k] = static_cast<float>(u * a[k] + v * b[k] + 0.5);
    rows.push_back(r);
  }
  absl::StatusOr<Trajectory2d> pca = PcaTrajectory(rows);
  ASSERT_TRUE(pca.ok()) << pca.status();
  EXPECT_NEAR(pca->explained1, 0.9, 1e-5);
  EXPECT_NEAR(pca->explained2, 0.1, 1e-5);
  for (int i = 0; i < 16; ++i) {
    // Axis 1 is the long semi-axis: |coordinate| matches up to sign.
    EXPECT_NEAR(std::abs(pca->points[i].first), std::abs(truth[i].first), 1e-4);
    EXPECT_NEAR(std::abs(pca->points[i].second), std::abs(truth[i].second),
                1e-4);
    for (int j = 0; j < 16; ++j) {
      const double d_true = std::hypot(truth[i].first - truth[j].first,
                                       truth[i].second - truth[j].second);
      const double d_pca =
          std::hypot(pca->points[i].first - pca->points[j].first,
                     pca->points[i].second - pca->points[j].second);
      EXPECT_NEAR(d_pca, d_true, 1e-4);
    }
  }
}

TEST(PcaTrajectoryTest, BadRows) {
  EXPECT_FALSE(PcaTrajectory({}).ok());
  EXPECT_THAT(std::string(PcaTrajectory({{1, 2}, {1}}).status().message()),
              HasSubstr("row 1 has 1 values, row 0 has 2"));
  absl::StatusOr<Trajectory2d> single = PcaTrajectory({{1, 2, 3}});
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->points.size(), 1u);
  EXPECT_EQ(single->points[0].first, 0);
}

}  // namespace
}  // namespace saetrack::analysis
