#include "client/output.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "analysis/findings.h"
#include "client/cli.h"

namespace saetrack::client {
namespace internal {

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  // Printing a well-formed message cannot fail.
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string ToJsonLine(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  constexpr std::string_view kPrefix = "JOB_STATE_";
  if (name.rfind(kPrefix, 0) == 0) name = name.substr(kPrefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(c));
  return name;
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

std::string HumanCount(int64_t n) {
  if (n >= 1'000'000'000) return absl::StrFormat("%.1fG", n / 1e9);
  if (n >= 1'000'000) return absl::StrFormat("%.1fM", n / 1e6);
  if (n >= 1'000) return absl::StrFormat("%.1fk", n / 1e3);
  return absl::StrCat(n);
}

std::string HumanRate(double per_second) {
  if (per_second >= 1e9) return absl::StrFormat("%.1fG", per_second / 1e9);
  if (per_second >= 1e6) return absl::StrFormat("%.1fM", per_second / 1e6);
  if (per_second >= 1e3) return absl::StrFormat("%.1fk", per_second / 1e3);
  return absl::StrFormat("%.0f", per_second);
}

std::string HumanDuration(int64_t seconds) {
  if (seconds >= 3600) {
    return absl::StrFormat("%dh%02dm", seconds / 3600, seconds % 3600 / 60);
  }
  if (seconds >= 60) {
    return absl::StrFormat("%dm%02ds", seconds / 60, seconds % 60);
  }
  return absl::StrFormat("%ds", seconds);
}

std::string WatchLine(const v1::JobUpdate& update, absl::Time now) {
  const v1::Job& job = update.job();
  std::string name = v1::JobState_Name(job.state());
  constexpr std::string_view kPrefix = "JOB_STATE_";
  if (name.rfind(kPrefix, 0) == 0) name = name.substr(kPrefix.size());
  const int64_t tokens =
      std::max(update.tokens_done(), job.progress().tokens_trained());
  std::string line = absl::StrFormat(
      "checkpoints %d/%d  tokens %s", job.progress().tasks_done(),
      job.progress().tasks_total(), HumanCount(tokens));
  if (update.tokens_per_second() > 0) {
    absl::StrAppend(&line, "  ", HumanRate(update.tokens_per_second()),
                    " tok/s");
  }
  if (update.has_loss()) {
    absl::StrAppend(&line, absl::StrFormat("  loss %.4g", update.loss()));
  }
  if (update.has_eta_seconds()) {
    absl::StrAppend(&line, "  ETA ", HumanDuration(update.eta_seconds()));
  }
  absl::StrAppend(&line, "  state ", name);
  if (job.has_follow()) {
    absl::StrAppend(&line, "  ", FollowProgress(job.follow(), now));
  }
  return line;
}

std::string ProgressLine(const v1::Job& job) {
  std::string state = StateName(job.state());
  if (IsFollowing(job) && !IsTerminal(job.state())) {
    absl::StrAppend(&state, job.follow().state() == v1::FOLLOW_STATE_CLOSED
                                ? " (following closed)"
                                : " (following)");
  }
  std::string line = absl::StrFormat(
      "%s %s: %d/%d SAEs trained, %s tokens", job.job_id(), state,
      job.progress().tasks_done(), job.progress().tasks_total(),
      HumanCount(job.progress().tokens_trained()));
  if (!job.submitter().empty()) {
    absl::StrAppend(&line, ", submitted by ", job.submitter());
  }
  if (!job.error().empty()) absl::StrAppend(&line, " (", job.error(), ")");
  return line;
}

std::string HumanTime(int64_t unix_ms) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC",
                          absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

std::string TimeAndAgo(int64_t then_ms, absl::Time now) {
  // A clock behind the coordinator's reads as "0s ago", not negative.
  const int64_t ago = std::max<int64_t>(
      0, absl::ToInt64Seconds(now - absl::FromUnixMillis(then_ms)));
  return absl::StrCat(HumanTime(then_ms), " (", HumanDuration(ago), " ago)");
}

bool IsFollowing(const v1::Job& job) {
  return job.spec().model().has_follow() || job.has_follow();
}

namespace {

// Checkpoints taken whose SAEs are all stored.
int StoredCount(const v1::FollowStatus& follow) {
  int stored = 0;
  for (const v1::FollowedCheckpoint& c : follow.checkpoints()) {
    if (c.stored_ms() > 0) ++stored;
  }
  return stored;
}

// "waiting for step > 32" / "waiting for the first checkpoint".
std::string WaitingFor(const v1::FollowStatus& follow) {
  return follow.last_step() < 0
             ? std::string("waiting for the first checkpoint")
             : absl::StrCat("waiting for step > ", follow.last_step());
}

}  // namespace

std::string FollowStateText(const v1::FollowStatus& follow, absl::Time now) {
  switch (follow.state()) {
    case v1::FOLLOW_STATE_WAITING: {
      const int64_t waited = std::max<int64_t>(
          0, absl::ToInt64Seconds(
                 now - absl::FromUnixMillis(follow.waiting_since_ms())));
      return absl::StrCat(WaitingFor(follow), " since ", HumanDuration(waited));
    }
    case v1::FOLLOW_STATE_TRAINING:
      return "training";
    case v1::FOLLOW_STATE_CLOSED:
      return follow.close_reason().empty()
                 ? std::string("closed")
                 : absl::StrCat("closed (", follow.close_reason(), ")");
    default:
      return "starting";
  }
}

std::string FollowProgress(const v1::FollowStatus& follow, absl::Time now) {
  return absl::StrFormat("following: %s, %d checkpoints taken, %d stored",
                         FollowStateText(follow, now),
                         follow.checkpoints_size(), StoredCount(follow));
}

std::string FormatFollowStatus(const v1::Job& job, absl::Time now) {
  if (!IsFollowing(job)) return "";
  const v1::FollowSpec& spec = job.spec().model().follow();
  const v1::FollowStatus& follow = job.follow();
  std::string text;
  if (spec.dir().empty()) {
    text = "  follow: checkpoints given by add-checkpoint only";
  } else {
    // The coordinator's defaults for unset fields (FollowSpec).
    text = absl::StrFormat(
        "  follow: %s (%s, scanned every %gs)", spec.dir(),
        spec.pattern().empty() ? "step-{step}" : spec.pattern(),
        spec.poll_interval_s() > 0 ? spec.poll_interval_s() : 10.0);
  }
  if (spec.has_until_step()) {
    absl::StrAppend(&text, ", until step ", spec.until_step());
  }
  absl::StrAppend(&text, "\n");

  std::string state;
  switch (follow.state()) {
    case v1::FOLLOW_STATE_WAITING:
      state = absl::StrCat(WaitingFor(follow), " since ",
                           TimeAndAgo(follow.waiting_since_ms(), now));
      break;
    case v1::FOLLOW_STATE_CLOSED:
      state = FollowStateText(follow, now);
      if (follow.closed_ms() > 0) {
        absl::StrAppend(&state, " at ", TimeAndAgo(follow.closed_ms(), now));
      }
      break;
    default:
      state = FollowStateText(follow, now);
  }
  absl::StrAppend(&text, "    state: ", state, "\n");

  if (follow.last_step() >= 0) {
    absl::StrAppend(&text, "    last step: ", follow.last_step(), ", taken ",
                    TimeAndAgo(follow.last_taken_ms(), now), "\n");
  } else {
    absl::StrAppend(&text, "    last step: none taken yet\n");
  }

  absl::StrAppend(
      &text, absl::StrFormat("    checkpoints: %d taken, %d stored",
                             follow.checkpoints_size(), StoredCount(follow)));
  // The one stored most recently: its lag is what an alert on lag sees.
  const v1::FollowedCheckpoint* last_stored = nullptr;
  for (const v1::FollowedCheckpoint& c : follow.checkpoints()) {
    if (c.stored_ms() > 0 &&
        (last_stored == nullptr || c.stored_ms() >= last_stored->stored_ms())) {
      last_stored = &c;
    }
  }
  if (last_stored != nullptr) {
    const int64_t lag_s = std::max<int64_t>(
        0, (last_stored->stored_ms() - last_stored->last_write_ms()) / 1000);
    absl::StrAppend(&text, "; lag of step ", last_stored->step(), ": ",
                    HumanDuration(lag_s),
                    " from its last write to its SAEs stored");
  }
  absl::StrAppend(&text, "\n");

  if (!follow.refused().empty()) {
    absl::StrAppend(&text, "    refused: ", follow.refused_size(), "\n");
    for (const v1::RefusedCheckpoint& r : follow.refused()) {
      absl::StrAppend(&text, "      step ", r.step(), " ", r.path(), ": ",
                      OneLine(r.reason()), "\n");
    }
  }

  std::string analysis;
  if (follow.analysis_round() == 0) {
    analysis = "no round yet";
  } else {
    analysis =
        absl::StrFormat("%s round %d over %d checkpoints, %s",
                        follow.final_round() ? "final" : "provisional",
                        follow.analysis_round(), follow.analysed_checkpoints(),
                        follow.analysis_running() ? "running" : "done");
  }
  if (follow.refresh_pending()) {
    absl::StrAppend(&analysis, "; a refresh starts after it");
  }
  if (spec.analyse_every() > 0 && !follow.final_round()) {
    absl::StrAppend(
        &analysis,
        absl::StrFormat("; every %d trained checkpoints (%d since the last)",
                        spec.analyse_every(), follow.trained_since_round()));
  }
  absl::StrAppend(&text, "    analysis: ", analysis, "\n");
  return text;
}

std::string Fixed3(bool present, double value) {
  return present ? absl::StrFormat("%.3f", value) : "-";
}

std::string KindName(v1::FeatureKind kind) {
  switch (kind) {
    case v1::FEATURE_KIND_TOKEN_LEVEL:
      return "token-level";
    case v1::FEATURE_KIND_CONCEPT_LEVEL:
      return "concept-level";
    case v1::FEATURE_KIND_DEAD:
      return "dead";
    default:
      return "-";
  }
}

std::string OneLine(const std::string& text) {
  return absl::StrReplaceAll(text,
                             {{"\n", "\\n"}, {"\r", "\\r"}, {"\t", "\\t"}});
}

std::string TokenLabel(int32_t token, const std::string& text) {
  if (text.empty()) return absl::StrCat(token);
  return absl::StrCat(token, " \"", OneLine(text), "\"");
}

std::string ContextLabel(const v1::FeatureContext& context) {
  if (!context.text().empty()) return OneLine(context.text());
  if (context.window().empty())
    return absl::StrCat("[[", context.token(), "]]");
  std::vector<std::string> tokens;
  for (int i = 0; i < context.window_size(); ++i) {
    tokens.push_back(i == context.focus()
                         ? absl::StrCat("[[", context.window(i), "]]")
                         : absl::StrCat(context.window(i)));
  }
  return absl::StrJoin(tokens, " ");
}

std::optional<std::pair<double, double>> FiniteRange(
    const std::vector<std::optional<double>>& values) {
  std::optional<std::pair<double, double>> range;
  for (const std::optional<double>& v : values) {
    if (!v.has_value() || !std::isfinite(*v)) continue;
    range = range.has_value() ? std::make_pair(std::min(range->first, *v),
                                               std::max(range->second, *v))
                              : std::make_pair(*v, *v);
  }
  return range;
}

std::string SparklineRow(const std::string& label,
                         const std::vector<std::optional<double>>& values) {
  const std::optional<std::pair<double, double>> range = FiniteRange(values);
  if (!range.has_value()) return "";
  return absl::StrFormat("%-9s  %s  %.3f .. %.3f\n", label, Sparkline(values),
                         range->first, range->second);
}

std::array<std::optional<double>, 3> BicOf(const v1::PhaseFit& p) {
  std::array<std::optional<double>, 3> bic;
  if (p.has_bic1()) bic[0] = p.bic1();
  if (p.has_bic2()) bic[1] = p.bic2();
  if (p.has_bic3()) bic[2] = p.bic3();
  return bic;
}

// The chosen segments with their evidence, breakpoints and slopes, each
// slope followed by `per_unit`. A fit stored before models were compared
// (segments 0) reads as it always did.
std::string PhaseFitText(const v1::PhaseFit& p, const std::string& per_unit) {
  std::string evidence = analysis::DescribeBicEvidence(BicOf(p));
  if (!evidence.empty()) evidence = absl::StrCat(" (", evidence, ")");
  switch (p.segments()) {
    case 1:
      return absl::StrFormat("1 segment%s, slope %.4f%s", evidence, p.slope1(),
                             per_unit);
    case 2:
      return absl::StrFormat(
          "2 segments%s, breakpoint at step %.0f, slopes %.4f / %.4f%s",
          evidence, p.breakpoint1_step(), p.slope1(), p.slope2(), per_unit);
    default:
      return absl::StrFormat(
          "%sbreakpoints at steps %.0f and %.0f, slopes %.4f / %.4f / %.4f%s",
          p.segments() == 3 ? absl::StrCat("3 segments", evidence, ", ")
                            : std::string(),
          p.breakpoint1_step(), p.breakpoint2_step(), p.slope1(), p.slope2(),
          p.slope3(), per_unit);
  }
}

std::string FormatFeatureSummary(const v1::FeatureSummary& summary) {
  std::string text = absl::StrFormat(
      "kind %s, top token %s (%.1f%% of the top contexts), final frequency "
      "%.5f\n",
      KindName(summary.kind()),
      TokenLabel(summary.top_token(), summary.top_token_text()),
      100 * summary.top_token_share(), summary.final_frequency());
  std::string formed =
      summary.has_formation_step()
          ? absl::StrCat("formed at step ", summary.formation_step())
          : std::string("not formed");
  if (summary.has_formation_chain_index()) {
    absl::StrAppend(&formed, " (chain ", summary.formation_chain_index(), ")");
  }
  if (summary.has_formation_step_feature()) {
    absl::StrAppend(&formed, ", in feature space at step ",
                    summary.formation_step_feature());
  }
  absl::StrAppend(
      &text, absl::StrFormat("%s; total drift %.3f (cos first to final %.3f)\n",
                             formed, 1 - summary.cos_first_to_final(),
                             summary.cos_first_to_final()));
  if (summary.has_phases()) {
    const v1::PhaseFit& p = summary.phases();
    absl::StrAppend(&text, absl::StrFormat("phases: %s, r² %.3f\n",
                                           PhaseFitText(p, ""), p.r_squared()));
  }
  if (summary.pca_explained1() > 0 || summary.pca_explained2() > 0) {
    absl::StrAppend(&text,
                    absl::StrFormat("trajectory PCA: %.1f%% and %.1f%% of the "
                                    "variance\n",
                                    100 * summary.pca_explained1(),
                                    100 * summary.pca_explained2()));
  }
  return text;
}

namespace {

// "  promoted:   262 " the" 1.234, ..." for one side of a point's effects.
std::string LogitEffectsLine(
    const char* label,
    const google::protobuf::RepeatedPtrField<v1::LogitEffect>& effects) {
  std::vector<std::string> shown;
  for (int i = 0; i < std::min(effects.size(), kLogitEffectsShown); ++i) {
    shown.push_back(absl::StrFormat(
        "%s %.3f", TokenLabel(effects[i].token_id(), effects[i].token()),
        effects[i].value()));
  }
  if (effects.size() > kLogitEffectsShown) shown.push_back("...");
  return absl::StrCat("  ", label, absl::StrJoin(shown, ", "), "\n");
}

}  // namespace

std::string FormatFeatureHistory(const v1::FeatureHistory& history,
                                 bool contexts, bool decoder, bool logits) {
  std::string text =
      absl::StrFormat("feature %d, layer %d, job %s\n", history.feature_id(),
                      history.layer(), history.job_id());
  if (history.provisional()) {
    // The history carries no through_step: the last analysed checkpoint
    // is the one the analysis ran against.
    std::optional<int64_t> through;
    for (const v1::FeaturePoint& p : history.points()) {
      if (p.analysed())
        through = std::max(through.value_or(p.step()), p.step());
    }
    absl::StrAppend(&text, "provisional: ",
                    through.has_value()
                        ? absl::StrCat("over checkpoints up to step ", *through)
                        : std::string("over the run so far"),
                    "; the final analysis runs after the job is closed\n");
  }
  if (history.has_summary()) {
    absl::StrAppend(&text, FormatFeatureSummary(history.summary()));
  }
  absl::StrAppend(
      &text,
      absl::StrFormat("%5s %8s %10s %10s %10s %9s %9s %8s %8s %8s\n", "chain",
                      "step", "frequency", "mean act", "max act", "cos prev",
                      "cos final", "P act", "P feat", "|w_enc|"));
  std::vector<std::optional<double>> cos_final, progress, token_controlled;
  bool any_token_controlled = false;
  bool all_analysed = true;
  for (const v1::FeaturePoint& p : history.points()) {
    all_analysed = all_analysed && p.analysed();
    absl::StrAppend(
        &text, absl::StrFormat(
                   "%5d %8d %10.5f %10.4g %10.4g %9s %9s %8s %8s %8.3f\n",
                   p.chain_index(), p.step(), p.frequency(),
                   p.mean_activation(), p.max_activation(),
                   Fixed3(p.has_decoder_cos_prev(), p.decoder_cos_prev()),
                   Fixed3(p.has_decoder_cos_final(), p.decoder_cos_final()),
                   Fixed3(p.has_progress_activation(), p.progress_activation()),
                   Fixed3(p.has_progress_feature(), p.progress_feature()),
                   p.encoder_norm()));
    cos_final.push_back(p.has_decoder_cos_final()
                            ? std::optional<double>(p.decoder_cos_final())
                            : std::nullopt);
    progress.push_back(p.has_progress_activation()
                           ? std::optional<double>(p.progress_activation())
                           : std::nullopt);
    token_controlled.push_back(
        p.has_progress_token_controlled()
            ? std::optional<double>(p.progress_token_controlled())
            : std::nullopt);
    any_token_controlled =
        any_token_controlled || p.has_progress_token_controlled();
  }
  if (!all_analysed) {
    absl::StrAppend(&text,
                    "(frequency and activations of checkpoints not analysed "
                    "yet are from the held-out evaluation set)\n");
  }
  absl::StrAppend(&text, SparklineRow("cos final", cos_final),
                  SparklineRow("P act", progress));
  // P act with the same-token baseline instead of random positions.
  if (any_token_controlled) {
    absl::StrAppend(&text, SparklineRow("P tok", token_controlled));
  }

  const int n = history.points_size();
  // Logit effects: the first and the final checkpoint, or all with logits.
  std::vector<int> with_effects;
  for (int i = 0; i < n; ++i) {
    if (history.points(i).has_logit_effects() &&
        (logits || i == 0 || i == n - 1)) {
      with_effects.push_back(i);
    }
  }
  for (int i : with_effects) {
    const v1::FeaturePoint& p = history.points(i);
    absl::StrAppend(
        &text, "\n",
        absl::StrFormat("logit effects at step %d%s:\n", p.step(),
                        i == n - 1 ? " (final checkpoint)"
                        : i == 0   ? " (first checkpoint)"
                                   : ""),
        LogitEffectsLine("promoted:   ", p.logit_effects().promoted()),
        LogitEffectsLine("suppressed: ", p.logit_effects().suppressed()));
  }
  if (contexts && n > 0) {
    // The first, the middle and the final checkpoint, each once.
    std::vector<std::pair<int, const char*>> shown = {{0, "first"}};
    if ((n - 1) / 2 > 0) shown.push_back({(n - 1) / 2, "middle"});
    if (n - 1 > (n - 1) / 2) shown.push_back({n - 1, "final"});
    for (const auto& [index, which] : shown) {
      const v1::FeaturePoint& p = history.points(index);
      absl::StrAppend(&text, "\n",
                      absl::StrFormat("top contexts at step %d (%s checkpoint)",
                                      p.step(), which));
      if (p.contexts_size() > kContextsShown) {
        absl::StrAppend(&text, absl::StrFormat(", %d of %d", kContextsShown,
                                               p.contexts_size()));
      }
      absl::StrAppend(&text, ":\n");
      if (p.contexts().empty()) absl::StrAppend(&text, "  -\n");
      for (int i = 0; i < std::min(p.contexts_size(), kContextsShown); ++i) {
        const v1::FeatureContext& c = p.contexts(i);
        absl::StrAppend(
            &text, absl::StrFormat("  %8.3f  pos %-8d  %s\n", c.activation(),
                                   c.position(), ContextLabel(c)));
      }
    }
  }
  if (decoder && n > 0) {
    absl::StrAppend(&text, "\ndecoder rows:\n");
    for (const v1::FeaturePoint& p : history.points()) {
      double norm = 0;
      for (float v : p.decoder()) norm += static_cast<double>(v) * v;
      std::vector<std::string> values;
      for (int i = 0; i < std::min(p.decoder_size(), kDecoderValuesShown);
           ++i) {
        values.push_back(absl::StrFormat("%.4f", p.decoder(i)));
      }
      if (p.decoder_size() > kDecoderValuesShown) values.push_back("...");
      absl::StrAppend(
          &text, absl::StrFormat("  step %8d  |d| %.3f  [%s]\n", p.step(),
                                 std::sqrt(norm), absl::StrJoin(values, ", ")));
    }
  }
  return text;
}

std::string FormatFeatureList(const v1::ListFeaturesResponse& list) {
  std::string text =
      absl::StrFormat("%6s  %-13s %6s %9s %10s %6s  %s\n", "id", "kind",
                      "share", "formed", "frequency", "drift", "top token");
  for (const v1::FeatureSummary& f : list.features()) {
    absl::StrAppend(
        &text, absl::StrFormat(
                   "%6d  %-13s %5.1f%% %9s %10.5f %6.3f  %s\n", f.feature_id(),
                   KindName(f.kind()), 100 * f.top_token_share(),
                   f.has_formation_step() ? absl::StrCat(f.formation_step())
                                          : std::string("-"),
                   f.final_frequency(), 1 - f.cos_first_to_final(),
                   f.kind() == v1::FEATURE_KIND_DEAD
                       ? std::string("-")
                       : TokenLabel(f.top_token(), f.top_token_text())));
  }
  if (!list.next_page_token().empty()) {
    absl::StrAppend(
        &text, absl::StrFormat("more: --page-token %s (%d features match)\n",
                               list.next_page_token(), list.total()));
  }
  return text;
}

analysis::FindingsInput FindingsInputOf(const v1::DriftSummary& drift) {
  analysis::FindingsInput input;
  for (const v1::CheckpointDrift& c : drift.checkpoints()) {
    input.drift.steps.push_back(c.step());
    input.drift.median_cos_to_final.push_back(c.cos_to_final().q50());
  }
  if (drift.has_phases()) {
    const v1::PhaseFit& p = drift.phases();
    analysis::PhaseShape& shape = input.phases.emplace();
    shape.slope1 = p.slope1();
    shape.slope2 = p.slope2();
    shape.slope3 = p.slope3();
    shape.breakpoint1_step = p.breakpoint1_step();
    shape.breakpoint2_step = p.breakpoint2_step();
    shape.r_squared = p.r_squared();
    shape.segments = p.segments();
    shape.bic = BicOf(p);
  }
  for (const v1::KindSummary& k : drift.kinds()) {
    analysis::KindFormation formation;
    formation.formed = k.formed();
    formation.mean_formation_step = k.mean_formation_step();
    formation.median_formation_step = k.median_formation_step();
    if (k.kind() == v1::FEATURE_KIND_TOKEN_LEVEL) {
      input.token_level = formation;
    }
    if (k.kind() == v1::FEATURE_KIND_CONCEPT_LEVEL) {
      input.concept_level = formation;
    }
  }
  return input;
}

std::string FormatDriftSummary(const v1::DriftSummary& drift) {
  std::string text = absl::StrFormat(
      "drift of job %s layer %d (tau %.2f, token-level at %.0f%%, top %d "
      "contexts, %s analysis tokens)\n",
      drift.job_id(), drift.layer(), drift.formation_tau(),
      100 * drift.token_level_threshold(), drift.top_k(),
      HumanCount(drift.analysis_tokens()));
  if (drift.provisional()) {
    absl::StrAppend(&text, "provisional: over checkpoints up to step ",
                    drift.through_step(),
                    "; the final analysis runs after the job is closed\n");
  }
  absl::StrAppend(&text,
                  absl::StrFormat("%5s %8s %9s %9s %9s %9s %9s %7s\n", "chain",
                                  "step", "final q10", "final q50", "final q90",
                                  "prev q50", "P act q50", "formed"));
  std::vector<std::optional<double>> median_cos_final;
  for (const v1::CheckpointDrift& c : drift.checkpoints()) {
    absl::StrAppend(
        &text, absl::StrFormat(
                   "%5d %8d %9.3f %9.3f %9.3f %9s %9.3f %7d\n", c.chain_index(),
                   c.step(), c.cos_to_final().q10(), c.cos_to_final().q50(),
                   c.cos_to_final().q90(),
                   Fixed3(c.has_cos_to_previous(), c.cos_to_previous().q50()),
                   c.progress_activation().q50(), c.formed()));
    median_cos_final.push_back(c.cos_to_final().q50());
  }
  absl::StrAppend(&text, SparklineRow("final q50", median_cos_final));
  if (drift.has_phases()) {
    const v1::PhaseFit& p = drift.phases();
    absl::StrAppend(
        &text,
        absl::StrFormat("phases of the median cos to final: %s, r² %.3f\n",
                        PhaseFitText(p, " per unit of log(step + 1)"),
                        p.r_squared()));
  } else {
    absl::StrAppend(&text,
                    "phases: not fitted (fewer than four checkpoints)\n");
  }
  absl::StrAppend(
      &text, absl::StrFormat("%-13s %7s %7s %15s %17s\n", "kind", "count",
                             "formed", "mean formation", "median formation"));
  for (const v1::KindSummary& k : drift.kinds()) {
    const bool formed = k.formed() > 0;
    absl::StrAppend(
        &text,
        absl::StrFormat(
            "%-13s %7d %7d %15s %17s\n", KindName(k.kind()), k.count(),
            k.formed(),
            formed ? absl::StrFormat("%.1f", k.mean_formation_step()) : "-",
            formed ? absl::StrFormat("%.0f", k.median_formation_step()) : "-"));
  }
  // The progress measure with the token-controlled baseline beside the
  // paper's, where the workers measured it.
  const bool token_controlled = std::any_of(
      drift.kinds().begin(), drift.kinds().end(), [](const v1::KindSummary& k) {
        return k.has_final_progress_token_controlled_q50();
      });
  if (token_controlled && drift.checkpoints_size() > 0) {
    absl::StrAppend(
        &text,
        absl::StrFormat("progress at step %d (median P act): random-position "
                        "baseline / same-token baseline\n",
                        drift.checkpoints().rbegin()->step()));
    for (const v1::KindSummary& k : drift.kinds()) {
      if (!k.has_final_progress_q50() &&
          !k.has_final_progress_token_controlled_q50()) {
        continue;
      }
      absl::StrAppend(
          &text, absl::StrFormat(
                     "%-13s %7s / %s\n", KindName(k.kind()),
                     Fixed3(k.has_final_progress_q50(), k.final_progress_q50()),
                     Fixed3(k.has_final_progress_token_controlled_q50(),
                            k.final_progress_token_controlled_q50())));
    }
  }
  absl::StrAppend(&text, "against the paper:\n");
  for (const analysis::Finding& finding :
       analysis::PaperFindings(FindingsInputOf(drift))) {
    absl::StrAppend(&text, "  ", finding.sentence, "\n");
  }
  return text;
}

}  // namespace internal

std::string Sparkline(const std::vector<std::optional<double>>& values) {
  static constexpr const char* kBars[] = {"▁", "▂", "▃", "▄",
                                          "▅", "▆", "▇", "█"};
  constexpr int kTop = 7;
  const std::optional<std::pair<double, double>> range =
      internal::FiniteRange(values);
  std::string line;
  for (const std::optional<double>& v : values) {
    if (!v.has_value() || !std::isfinite(*v)) {
      line += ' ';
    } else if (range->first == range->second) {
      line += kBars[kTop / 2];
    } else {
      const double scaled =
          (*v - range->first) / (range->second - range->first) * kTop;
      line += kBars[std::clamp(static_cast<int>(std::lround(scaled)), 0, kTop)];
    }
  }
  return line;
}

std::string FormatCheckpointMetrics(
    const v1::GetCheckpointMetricsResponse& metrics) {
  std::string table = absl::StrFormat(
      "%5s %8s %8s %8s %8s %10s %7s %6s %9s %8s %8s %8s %6s %7s  %s\n", "chain",
      "step", "tokens", "FVU", "init FVU", "MSE", "L0", "dead", "cos prev",
      "cos init", "loss rec", "KL", "epochs", "time s", "note");
  for (const auto& m : metrics.checkpoints()) {
    std::vector<std::string> notes;
    if (m.stopped_early()) notes.push_back("stopped early");
    if (m.resumed_from_tokens() > 0) {
      notes.push_back(absl::StrCat(
          "resumed at ", internal::HumanCount(m.resumed_from_tokens())));
    }
    // The held-out loss still fell over the last window: more tokens would
    // have helped.
    if (!m.converged()) notes.push_back("not converged");
    std::string row = absl::StrFormat(
        "%5d %8d %8s %8.4f %8.4f %10.4g %7.1f %5.1f%% %9s %8.3f %8s %8s "
        "%6.1f %7.1f",
        m.chain_index(), m.step(), internal::HumanCount(m.tokens_trained()),
        m.fvu(), m.init_fvu(), m.mse(), m.l0(), 100 * m.dead_fraction(),
        m.has_median_decoder_cos_prev()
            ? absl::StrFormat("%.3f", m.median_decoder_cos_prev())
            : "-",
        m.median_decoder_cos_init(),
        m.has_lm() ? absl::StrFormat("%.1f%%", 100 * m.lm().loss_recovered())
                   : "-",
        m.has_lm() ? absl::StrFormat("%.4f", m.lm().kl_divergence()) : "-",
        m.epochs(), m.wall_time_s());
    if (!notes.empty()) absl::StrAppend(&row, "  ", absl::StrJoin(notes, ", "));
    absl::StrAppend(&table, row, "\n");
  }
  return table;
}

namespace internal {

std::string FormatQualityChecks(const v1::GetQualityChecksResponse& checks) {
  if (checks.checkpoints().empty()) {
    return "no trust checks stored yet (they run at the reference "
           "checkpoints, schedule.reference_checkpoints)\n";
  }
  std::string out = absl::StrFormat(
      "%5s %8s %-11s %9s %8s %7s %6s %8s %6s  %s\n", "chain", "step", "SAE",
      "loss", "FVU", "L0", "dead", "cos init", "conv", "matched cos (random)");
  for (const v1::CheckpointMetrics& m : checks.checkpoints()) {
    const v1::ReferenceCheck& r = m.reference();
    absl::StrAppendFormat(
        &out, "%5d %8d %-11s %9.4g %8.4f %7.1f %5.1f%% %8.3f %6s\n",
        m.chain_index(), m.step(), "chain", m.held_out_loss(), m.fvu(), m.l0(),
        100 * m.dead_fraction(), m.median_decoder_cos_init(),
        m.converged() ? "yes" : "no");
    absl::StrAppendFormat(
        &out,
        "%5s %8s %-11s %9.4g %8.4f %7.1f %5.1f%% %8.3f %6s  %.3f (%.3f), "
        "%.0f%% >= 0.9\n",
        "", "", absl::StrCat("seed ", r.seed()), r.held_out_loss(), r.fvu(),
        r.l0(), 100 * r.dead_fraction(), r.median_decoder_cos_init(),
        r.converged() ? "yes" : "no", r.match_median_cosine(),
        r.random_median_cosine(), 100 * r.match_fraction_above_0_9());
  }
  bool speedup_header = false;
  for (const v1::CheckpointMetrics& m : checks.checkpoints()) {
    if (!m.reference().has_speedup()) continue;
    const v1::RecurrenceSpeedup& s = m.reference().speedup();
    if (!speedup_header) {
      absl::StrAppendFormat(
          &out,
          "\nrecurrence speed-up: tokens to within %.0f%% of the independent "
          "SAE's final loss\n%8s %10s %7s  %-24s %-24s\n",
          100 * s.tolerance(), "step", "scratch", "L0", "previous SAE, same lr",
          "previous SAE, lr/10");
      speedup_header = true;
    }
    const auto arm = [](const v1::SpeedupArm& a) {
      if (!a.has_tokens()) return std::string("never");
      return absl::StrFormat("%d  %.1fx  L0 %.1f", a.tokens(), a.speedup(),
                             a.l0());
    };
    absl::StrAppendFormat(&out, "%8d %10d %7.1f  %-24s %-24s\n", m.step(),
                          s.scratch_tokens(), s.scratch_l0(), arm(s.same_lr()),
                          arm(s.slow_lr()));
  }
  out += "\n";
  for (const v1::QualityVerdict& v : checks.verdicts()) {
    absl::StrAppendFormat(&out, "%s  %s at step %d: %s\n",
                          v.passed() ? "ok  " : "FAIL", v.check(), v.step(),
                          v.verdict());
  }
  return out;
}

}  // namespace internal
}  // namespace saetrack::client
