// The per-feature phase fit (DESIGN §4): one feature's cos to final over
// Pythia's 154 checkpoints against log(step + 1), with
//   - the exhaustive three-segment fit saetrack used before (kept here as the
//     baseline: the normal equations rebuilt from all n points for each of
//     the O(n²) breakpoint pairs, O(n³) per feature),
//   - FitPiecewiseLinear(x, y, 3) (O(1) per pair from suffix sums, O(n²)),
//   - FitPhases, what the summariser runs per feature: the 1-, 2- and
//     3-segment fits and the BIC choice.
// Each also runs at fewer checkpoints, and Google Benchmark fits the growth.
// At the end the 154-checkpoint times are extrapolated to 65,536 features.
// Run:
//   build/bin/dynamics_bench
#include <benchmark/benchmark.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "analysis/dynamics.h"

namespace saetrack::analysis {
namespace {

// The features a layer of the paper's Pythia SAEs has.
constexpr int64_t kFeatures = 65536;
// Pythia's checkpoints: steps 0, 1, 2, 4, ..., 512, then every 1000 to 143000.
constexpr int kPythiaCheckpoints = 154;
// Distinct synthetic features cycled through (so no one curve is cached).
constexpr int kCurves = 64;

// n points spread evenly (in index) over Pythia's checkpoints on the phase
// fit's x axis, interpolated between them: Pythia's own for n = 154.
std::vector<double> PythiaX(int n) {
  std::vector<int64_t> steps = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  for (int64_t s = 1000; s <= 143000; s += 1000) steps.push_back(s);
  const std::vector<double> all = LogSteps(steps);
  std::vector<double> x;
  for (int i = 0; i < n; ++i) {
    const double at = static_cast<double>(i) * (all.size() - 1) / (n - 1);
    const size_t low = static_cast<size_t>(at);
    const size_t high = std::min(low + 1, all.size() - 1);
    x.push_back(all[low] + (at - low) * (all[high] - all[low]));
  }
  return x;
}

// Feature-like curves: a rising three-segment cos to final plus noise.
std::vector<std::vector<double>> Curves(const std::vector<double>& x) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<double> uniform(0, 1);
  std::normal_distribution<double> gaussian(0, 0.005);
  std::vector<std::vector<double>> curves;
  for (int c = 0; c < kCurves; ++c) {
    const double b1 = 1 + 4 * uniform(rng), b2 = b1 + 1 + 5 * uniform(rng);
    const double s1 = 0.1 * uniform(rng), s2 = 0.05 * uniform(rng),
                 s3 = 0.1 * uniform(rng);
    std::vector<double> y;
    for (double v : x) {
      y.push_back(0.5 + s1 * v + (s2 - s1) * std::max(0.0, v - b1) +
                  (s3 - s2) * std::max(0.0, v - b2) + gaussian(rng));
    }
    curves.push_back(std::move(y));
  }
  return curves;
}

// The fit saetrack ran before FitPhases, verbatim in its algorithm: for
// every candidate pair the 4x4 normal equations over all n points, a pivoted
// LDLᵀ solve and the rss over all n points again.
struct OldFit {
  double breakpoint1 = 0, breakpoint2 = 0, rss = 0;
  Eigen::Vector4d w = Eigen::Vector4d::Zero();
};
OldFit OldFitThreePhases(const std::vector<double>& x,
                         const std::vector<double>& y) {
  const int n = static_cast<int>(x.size());
  std::vector<double> candidates;
  for (int i = 1; i + 1 < n; ++i) {
    candidates.push_back(0.5 * (x[i - 1] + x[i]));
    candidates.push_back(x[i]);
  }
  candidates.push_back(0.5 * (x[n - 2] + x[n - 1]));
  OldFit best;
  best.rss = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < candidates.size(); ++i) {
    for (size_t j = i + 1; j < candidates.size(); ++j) {
      const double b1 = candidates[i];
      const double b2 = candidates[j];
      Eigen::Matrix4d ata = Eigen::Matrix4d::Zero();
      Eigen::Vector4d aty = Eigen::Vector4d::Zero();
      for (int k = 0; k < n; ++k) {
        const double row[4] = {1.0, x[k], std::max(0.0, x[k] - b1),
                               std::max(0.0, x[k] - b2)};
        for (int r = 0; r < 4; ++r) {
          aty(r) += row[r] * y[k];
          for (int c = 0; c < 4; ++c) ata(r, c) += row[r] * row[c];
        }
      }
      const Eigen::LDLT<Eigen::Matrix4d> ldlt(ata);
      if (ldlt.info() != Eigen::Success ||
          !(ldlt.vectorD().cwiseAbs().minCoeff() >= 1e-12)) {
        continue;
      }
      const Eigen::Vector4d w = ldlt.solve(aty);
      if (!w.allFinite()) continue;
      double rss = 0;
      for (int k = 0; k < n; ++k) {
        const double fit = w[0] + w[1] * x[k] +
                           w[2] * std::max(0.0, x[k] - b1) +
                           w[3] * std::max(0.0, x[k] - b2);
        rss += (y[k] - fit) * (y[k] - fit);
      }
      if (rss < best.rss - 1e-15) {
        best = {b1, b2, rss, w};
      }
    }
  }
  return best;
}

template <typename Fit>
void RunFits(benchmark::State& state, Fit fit) {
  const int n = static_cast<int>(state.range(0));
  const std::vector<double> x = PythiaX(n);
  const std::vector<std::vector<double>> curves = Curves(x);
  size_t next = 0;
  for (auto _ : state) {
    fit(x, curves[next], state);
    next = (next + 1) % curves.size();
  }
  state.SetComplexityN(n);
  // Seconds the fit would take over a layer's features, one core.
  state.counters["s_per_65536"] = benchmark::Counter(
      static_cast<double>(state.iterations()) / kFeatures,
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_OldThreeSegmentFit(benchmark::State& state) {
  RunFits(state, [](const std::vector<double>& x, const std::vector<double>& y,
                    benchmark::State&) {
    benchmark::DoNotOptimize(OldFitThreePhases(x, y));
  });
}
BENCHMARK(BM_OldThreeSegmentFit)
    ->Arg(20)
    ->Arg(39)
    ->Arg(77)
    ->Arg(kPythiaCheckpoints)
    ->Unit(benchmark::kMillisecond)
    ->Complexity();

void BM_ThreeSegmentFit(benchmark::State& state) {
  RunFits(state, [](const std::vector<double>& x, const std::vector<double>& y,
                    benchmark::State& s) {
    absl::StatusOr<PhaseFit> fit = FitPiecewiseLinear(x, y, 3);
    if (!fit.ok()) s.SkipWithError(fit.status().ToString().c_str());
    benchmark::DoNotOptimize(fit);
  });
}
BENCHMARK(BM_ThreeSegmentFit)
    ->Arg(20)
    ->Arg(39)
    ->Arg(77)
    ->Arg(kPythiaCheckpoints)
    ->Arg(308)
    ->Unit(benchmark::kMicrosecond)
    ->Complexity();

void BM_FitPhases(benchmark::State& state) {
  RunFits(state, [](const std::vector<double>& x, const std::vector<double>& y,
                    benchmark::State& s) {
    absl::StatusOr<PhaseModels> fit = FitPhases(x, y);
    if (!fit.ok()) s.SkipWithError(fit.status().ToString().c_str());
    benchmark::DoNotOptimize(fit);
  });
}
BENCHMARK(BM_FitPhases)
    ->Arg(20)
    ->Arg(39)
    ->Arg(77)
    ->Arg(kPythiaCheckpoints)
    ->Arg(308)
    ->Unit(benchmark::kMicrosecond)
    ->Complexity();

// The console report, remembering each run's CPU seconds per iteration
// (CPU time, as the s_per_65536 counter: other processes on the machine
// stretch the wall time, not the work).
class RememberingReporter : public benchmark::ConsoleReporter {
 public:
  RememberingReporter() : ConsoleReporter(OO_Tabular) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Iteration && !run.error_occurred &&
          run.iterations > 0) {
        seconds_[run.benchmark_name()] =
            run.cpu_accumulated_time / static_cast<double>(run.iterations);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }

  // nullopt-like: a negative value when the benchmark did not run.
  double Seconds(const std::string& name) const {
    auto it = seconds_.find(name);
    return it == seconds_.end() ? -1 : it->second;
  }

 private:
  std::map<std::string, double> seconds_;
};

void PrintExtrapolation(const RememberingReporter& reporter) {
  const std::string n = "/" + std::to_string(kPythiaCheckpoints);
  const double old_fit = reporter.Seconds("BM_OldThreeSegmentFit" + n);
  const double new_fit = reporter.Seconds("BM_ThreeSegmentFit" + n);
  const double phases = reporter.Seconds("BM_FitPhases" + n);
  std::printf("\nper feature, %d checkpoints, CPU time on one core:\n",
              kPythiaCheckpoints);
  const auto line = [](const char* what, double s) {
    if (s < 0) return;
    std::printf("  %-40s %10.1f us  x %lld features = %9.1f s (%.2f h)\n", what,
                s * 1e6, static_cast<long long>(kFeatures), s * kFeatures,
                s * kFeatures / 3600);
  };
  line("old exhaustive three-segment fit", old_fit);
  line("three-segment fit (FitPiecewiseLinear)", new_fit);
  line("1/2/3 segments + BIC (FitPhases)", phases);
  if (old_fit > 0 && new_fit > 0) {
    std::printf("  old / new three-segment fit: %.0fx\n", old_fit / new_fit);
  }
  if (old_fit > 0 && phases > 0) {
    std::printf("  old three-segment fit / FitPhases: %.0fx\n",
                old_fit / phases);
  }
}

}  // namespace
}  // namespace saetrack::analysis

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  saetrack::analysis::RememberingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  saetrack::analysis::PrintExtrapolation(reporter);
  benchmark::Shutdown();
  return 0;
}
