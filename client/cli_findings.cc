// `saetrack findings`: the paper's findings over replicate runs — the same
// job with different SAE seeds — at one layer, each number with its median
// and range over the runs, and each verdict counted over them.
#include <cmath>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "analysis/findings.h"
#include "client/internal/cli_commands.h"
#include "client/output.h"

namespace saetrack::client {
namespace internal {
namespace {

// How a row's values print.
enum class Unit { kCosine, kSpeedup, kStep, kCount };

struct Row {
  std::string name;
  Unit unit = Unit::kCosine;
  std::vector<std::optional<double>> values;
};

std::string FormatValue(Unit unit, const std::optional<double>& v) {
  if (!v.has_value() || !std::isfinite(*v)) return "-";
  switch (unit) {
    case Unit::kCosine:
      return absl::StrFormat("%.3f", *v);
    case Unit::kSpeedup:
      return *v > 0 ? absl::StrFormat("%.1fx", *v) : "never";
    case Unit::kStep:
      return absl::StrFormat("%.1f", *v);
    case Unit::kCount:
      // A median of counts may fall between two.
      return *v == std::floor(*v) ? absl::StrFormat("%.0f", *v)
                                  : absl::StrFormat("%.1f", *v);
  }
  return "-";
}

const v1::CheckpointDrift* DriftAt(const v1::DriftSummary& drift,
                                   int64_t step) {
  for (const v1::CheckpointDrift& c : drift.checkpoints()) {
    if (c.step() == step) return &c;
  }
  return nullptr;
}

const v1::CheckpointMetrics* ReferenceAt(
    const v1::GetQualityChecksResponse& quality, int64_t step) {
  for (const v1::CheckpointMetrics& m : quality.checkpoints()) {
    if (m.step() == step && m.has_reference()) return &m;
  }
  return nullptr;
}

const v1::KindSummary* KindOf(const v1::DriftSummary& drift,
                              v1::FeatureKind kind) {
  for (const v1::KindSummary& k : drift.kinds()) {
    if (k.kind() == kind) return &k;
  }
  return nullptr;
}

// The reference steps of any run, in step order.
std::vector<int64_t> ReferenceSteps(const std::vector<FindingsRun>& runs) {
  std::map<int64_t, bool> steps;
  for (const FindingsRun& run : runs) {
    for (const v1::CheckpointMetrics& m : run.quality.checkpoints()) {
      if (m.has_reference()) steps[m.step()] = true;
    }
  }
  std::vector<int64_t> out;
  for (const auto& [step, unused] : steps) out.push_back(step);
  return out;
}

template <typename Get>
Row MakeRow(std::string name, Unit unit, const std::vector<FindingsRun>& runs,
            const Get& get) {
  Row row{std::move(name), unit, {}};
  for (const FindingsRun& run : runs) row.values.push_back(get(run));
  return row;
}

// The last analysed step of the runs: a feature's direction there is its
// final one (cos 1), so drift means nothing at it.
std::optional<int64_t> FinalStep(const std::vector<FindingsRun>& runs) {
  std::optional<int64_t> last;
  for (const FindingsRun& run : runs) {
    if (run.drift.checkpoints().empty()) continue;
    const int64_t step = run.drift.checkpoints().rbegin()->step();
    if (!last.has_value() || step > *last) last = step;
  }
  return last;
}

std::vector<Row> FindingRows(const std::vector<FindingsRun>& runs) {
  std::vector<Row> rows;
  const std::optional<int64_t> final_step = FinalStep(runs);
  for (int64_t step : ReferenceSteps(runs)) {
    if (step != final_step)
      rows.push_back(
          MakeRow(absl::StrCat("drift: median cos to final at step ", step),
                  Unit::kCosine, runs,
                  [&](const FindingsRun& r) -> std::optional<double> {
                    const v1::CheckpointDrift* c = DriftAt(r.drift, step);
                    if (c == nullptr) return std::nullopt;
                    return c->cos_to_final().q50();
                  }));
    rows.push_back(
        MakeRow(absl::StrCat("  two SAEs of step ", step, " (matched cos)"),
                Unit::kCosine, runs,
                [&](const FindingsRun& r) -> std::optional<double> {
                  const v1::CheckpointMetrics* m = ReferenceAt(r.quality, step);
                  if (m == nullptr) return std::nullopt;
                  return m->reference().match_median_cosine();
                }));
    rows.push_back(MakeRow("  two random dictionaries", Unit::kCosine, runs,
                           [&](const FindingsRun& r) -> std::optional<double> {
                             const v1::CheckpointMetrics* m =
                                 ReferenceAt(r.quality, step);
                             if (m == nullptr) return std::nullopt;
                             return m->reference().random_median_cosine();
                           }));
    rows.push_back(MakeRow("  chain SAE cos to its init", Unit::kCosine, runs,
                           [&](const FindingsRun& r) -> std::optional<double> {
                             const v1::CheckpointMetrics* m =
                                 ReferenceAt(r.quality, step);
                             if (m == nullptr) return std::nullopt;
                             return m->median_decoder_cos_init();
                           }));
    for (const bool slow : {false, true}) {
      Row row = MakeRow(
          absl::StrCat("speed-up at step ", step,
                       slow ? ", lr/10" : ", same lr"),
          Unit::kSpeedup, runs,
          [&](const FindingsRun& r) -> std::optional<double> {
            const v1::CheckpointMetrics* m = ReferenceAt(r.quality, step);
            if (m == nullptr || !m->reference().has_speedup()) {
              return std::nullopt;
            }
            const v1::RecurrenceSpeedup& s = m->reference().speedup();
            return slow ? s.slow_lr().speedup() : s.same_lr().speedup();
          });
      bool any = false;
      for (const auto& v : row.values) any = any || v.has_value();
      if (any) rows.push_back(std::move(row));
    }
  }
  rows.push_back(MakeRow("phases: segments chosen by BIC", Unit::kCount, runs,
                         [](const FindingsRun& r) -> std::optional<double> {
                           if (!r.drift.has_phases()) return std::nullopt;
                           return r.drift.phases().segments();
                         }));
  rows.push_back(MakeRow("phases: first breakpoint (step)", Unit::kStep, runs,
                         [](const FindingsRun& r) -> std::optional<double> {
                           if (!r.drift.has_phases() ||
                               r.drift.phases().segments() < 2) {
                             return std::nullopt;
                           }
                           return r.drift.phases().breakpoint1_step();
                         }));
  rows.push_back(MakeRow("phases: second breakpoint (step)", Unit::kStep, runs,
                         [](const FindingsRun& r) -> std::optional<double> {
                           if (!r.drift.has_phases() ||
                               r.drift.phases().segments() < 3) {
                             return std::nullopt;
                           }
                           return r.drift.phases().breakpoint2_step();
                         }));
  for (const auto& [kind, label] :
       {std::pair{v1::FEATURE_KIND_TOKEN_LEVEL, "token-level"},
        std::pair{v1::FEATURE_KIND_CONCEPT_LEVEL, "concept-level"}}) {
    const v1::FeatureKind k = kind;
    const auto kind_value = [&](auto field) {
      return [k, field](const FindingsRun& r) -> std::optional<double> {
        const v1::KindSummary* s = KindOf(r.drift, k);
        if (s == nullptr) return std::nullopt;
        return field(*s);
      };
    };
    rows.push_back(MakeRow(
        absl::StrCat("formation: ", label, " features"), Unit::kCount, runs,
        kind_value([](const v1::KindSummary& s) -> std::optional<double> {
          return s.count();
        })));
    rows.push_back(MakeRow(
        absl::StrCat("  mean formation step"), Unit::kStep, runs,
        kind_value([](const v1::KindSummary& s) -> std::optional<double> {
          if (s.formed() == 0) return std::nullopt;
          return s.mean_formation_step();
        })));
    rows.push_back(MakeRow(
        absl::StrCat("  median formation step"), Unit::kStep, runs,
        kind_value([](const v1::KindSummary& s) -> std::optional<double> {
          if (s.formed() == 0) return std::nullopt;
          return s.median_formation_step();
        })));
    rows.push_back(MakeRow(
        "  final P, random-position baseline", Unit::kCosine, runs,
        kind_value([](const v1::KindSummary& s) -> std::optional<double> {
          if (!s.has_final_progress_q50()) return std::nullopt;
          return s.final_progress_q50();
        })));
    rows.push_back(MakeRow(
        "  final P, same-token baseline", Unit::kCosine, runs,
        kind_value([](const v1::KindSummary& s) -> std::optional<double> {
          if (!s.has_final_progress_token_controlled_q50()) {
            return std::nullopt;
          }
          return s.final_progress_token_controlled_q50();
        })));
  }
  return rows;
}

struct VerdictLine {
  std::string finding;
  std::vector<analysis::Verdict> per_run;
  std::string summary;
};

const char* VerdictName(analysis::Verdict v) {
  switch (v) {
    case analysis::Verdict::kReproduces:
      return "reproduces";
    case analysis::Verdict::kReproducesWeakly:
      return "reproduces_weakly";
    case analysis::Verdict::kDoesNotReproduce:
      return "does_not_reproduce";
    case analysis::Verdict::kNotMeasured:
      break;
  }
  return "not_measured";
}

std::vector<VerdictLine> VerdictLines(const std::vector<FindingsRun>& runs) {
  std::vector<VerdictLine> lines(3);
  lines[0].finding = "drift";
  lines[1].finding = "phases";
  lines[2].finding = "formation";
  for (const FindingsRun& run : runs) {
    const std::vector<analysis::Finding> paper =
        analysis::PaperFindings(FindingsInputOf(run.drift));
    for (size_t i = 0; i < lines.size() && i < paper.size(); ++i) {
      lines[i].per_run.push_back(paper[i].verdict);
    }
  }
  const std::optional<int64_t> final_step = FinalStep(runs);
  for (int64_t step : ReferenceSteps(runs)) {
    if (step == final_step) continue;
    VerdictLine line;
    line.finding = absl::StrCat("drift vs noise at step ", step);
    for (const FindingsRun& run : runs) {
      const v1::CheckpointDrift* c = DriftAt(run.drift, step);
      const v1::CheckpointMetrics* m = ReferenceAt(run.quality, step);
      line.per_run.push_back(c == nullptr || m == nullptr
                                 ? analysis::Verdict::kNotMeasured
                                 : analysis::DriftAgainstNoise(
                                       step, c->cos_to_final().q50(),
                                       m->reference().match_median_cosine(),
                                       m->reference().random_median_cosine())
                                       .verdict);
    }
    lines.push_back(std::move(line));
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    // The paper's three findings, then drift against the noise.
    lines[i].summary = analysis::DescribeVerdicts(
        lines[i].per_run,
        i < 3 ? analysis::VerdictWords{} : analysis::kNoiseWords);
  }
  return lines;
}

// Every link's speed-up (same lr, then lr/10) over all runs.
std::pair<std::vector<std::optional<double>>,
          std::vector<std::optional<double>>>
AllSpeedups(const std::vector<FindingsRun>& runs) {
  std::vector<std::optional<double>> same, slow;
  for (const FindingsRun& run : runs) {
    for (const v1::CheckpointMetrics& m : run.quality.checkpoints()) {
      if (!m.has_reference() || !m.reference().has_speedup()) continue;
      same.push_back(m.reference().speedup().same_lr().speedup());
      slow.push_back(m.reference().speedup().slow_lr().speedup());
    }
  }
  return {same, slow};
}

std::string SpeedupSentence(const char* arm,
                            const std::vector<std::optional<double>>& values) {
  // 0: the arm never reached the target within the from-scratch budget.
  std::vector<std::optional<double>> reached;
  int never = 0, below_one = 0, at_least_20 = 0;
  for (const auto& v : values) {
    if (!v.has_value()) continue;
    if (*v > 0) {
      reached.push_back(v);
    } else {
      ++never;
    }
    if (*v < 1) ++below_one;
    if (*v >= 20) ++at_least_20;
  }
  if (values.empty()) return absl::StrCat("speed-up, ", arm, ": not measured");
  const std::optional<analysis::Spread> spread = analysis::SpreadOf(reached);
  if (!spread.has_value()) {
    return absl::StrFormat(
        "speed-up, %s: never reached the from-scratch loss on any of %d links",
        arm, values.size());
  }
  return absl::StrFormat(
      "speed-up, %s: median %.1fx over the %d of %d links that reached the "
      "from-scratch loss (range %.1fx - %.1fx); >= 20x (the paper's) at %d, "
      "slower than from scratch at %d",
      arm, spread->median, spread->runs, values.size(), spread->min,
      spread->max, at_least_20, below_one);
}

}  // namespace

std::string FormatFindingsOverRuns(const std::vector<FindingsRun>& runs) {
  if (runs.empty()) return "";
  std::string text =
      absl::StrFormat("findings over %d run%s at layer %d:", runs.size(),
                      runs.size() == 1 ? "" : "s", runs[0].layer);
  for (const FindingsRun& run : runs) {
    absl::StrAppend(&text, " ", run.job_id, " (seed ", run.seed, ")");
  }
  absl::StrAppend(&text, "\n");
  constexpr int kLabel = 42;
  absl::StrAppend(&text, absl::StrFormat("%-*s", kLabel, "measure"));
  for (const FindingsRun& run : runs) {
    absl::StrAppend(&text, absl::StrFormat(" %11s", run.job_id));
  }
  absl::StrAppend(&text, absl::StrFormat(" %9s  %s\n", "median", "range"));
  for (const Row& row : FindingRows(runs)) {
    absl::StrAppend(&text, absl::StrFormat("%-*s", kLabel, row.name));
    for (const auto& v : row.values) {
      absl::StrAppend(&text,
                      absl::StrFormat(" %11s", FormatValue(row.unit, v)));
    }
    const std::optional<analysis::Spread> spread =
        analysis::SpreadOf(row.values);
    if (spread.has_value()) {
      absl::StrAppend(&text,
                      absl::StrFormat(" %9s  %s - %s",
                                      FormatValue(row.unit, spread->median),
                                      FormatValue(row.unit, spread->min),
                                      FormatValue(row.unit, spread->max)));
    } else {
      absl::StrAppend(&text, absl::StrFormat(" %9s", "-"));
    }
    absl::StrAppend(&text, "\n");
  }
  absl::StrAppend(&text, "verdicts over the runs:\n");
  for (const VerdictLine& line : VerdictLines(runs)) {
    absl::StrAppend(&text, "  ", line.finding, ": ", line.summary, "\n");
  }
  const auto [same, slow] = AllSpeedups(runs);
  absl::StrAppend(&text, "  ", SpeedupSentence("same lr", same), "\n");
  absl::StrAppend(&text, "  ", SpeedupSentence("lr/10", slow), "\n");
  return text;
}

std::string FindingsOverRunsJson(const std::vector<FindingsRun>& runs) {
  nlohmann::ordered_json out;
  out["layer"] = runs.empty() ? 0 : runs[0].layer;
  out["runs"] = nlohmann::ordered_json::array();
  for (const FindingsRun& run : runs) {
    out["runs"].push_back({{"job_id", run.job_id}, {"seed", run.seed}});
  }
  out["measures"] = nlohmann::ordered_json::array();
  for (const Row& row : FindingRows(runs)) {
    nlohmann::ordered_json m;
    // The table's indented rows belong to the row above them: no leading
    // spaces in the name.
    std::string name = row.name;
    name.erase(0, name.find_first_not_of(' '));
    m["name"] = name;
    m["values"] = nlohmann::ordered_json::array();
    for (const auto& v : row.values) {
      if (v.has_value() && std::isfinite(*v)) {
        m["values"].push_back(*v);
      } else {
        m["values"].push_back(nullptr);
      }
    }
    if (const std::optional<analysis::Spread> spread =
            analysis::SpreadOf(row.values)) {
      m["median"] = spread->median;
      m["min"] = spread->min;
      m["max"] = spread->max;
    }
    out["measures"].push_back(std::move(m));
  }
  out["verdicts"] = nlohmann::ordered_json::array();
  for (const VerdictLine& line : VerdictLines(runs)) {
    nlohmann::ordered_json v;
    v["finding"] = line.finding;
    v["summary"] = line.summary;
    v["per_run"] = nlohmann::ordered_json::array();
    for (analysis::Verdict verdict : line.per_run) {
      v["per_run"].push_back(VerdictName(verdict));
    }
    out["verdicts"].push_back(std::move(v));
  }
  return out.dump(2);
}

int Cli::Findings() {
  if (inv_.positional.empty()) {
    return Usage("findings needs at least one job id");
  }
  if (!ExpectLayer()) return kExitUsage;
  std::vector<FindingsRun> runs;
  for (const std::string& job_id : inv_.positional) {
    FindingsRun run;
    run.job_id = job_id;
    run.layer = *inv_.layer;
    absl::StatusOr<v1::Job> job = client_->GetJob(job_id);
    if (!job.ok()) return Fail(job.status());
    run.seed = job->spec().sae().seed();
    absl::StatusOr<v1::DriftSummary> drift =
        client_->GetDriftSummary(job_id, *inv_.layer);
    if (!drift.ok()) return Fail(drift.status());
    run.drift = *std::move(drift);
    absl::StatusOr<v1::GetQualityChecksResponse> quality =
        client_->GetQualityChecks(job_id, *inv_.layer);
    if (!quality.ok()) return Fail(quality.status());
    run.quality = *std::move(quality);
    runs.push_back(std::move(run));
  }
  if (inv_.json) {
    out_ << FindingsOverRunsJson(runs) << "\n";
  } else {
    out_ << FormatFindingsOverRuns(runs);
  }
  return kExitOk;
}

}  // namespace internal
}  // namespace saetrack::client
