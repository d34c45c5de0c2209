// The verdicts on the paper's three drift findings (DESIGN.md §4), each
// checked on plain numbers and stated as one sentence: features drift
// gradually towards their final direction; the drift has three phases, a
// fast initial drift, a slower middle phase and a late convergence (three
// segments win by BIC and the middle one is the flattest); concept-level
// features form later than token-level ones.
//
// Torch-free and proto-free: callers convert their summaries (the CLI a
// v1::DriftSummary) into the input structs below.
#ifndef SAETRACK_ANALYSIS_FINDINGS_H_
#define SAETRACK_ANALYSIS_FINDINGS_H_

#include <array>
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

// Finding 2, three phases: the phase fit of the median cos to final against
// log(step + 1) that BIC chose (PhaseFit's layout: with fewer than three
// segments the unused slopes repeat the last one).
struct PhaseShape {
  double slope1 = 0;
  double slope2 = 0;
  double slope3 = 0;
  double breakpoint1_step = 0;
  double breakpoint2_step = 0;
  double r_squared = 0;
  // The number of segments chosen, 1 to 3; 0 for a three-segment fit stored
  // before models were compared, which carries no evidence.
  int segments = 0;
  // Each model's BIC, bic[s − 1] for s segments; nullopt where that model
  // did not compete (too few checkpoints).
  std::array<std::optional<double>, 3> bic;
};

// The fit must explain at least this much of the variance to reproduce.
inline constexpr double kPhasesMinRSquared = 0.9;

// Reproduces when three segments win by BIC, the middle slope is the
// smallest of the three (strictly) and r² ≥ kPhasesMinRSquared; does not
// when fewer segments win (the sentence says how many the data support).
// Not measured when `phases` is absent (fewer than four checkpoints), when
// three segments did not compete, or for a fit without evidence
// (segments 0).
Finding PhasesFinding(const std::optional<PhaseShape>& phases);

// The evidence for the number of segments, e.g. "ΔBIC 40.2 / 12.3 / 0.0 for
// 1 / 2 / 3 segments": each model's BIC minus the lowest, "-" for a model
// that did not compete. Empty when no model has a BIC.
std::string DescribeBicEvidence(
    const std::array<std::optional<double>, 3>& bic);

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

// --- Findings over replicate runs (seeds of a chain at one layer) ---

// A number over runs: its median and range over the present, finite values.
struct Spread {
  int runs = 0;
  double median = 0;
  double min = 0;
  double max = 0;
};

// nullopt when no value is present and finite.
std::optional<Spread> SpreadOf(
    const std::vector<std::optional<double>>& values);

// The words for each verdict.
struct VerdictWords {
  const char* reproduces = "reproduces";
  const char* weakly = "reproduces only weakly";
  const char* does_not = "does NOT reproduce";
  const char* not_measured = "not measured";
};

// One finding's verdicts over runs in words, most frequent first, e.g.
// "reproduces in 2 of 2 runs" or "reproduces only weakly in 1 of 2 runs,
// does NOT reproduce in 1". Empty for no runs.
std::string DescribeVerdicts(const std::vector<Verdict>& verdicts,
                             const VerdictWords& words = {});

// Drift is signal only where it exceeds what separates two SAEs trained on
// the same checkpoint: at step t, the median cos between a feature's decoder
// and its final direction beside the median matched cos of two SAEs of
// step t (seed stability at the chain's first checkpoint, chain vs
// independent later) and of two random dictionaries.
inline constexpr double kDriftNoiseMargin = 0.05;

// DriftAgainstNoise's verdicts in words.
inline constexpr VerdictWords kNoiseWords = {
    "signal", "barely above the noise", "within the noise", "not measured"};

// Reproduces ("signal") when cos_to_final is below two_sae_match by more
// than kDriftNoiseMargin, does not ("within the noise") when it is at or
// above two_sae_match, only weakly in between. The sentence starts
// "drift vs noise at step t: ".
Finding DriftAgainstNoise(int64_t step, double cos_to_final,
                          double two_sae_match, double random_match);

}  // namespace saetrack::analysis

#endif  // SAETRACK_ANALYSIS_FINDINGS_H_
