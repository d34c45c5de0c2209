// The verdicts on the paper's three drift findings (DESIGN.md §4), each
// checked on plain numbers and stated as one sentence: features drift
// gradually towards their final direction; the drift has three phases, a
// fast initial drift, a slower middle phase and a late convergence (the
// middle segment of the fit is the flattest); concept-level features form
// later than token-level ones.
//
// Torch-free and proto-free: callers convert their summaries (the CLI a
// v1::DriftSummary) into the input structs below.
#ifndef SAETRACK_ANALYSIS_FINDINGS_H_
#define SAETRACK_ANALYSIS_FINDINGS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace saetrack::analysis {

enum class Verdict {
  kNotMeasured,
  kReproduces,
  kReproducesWeakly,
  kDoesNotReproduce,
};

struct Finding {
  Verdict verdict = Verdict::kNotMeasured;
  // One line, starting with the finding's name ("drift: ", "phases: ",
  // "formation: ").
  std::string sentence;
};

// Finding 1, gradual drift: per checkpoint in step order, its step and the
// median (across features) cos of the decoder direction to the final one.
struct DriftSeries {
  std::vector<int64_t> steps;
  std::vector<double> median_cos_to_final;  // same size as steps
};

// A checkpoint "falls" when its median is more than this below the previous
// checkpoint's; the drift reproduces when none falls.
inline constexpr double kDriftFallTolerance = 1e-3;

// Not measured when the series is empty.
Finding DriftFinding(const DriftSeries& series);

// Finding 2, three phases: the three-phase fit of the median cos to final
// against log(step + 1).
struct PhaseShape {
  double slope1 = 0;
  double slope2 = 0;
  double slope3 = 0;
  double breakpoint1_step = 0;
  double breakpoint2_step = 0;
  double r_squared = 0;
};

// The fit must explain at least this much of the variance to reproduce.
inline constexpr double kPhasesMinRSquared = 0.9;

// Reproduces when the middle slope is the smallest of the three (strictly)
// and r² ≥ kPhasesMinRSquared. Not measured when `phases` is absent (fewer
// than four checkpoints).
Finding PhasesFinding(const std::optional<PhaseShape>& phases);

// Finding 3, formation order: the formed features of one kind.
struct KindFormation {
  int64_t formed = 0;
  double mean_formation_step = 0;
  double median_formation_step = 0;
};

// Reproduces when concept-level features form later than token-level ones
// both on average and at the median, only weakly when on one of the two.
// Not measured when either kind is absent or has no formed feature.
Finding FormationFinding(const std::optional<KindFormation>& token_level,
                         const std::optional<KindFormation>& concept_level);

struct FindingsInput {
  DriftSeries drift;
  std::optional<PhaseShape> phases;
  std::optional<KindFormation> token_level;
  std::optional<KindFormation> concept_level;
};

// The three findings in order: drift, phases, formation.
std::vector<Finding> PaperFindings(const FindingsInput& input);

}  // namespace saetrack::analysis

#endif  // SAETRACK_ANALYSIS_FINDINGS_H_
