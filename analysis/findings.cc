#include "analysis/findings.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "analysis/dynamics.h"

namespace saetrack::analysis {

Finding DriftFinding(const DriftSeries& series) {
  const std::vector<double>& q50 = series.median_cos_to_final;
  if (q50.empty() || series.steps.empty()) {
    return {Verdict::kNotMeasured,
            "drift: not measured (no checkpoint analysed)"};
  }
  int dips = 0;
  for (size_t i = 1; i < q50.size(); ++i) {
    if (q50[i] < q50[i - 1] - kDriftFallTolerance) ++dips;
  }
  const std::string range = absl::StrFormat(
      "the median cos to the final direction goes from %.3f at step %d to "
      "%.3f at step %d",
      q50.front(), series.steps.front(), q50.back(), series.steps.back());
  if (dips == 0) {
    return {Verdict::kReproduces,
            absl::StrCat("drift: reproduces, features keep their index and "
                         "converge: ",
                         range, ", never falling")};
  }
  return {Verdict::kDoesNotReproduce,
          absl::StrCat("drift: does NOT reproduce monotonic convergence: ",
                       range, " but falls at ", dips, " checkpoint(s)")};
}

std::string DescribeBicEvidence(
    const std::array<std::optional<double>, 3>& bic) {
  std::optional<double> lowest;
  for (const std::optional<double>& b : bic) {
    if (b.has_value() && (!lowest.has_value() || *b < *lowest)) lowest = *b;
  }
  if (!lowest.has_value()) return "";
  std::vector<std::string> deltas;
  for (const std::optional<double>& b : bic) {
    deltas.push_back(b.has_value() ? absl::StrFormat("%.1f", *b - *lowest)
                                   : std::string("-"));
  }
  return absl::StrCat("ΔBIC ", absl::StrJoin(deltas, " / "),
                      " for 1 / 2 / 3 segments");
}

Finding PhasesFinding(const std::optional<PhaseShape>& phases) {
  if (!phases.has_value()) {
    return {Verdict::kNotMeasured,
            "phases: not measured (fewer than four checkpoints)"};
  }
  const PhaseShape& p = *phases;
  if (p.segments < 1 || p.segments > 3) {
    return {Verdict::kNotMeasured,
            "phases: not measured (the stored fit has three segments but no "
            "comparison with fewer; summarise the job again)"};
  }
  const std::string evidence = DescribeBicEvidence(p.bic);
  if (!p.bic[2].has_value()) {
    return {
        Verdict::kNotMeasured,
        absl::StrCat("phases: not measured (fewer than ", MinPointsToCompete(3),
                     " checkpoints, too few for three segments to "
                     "compete; ",
                     evidence, ")")};
  }
  if (p.segments < 3) {
    const std::string numbers =
        p.segments == 1
            ? absl::StrFormat("slope %.4f (r² %.3f)", p.slope1, p.r_squared)
            : absl::StrFormat(
                  "slopes %.4f / %.4f with a breakpoint at step %.0f (r² "
                  "%.3f)",
                  p.slope1, p.slope2, p.breakpoint1_step, p.r_squared);
    return {Verdict::kDoesNotReproduce,
            absl::StrCat("phases: does NOT reproduce three phases, the data "
                         "support ",
                         p.segments == 1
                             ? "1 segment (a straight line in log(step + 1))"
                             : "2 segments",
                         " (", evidence, "): ", numbers)};
  }
  const std::string numbers = absl::StrFormat(
      "slopes %.4f / %.4f / %.4f with breakpoints at steps %.0f and %.0f "
      "(r² %.3f; %s)",
      p.slope1, p.slope2, p.slope3, p.breakpoint1_step, p.breakpoint2_step,
      p.r_squared, evidence);
  // The paper: a rapid initial drift, a slower middle phase (semantic
  // stabilisation), then convergence to the final direction late in
  // training; in slopes of the median cos to final, the middle segment is
  // the flattest.
  const double s1 = p.slope1, s2 = p.slope2, s3 = p.slope3;
  const bool middle_flattest = s2 < s1 && s2 < s3;
  if (middle_flattest && p.r_squared >= kPhasesMinRSquared) {
    return {Verdict::kReproduces,
            absl::StrCat("phases: reproduces, a fast initial drift, a slower "
                         "middle phase, then convergence to the final "
                         "direction: ",
                         numbers)};
  }
  std::string shape = "the fit is poor";
  if (!middle_flattest) {
    shape = s1 < s2 && s2 < s3   ? "the drift speeds up phase by phase"
            : s1 > s2 && s2 > s3 ? "the drift slows down phase by phase"
                                 : "the middle phase is the steepest";
  }
  return {Verdict::kDoesNotReproduce,
          absl::StrCat(
              "phases: does NOT reproduce the paper's fast-slow-fast shape (",
              shape, "): ", numbers)};
}

Finding FormationFinding(const std::optional<KindFormation>& token_level,
                         const std::optional<KindFormation>& concept_level) {
  if (!token_level.has_value() || !concept_level.has_value() ||
      token_level->formed == 0 || concept_level->formed == 0) {
    return {Verdict::kNotMeasured,
            "formation: not measured (no formed token-level or concept-level "
            "features)"};
  }
  const KindFormation& token = *token_level;
  const KindFormation& concept_kind = *concept_level;
  const std::string numbers = absl::StrFormat(
      "mean formation step %.1f (concept-level) vs %.1f (token-level), "
      "medians %.0f vs %.0f",
      concept_kind.mean_formation_step, token.mean_formation_step,
      concept_kind.median_formation_step, token.median_formation_step);
  const bool mean_later =
      concept_kind.mean_formation_step > token.mean_formation_step;
  const bool median_later =
      concept_kind.median_formation_step > token.median_formation_step;
  if (mean_later && median_later) {
    return {Verdict::kReproduces,
            absl::StrCat(
                "formation: reproduces, concept-level features form later: ",
                numbers)};
  }
  if (mean_later || median_later) {
    return {Verdict::kReproducesWeakly,
            absl::StrCat("formation: reproduces only weakly, concept-level "
                         "features form later on ",
                         mean_later ? "average but not at the median"
                                    : "the median only",
                         ": ", numbers)};
  }
  return {Verdict::kDoesNotReproduce,
          absl::StrCat("formation: does NOT reproduce, concept-level features "
                       "do not form later: ",
                       numbers)};
}

std::vector<Finding> PaperFindings(const FindingsInput& input) {
  return {DriftFinding(input.drift), PhasesFinding(input.phases),
          FormationFinding(input.token_level, input.concept_level)};
}

std::optional<Spread> SpreadOf(
    const std::vector<std::optional<double>>& values) {
  std::vector<double> finite;
  for (const std::optional<double>& v : values) {
    if (v.has_value() && std::isfinite(*v)) finite.push_back(*v);
  }
  if (finite.empty()) return std::nullopt;
  std::sort(finite.begin(), finite.end());
  const size_t n = finite.size();
  Spread spread;
  spread.runs = static_cast<int>(n);
  spread.median =
      n % 2 == 1 ? finite[n / 2] : (finite[n / 2 - 1] + finite[n / 2]) / 2;
  spread.min = finite.front();
  spread.max = finite.back();
  return spread;
}

std::string DescribeVerdicts(const std::vector<Verdict>& verdicts,
                             const VerdictWords& names) {
  if (verdicts.empty()) return "";
  const auto words = [&names](Verdict v) -> const char* {
    switch (v) {
      case Verdict::kReproduces:
        return names.reproduces;
      case Verdict::kReproducesWeakly:
        return names.weakly;
      case Verdict::kDoesNotReproduce:
        return names.does_not;
      case Verdict::kNotMeasured:
        break;
    }
    return names.not_measured;
  };
  std::vector<std::pair<int, Verdict>> counts;
  for (Verdict v : {Verdict::kReproduces, Verdict::kReproducesWeakly,
                    Verdict::kDoesNotReproduce, Verdict::kNotMeasured}) {
    const int n =
        static_cast<int>(std::count(verdicts.begin(), verdicts.end(), v));
    if (n > 0) counts.emplace_back(n, v);
  }
  // Most frequent first; ties in the order above.
  std::stable_sort(
      counts.begin(), counts.end(),
      [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string text;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (i == 0) {
      absl::StrAppend(&text, words(counts[i].second), " in ", counts[i].first,
                      " of ", verdicts.size(),
                      verdicts.size() == 1 ? " run" : " runs");
    } else {
      absl::StrAppend(&text, ", ", words(counts[i].second), " in ",
                      counts[i].first);
    }
  }
  return text;
}

Finding DriftAgainstNoise(int64_t step, double cos_to_final,
                          double two_sae_match, double random_match) {
  Finding finding;
  const std::string numbers = absl::StrFormat(
      "the median cos to the final direction (%.3f) against two SAEs "
      "trained on that checkpoint (%.3f; two random dictionaries %.3f)",
      cos_to_final, two_sae_match, random_match);
  if (!std::isfinite(cos_to_final) || !std::isfinite(two_sae_match)) {
    finding.verdict = Verdict::kNotMeasured;
    finding.sentence =
        absl::StrCat("drift vs noise at step ", step, ": not measured");
  } else if (cos_to_final < two_sae_match - kDriftNoiseMargin) {
    finding.verdict = Verdict::kReproduces;
    finding.sentence =
        absl::StrCat("drift vs noise at step ", step, ": signal, ", numbers);
  } else if (cos_to_final >= two_sae_match) {
    finding.verdict = Verdict::kDoesNotReproduce;
    finding.sentence = absl::StrCat("drift vs noise at step ", step,
                                    ": within the noise, ", numbers);
  } else {
    finding.verdict = Verdict::kReproducesWeakly;
    finding.sentence = absl::StrCat("drift vs noise at step ", step,
                                    ": barely above the noise, ", numbers);
  }
  return finding;
}

}  // namespace saetrack::analysis
