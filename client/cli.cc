#include "client/cli.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "analysis/findings.h"
#include "client/client.h"
#include "client/job_file.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "format/saelens.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/saelens_config.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/admin.grpc.pb.h"

namespace saetrack::client {
namespace {

// How often `submit --wait` and `watch` poll a coordinator without WatchJob,
// and how long they wait before reconnecting to one that went away.
constexpr absl::Duration kWaitPollInterval = absl::Milliseconds(300);

// The largest page `features --limit` asks for (ListFeaturesRequest.page_size
// is at most 10000).
constexpr int kMaxFeaturesPage = 10000;
// Contexts `feature --contexts` prints per checkpoint (--json has them all).
constexpr int kContextsShown = 5;
// Decoder values `feature --decoder` prints per checkpoint.
constexpr int kDecoderValuesShown = 8;

struct Invocation {
  std::string command;
  std::vector<std::string> positional;
  std::string coordinator = "127.0.0.1:7070";
  bool json = false;
  bool wait = false;
  bool help = false;
  std::optional<int> layer;
  std::optional<int> feature_id;
  std::optional<int64_t> step;
  std::string out_dir;
  std::string to_dir;
  std::string request_id;
  double timeout_s = 0;  // 0: wait forever
  // feature
  bool contexts = false;
  bool decoder = false;
  // features
  std::optional<v1::FeatureKind> kind;
  std::optional<int64_t> formed_from;
  std::optional<int64_t> formed_to;
  std::optional<double> min_freq;
  std::optional<double> max_freq;
  std::optional<v1::ListFeaturesRequest::Order> order;
  std::optional<int> limit;
  std::string page_token;
};

std::string UsageText() {
  return R"(usage: saetrack COMMAND [ARGS] [FLAGS]

Commands:
  submit JOB.json [--wait] [--request_id ID] [--timeout_s S]
      Submit a tracking job (JSON, fields of saetrack.v1.JobSpec; relative
      paths are resolved against the job file's directory). Prints the job id.
      --wait follows the job until it ends (as watch does), with a progress
      line on stderr, and exits 0 only if it succeeded; --timeout_s bounds
      the wait (0, the default: no limit).
  status JOB_ID            State and progress of one job.
  list                     All jobs, oldest first.
  watch JOB_ID [--timeout_s S]
                           Follow a job until it ends: a progress line on
                           stderr (rewritten in place on a terminal), e.g.
                           "checkpoints 3/11  tokens 1.2M  2.3k tok/s  loss
                           0.0123  ETA 1m20s  state RUNNING", then the final
                           state on stdout. Exits 0 if the job succeeded, 1 if
                           it failed or was cancelled. With --json, one
                           saetrack.v1.JobUpdate per line on stdout instead.
  cancel JOB_ID            Cancel a queued or running job (running tasks stop
                           at their next heartbeat); prints the resulting
                           state. Cancelling a cancelled job succeeds again;
                           a job that already ended is refused
                           (FAILED_PRECONDITION).
  metrics JOB_ID --layer L Per-checkpoint SAE metrics of one hooked layer.
                           "loss rec" and "KL" compare the LM with the SAE
                           spliced in to the clean model ("-": not measured);
                           "note" marks SAEs the adaptive budget stopped early
                           and SAEs resumed from saved training state.
  feature JOB_ID --layer L --feature N [--contexts] [--decoder]
                           The history of one feature across checkpoints
                           (--id N is the same as --feature N). Once the
                           analysis ran: a summary (kind, top token and its
                           share of the top contexts, formation step, total
                           drift 1 - cos(first, final), drift phases with
                           their breakpoints as steps), then one row per
                           checkpoint: frequency, mean and max activation,
                           decoder cosine to the previous and to the final
                           checkpoint, progress measure in activation (P act)
                           and feature space (P feat); "-": not computed.
                           Sparklines (▁▂▃▄▅▆▇█, scaled between the printed
                           minimum and maximum) of cos final and P act.
                           --contexts adds the top activating contexts (the
                           focus token between [[ and ]]) at the first, the
                           middle and the final checkpoint; --decoder the
                           decoder rows.
  features JOB_ID --layer L [--kind K] [--formed-from S] [--formed-to S]
           [--min-freq X] [--max-freq X] [--order O] [--limit N]
           [--page-token T]
                           One page of the layer's features from the analysis
                           summary: id, kind, top-token share, formation step,
                           final frequency, total drift, top token. --kind:
                           token, concept or dead; --formed-from/--formed-to:
                           formation step range (inclusive; excludes features
                           that never formed); --min-freq/--max-freq: final
                           frequency range in [0, 1]; --order: id (default),
                           formation (earliest first), drift (most drifted
                           first) or frequency (most frequent first);
                           --limit: page size (1 to 10000, default 100). When
                           more features match, the last line names the
                           --page-token of the next page.
  drift JOB_ID --layer L   Decoder drift across features: per checkpoint the
                           10/50/90% quantiles of cos to the final decoder,
                           the median cos to the previous one, the median
                           P act and the number of features formed; then the
                           three-phase fit of the median cos to final against
                           log(step + 1) (breakpoints as steps, slopes, r²)
                           and per kind of feature the count, the number
                           formed and the mean and median formation step;
                           last, whether each of the paper's findings (drift
                           converging to the final direction, the fast-slow-
                           fast phases, concept-level features forming after
                           token-level ones) reproduces, with the numbers.
  export JOB_ID --layer L [--step S] --out DIR
                           Write the SAE of checkpoint step S in SAELens's
                           layout: DIR/cfg.json and DIR/sae_weights.safetensors
                           (sae_lens: SAE.load_from_disk(DIR)), as the
                           coordinator streams them (QueryService.ExportSae;
                           every file's size and CRC-32C checked; from a
                           coordinator without ExportSae, the downloaded
                           weights and a cfg.json from the job). Without
                           --step, the final SAE of the chain: the last one
                           trained, by chain index. DIR is created if needed;
                           files already there are replaced.
  admin backup --to DIR    Copy the coordinator's database (a consistent
                           RocksDB checkpoint) into DIR, an absolute path on
                           the coordinator's machine that must not exist yet.
                           A coordinator started with --data_dir P serves the
                           copy when DIR is P/db.

Flags (every command):
  --coordinator HOST:PORT  Coordinator address (default 127.0.0.1:7070).
  --json                   Print results as JSON (saetrack.v1 messages:
                           FeatureHistory, ListFeaturesResponse, DriftSummary,
                           ...; for export, an object naming what was
                           written).
  --help                   This text.

Exit codes: 0 success; 1 failure (the reason is printed on one line:
"saetrack: ..."; for --wait and watch also a job that failed or was
cancelled);
2 bad command line.
)";
}

absl::StatusOr<v1::FeatureKind> ParseKind(const std::string& value) {
  if (value == "token") return v1::FEATURE_KIND_TOKEN_LEVEL;
  if (value == "concept") return v1::FEATURE_KIND_CONCEPT_LEVEL;
  if (value == "dead") return v1::FEATURE_KIND_DEAD;
  return absl::InvalidArgumentError(absl::StrCat(
      "flag --kind: '", value, "' is not one of token, concept, dead"));
}

absl::StatusOr<v1::ListFeaturesRequest::Order> ParseOrder(
    const std::string& value) {
  if (value == "id") return v1::ListFeaturesRequest::FEATURE_ID;
  if (value == "formation") return v1::ListFeaturesRequest::FORMATION_STEP;
  if (value == "drift") return v1::ListFeaturesRequest::FINAL_DRIFT;
  if (value == "frequency") return v1::ListFeaturesRequest::FREQUENCY;
  return absl::InvalidArgumentError(
      absl::StrCat("flag --order: '", value,
                   "' is not one of id, formation, drift, frequency"));
}

absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& args) {
  const std::map<std::string, bool Invocation::*> kSwitches = {
      {"json", &Invocation::json},       {"wait", &Invocation::wait},
      {"help", &Invocation::help},       {"contexts", &Invocation::contexts},
      {"decoder", &Invocation::decoder},
  };
  const std::map<std::string, std::string Invocation::*> kStrings = {
      {"coordinator", &Invocation::coordinator},
      {"request_id", &Invocation::request_id},
      {"out", &Invocation::out_dir},
      {"to", &Invocation::to_dir},
      {"page-token", &Invocation::page_token},
  };
  Invocation inv;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      if (inv.command.empty()) {
        inv.command = arg;
      } else {
        inv.positional.push_back(arg);
      }
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto take_value = [&]() -> absl::StatusOr<std::string> {
      if (value) return *value;
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
      return args[++i];
    };
    auto take_int = [&](auto* out) -> absl::Status {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtoi(*v, out)) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, ": '", *v, "' is not an integer"));
      }
      return absl::OkStatus();
    };
    // An integer of at least `min`.
    auto take_int_at_least = [&](auto* out, int64_t min,
                                 const char* what) -> absl::Status {
      if (absl::Status s = take_int(out); !s.ok()) return s;
      if (*out < min) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, ": ",
                                                       *out, " is not ", what,
                                                       " (", min, " or more)"));
      }
      return absl::OkStatus();
    };
    if (auto it = kSwitches.find(name); it != kSwitches.end()) {
      if (value) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " takes no value"));
      }
      inv.*(it->second) = true;
    } else if (auto it = kStrings.find(name); it != kStrings.end()) {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      inv.*(it->second) = *v;
    } else if (name == "layer") {
      int v;
      if (absl::Status s = take_int(&v); !s.ok()) return s;
      inv.layer = v;
    } else if (name == "id" || name == "feature") {
      int v;
      if (absl::Status s = take_int_at_least(&v, 0, "a feature id"); !s.ok()) {
        return s;
      }
      inv.feature_id = v;
    } else if (name == "step") {
      int64_t v;
      if (absl::Status s = take_int(&v); !s.ok()) return s;
      inv.step = v;
    } else if (name == "formed-from" || name == "formed-to") {
      int64_t v;
      if (absl::Status s = take_int_at_least(&v, 0, "a step"); !s.ok()) {
        return s;
      }
      (name == "formed-from" ? inv.formed_from : inv.formed_to) = v;
    } else if (name == "min-freq" || name == "max-freq") {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      double frequency;
      if (!absl::SimpleAtod(*v, &frequency) || !(frequency >= 0) ||
          !(frequency <= 1)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "flag --", name, ": '", *v, "' is not a frequency in [0, 1]"));
      }
      (name == "min-freq" ? inv.min_freq : inv.max_freq) = frequency;
    } else if (name == "limit") {
      int v;
      if (absl::Status s = take_int_at_least(&v, 1, "a page size"); !s.ok()) {
        return s;
      }
      if (v > kMaxFeaturesPage) {
        return absl::InvalidArgumentError(absl::StrCat(
            "flag --limit: ", v, " is more than ", kMaxFeaturesPage));
      }
      inv.limit = v;
    } else if (name == "kind") {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      absl::StatusOr<v1::FeatureKind> kind = ParseKind(*v);
      if (!kind.ok()) return kind.status();
      inv.kind = *kind;
    } else if (name == "order") {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      absl::StatusOr<v1::ListFeaturesRequest::Order> order = ParseOrder(*v);
      if (!order.ok()) return order.status();
      inv.order = *order;
    } else if (name == "timeout_s") {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      if (!absl::SimpleAtod(*v, &inv.timeout_s) || !(inv.timeout_s >= 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --timeout_s: '", *v, "' is not a duration"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return inv;
}

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

// Proto JSON on one line.
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

// The line `saetrack watch` prints for one update.
std::string WatchLine(const v1::JobUpdate& update) {
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
  return line;
}

std::string ProgressLine(const v1::Job& job) {
  std::string line =
      absl::StrFormat("%s %s: %d/%d SAEs trained, %s tokens", job.job_id(),
                      StateName(job.state()), job.progress().tasks_done(),
                      job.progress().tasks_total(),
                      HumanCount(job.progress().tokens_trained()));
  if (!job.error().empty()) absl::StrAppend(&line, " (", job.error(), ")");
  return line;
}

// "-" for an absent value, else the value with three decimals.
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

// Text on one line: line breaks and tabs written as escapes.
std::string OneLine(const std::string& text) {
  return absl::StrReplaceAll(text,
                             {{"\n", "\\n"}, {"\r", "\\r"}, {"\t", "\\t"}});
}

// A token id with its text when the job has a tokenizer: 262 " the".
std::string TokenLabel(int32_t token, const std::string& text) {
  if (text.empty()) return absl::StrCat(token);
  return absl::StrCat(token, " \"", OneLine(text), "\"");
}

// A context as `feature --contexts` prints it: the decoded text, else the
// window's token ids, the focus token between [[ and ]].
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

// The smallest and the largest finite value present in `values`; nullopt
// for none.
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

// One labelled sparkline with the range it spans, or nothing when no value
// is present.
std::string SparklineRow(const std::string& label,
                         const std::vector<std::optional<double>>& values) {
  const std::optional<std::pair<double, double>> range = FiniteRange(values);
  if (!range.has_value()) return "";
  return absl::StrFormat("%-9s  %s  %.3f .. %.3f\n", label, Sparkline(values),
                         range->first, range->second);
}

// The summary lines of `saetrack feature`.
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
    absl::StrAppend(
        &text,
        absl::StrFormat("phases: breakpoints at steps %.0f and %.0f, slopes "
                        "%.4f / %.4f / %.4f, r² %.3f\n",
                        p.breakpoint1_step(), p.breakpoint2_step(), p.slope1(),
                        p.slope2(), p.slope3(), p.r_squared()));
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

// `saetrack feature` without --json.
std::string FormatFeatureHistory(const v1::FeatureHistory& history,
                                 bool contexts, bool decoder) {
  std::string text =
      absl::StrFormat("feature %d, layer %d, job %s\n", history.feature_id(),
                      history.layer(), history.job_id());
  if (history.has_summary()) {
    absl::StrAppend(&text, FormatFeatureSummary(history.summary()));
  }
  absl::StrAppend(
      &text,
      absl::StrFormat("%5s %8s %10s %10s %10s %9s %9s %8s %8s %8s\n", "chain",
                      "step", "frequency", "mean act", "max act", "cos prev",
                      "cos final", "P act", "P feat", "|w_enc|"));
  std::vector<std::optional<double>> cos_final, progress;
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
  }
  if (!all_analysed) {
    absl::StrAppend(&text,
                    "(frequency and activations of checkpoints not analysed "
                    "yet are from the held-out evaluation set)\n");
  }
  absl::StrAppend(&text, SparklineRow("cos final", cos_final),
                  SparklineRow("P act", progress));

  const int n = history.points_size();
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

// `saetrack features` without --json.
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

// The inputs of the paper's three drift findings (analysis/findings.h) from
// `drift`.
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

// `saetrack drift` without --json.
std::string FormatDriftSummary(const v1::DriftSummary& drift) {
  std::string text = absl::StrFormat(
      "drift of job %s layer %d (tau %.2f, token-level at %.0f%%, top %d "
      "contexts, %s analysis tokens)\n",
      drift.job_id(), drift.layer(), drift.formation_tau(),
      100 * drift.token_level_threshold(), drift.top_k(),
      HumanCount(drift.analysis_tokens()));
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
        absl::StrFormat(
            "phases of the median cos to final: breakpoints at steps %.0f and "
            "%.0f, slopes %.4f / %.4f / %.4f per unit of log(step + 1), r² "
            "%.3f\n",
            p.breakpoint1_step(), p.breakpoint2_step(), p.slope1(), p.slope2(),
            p.slope3(), p.r_squared()));
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
  absl::StrAppend(&text, "against the paper:\n");
  for (const analysis::Finding& finding :
       analysis::PaperFindings(FindingsInputOf(drift))) {
    absl::StrAppend(&text, "  ", finding.sentence, "\n");
  }
  return text;
}

class Cli {
 public:
  Cli(const Invocation& inv, std::ostream& out, std::ostream& err,
      bool err_is_terminal, const ClientFactory& make_client)
      : inv_(inv), out_(out), err_(err), err_is_terminal_(err_is_terminal) {
    ClientOptions options;
    options.coordinator = inv.coordinator;
    client_ = make_client(options);
  }

  int Run() {
    if (inv_.command == "submit") return Submit();
    if (inv_.command == "status") return Status();
    if (inv_.command == "list") return List();
    if (inv_.command == "watch") return Watch();
    if (inv_.command == "cancel") return Cancel();
    if (inv_.command == "metrics") return Metrics();
    if (inv_.command == "feature") return Feature();
    if (inv_.command == "features") return Features();
    if (inv_.command == "drift") return Drift();
    if (inv_.command == "export") return Export();
    if (inv_.command == "admin") return Admin();
    return Usage(inv_.command.empty()
                     ? std::string("no command given")
                     : absl::StrCat("unknown command '", inv_.command, "'"));
  }

 private:
  int Usage(const std::string& reason) {
    err_ << "saetrack: " << reason << " (see saetrack --help)\n";
    return kExitUsage;
  }

  int Fail(const absl::Status& status) {
    err_ << "saetrack: " << absl::StatusCodeToString(status.code()) << ": "
         << status.message() << "\n";
    return kExitFailure;
  }

  // Checks the number of positional arguments; `what` names them for the
  // message.
  bool ExpectPositional(size_t n, const std::string& what) {
    if (inv_.positional.size() == n) return true;
    Usage(absl::StrCat(inv_.command, " takes ", what));
    return false;
  }

  int Submit() {
    if (!ExpectPositional(1, "one job file")) return kExitUsage;
    absl::StatusOr<v1::JobSpec> spec = LoadJobFile(inv_.positional[0]);
    if (!spec.ok()) return Fail(spec.status());
    absl::StatusOr<v1::SubmitJobResponse> submitted =
        client_->SubmitJob(*spec, inv_.request_id);
    if (!submitted.ok()) return Fail(submitted.status());
    const v1::Job& job = submitted->job();
    if (!inv_.wait) {
      if (inv_.json) {
        out_ << ToJson(*submitted) << "\n";
      } else {
        out_ << job.job_id() << (submitted->created() ? "" : " (existing)")
             << " " << StateName(job.state()) << "\n";
      }
      return kExitOk;
    }
    return Wait(job.job_id());
  }

  int Wait(const std::string& job_id) {
    std::string last_line;
    absl::StatusOr<v1::Job> job =
        Follow(job_id, [&](const v1::JobUpdate& update) {
          ShowProgress(ProgressLine(update.job()), &last_line);
        });
    EndProgress(last_line);
    if (!job.ok()) return Fail(job.status());
    if (inv_.json) {
      out_ << ToJson(*job) << "\n";
    } else {
      out_ << job->job_id() << " " << StateName(job->state()) << "\n";
    }
    return JobExit(*job);
  }

  int Watch() {
    if (!ExpectPositional(1, "one job id")) return kExitUsage;
    std::string last_line;
    absl::StatusOr<v1::Job> job =
        Follow(inv_.positional[0], [&](const v1::JobUpdate& update) {
          if (inv_.json) {
            out_ << ToJsonLine(update) << "\n" << std::flush;
          } else {
            ShowProgress(WatchLine(update), &last_line);
          }
        });
    EndProgress(last_line);
    if (!job.ok()) return Fail(job.status());
    if (!inv_.json) {
      out_ << job->job_id() << " " << StateName(job->state()) << "\n";
    }
    return JobExit(*job);
  }

  int Cancel() {
    if (!ExpectPositional(1, "one job id")) return kExitUsage;
    absl::StatusOr<v1::CancelJobResponse> cancelled =
        client_->CancelJob(inv_.positional[0]);
    if (!cancelled.ok()) return Fail(cancelled.status());
    if (inv_.json) {
      out_ << ToJson(*cancelled) << "\n";
    } else {
      out_ << cancelled->job().job_id() << " "
           << StateName(cancelled->job().state()) << "\n";
    }
    return kExitOk;
  }

  // 0 for a job that succeeded; else prints why it ended and returns 1.
  int JobExit(const v1::Job& job) {
    if (job.state() == v1::JOB_STATE_SUCCEEDED) return kExitOk;
    err_ << "saetrack: job " << job.job_id() << " " << StateName(job.state())
         << (job.error().empty() ? "" : ": " + job.error()) << "\n";
    return kExitFailure;
  }

  // Prints `line` unless it repeats the last one: in place on a terminal.
  void ShowProgress(const std::string& line, std::string* last_line) {
    if (line == *last_line) return;
    if (err_is_terminal_) {
      err_ << "\r\033[K" << line << std::flush;
    } else {
      err_ << line << "\n";
    }
    *last_line = line;
  }

  // Follows the job until it ends, calling `show` with every update, and
  // returns it in its terminal state. Streams JobService.WatchJob; polls
  // GetJob when the coordinator lacks it. Reconnects while the coordinator
  // is unavailable. Errors: kDeadlineExceeded past --timeout_s, the
  // coordinator's.
  absl::StatusOr<v1::Job> Follow(
      const std::string& job_id,
      const std::function<void(const v1::JobUpdate&)>& show) {
    const absl::Time deadline =
        inv_.timeout_s > 0 ? absl::Now() + absl::Seconds(inv_.timeout_s)
                           : absl::InfiniteFuture();
    const auto timed_out = [&] {
      return absl::DeadlineExceededError(absl::StrCat(
          "job ", job_id, " still running after --timeout_s=", inv_.timeout_s));
    };
    bool use_watch = true;
    while (true) {
      std::optional<v1::Job> terminal;
      absl::Status status;
      if (use_watch) {
        const absl::Duration left = deadline == absl::InfiniteFuture()
                                        ? absl::InfiniteDuration()
                                        : deadline - absl::Now();
        if (left <= absl::ZeroDuration()) return timed_out();
        status =
            client_->WatchJob(job_id, left, [&](const v1::JobUpdate& update) {
              show(update);
              if (IsTerminal(update.job().state())) terminal = update.job();
              return true;
            });
        if (terminal.has_value()) return *terminal;
        if (status.code() == absl::StatusCode::kUnimplemented) {
          use_watch = false;  // An older coordinator: poll.
          continue;
        }
      } else {
        absl::StatusOr<v1::Job> job = client_->GetJob(job_id);
        status = job.status();
        if (job.ok()) {
          v1::JobUpdate update;
          update.set_tokens_done(job->progress().tokens_trained());
          *update.mutable_job() = *job;
          show(update);
          if (IsTerminal(job->state())) return *job;
        }
      }
      if (absl::Now() >= deadline) return timed_out();
      // OK without a terminal update: the stream ended early; reconnect.
      // The coordinator may be restarting; keep waiting within the deadline.
      if (!status.ok() && status.code() != absl::StatusCode::kUnavailable) {
        return status;
      }
      absl::SleepFor(kWaitPollInterval);
    }
  }

  void EndProgress(const std::string& last_line) {
    if (err_is_terminal_ && !last_line.empty()) err_ << "\n";
  }

  int Status() {
    if (!ExpectPositional(1, "one job id")) return kExitUsage;
    absl::StatusOr<v1::Job> job = client_->GetJob(inv_.positional[0]);
    if (!job.ok()) return Fail(job.status());
    if (inv_.json) {
      out_ << ToJson(*job) << "\n";
      return kExitOk;
    }
    out_ << ProgressLine(*job) << "\n";
    const v1::JobSpec& spec = job->spec();
    std::vector<std::string> layers;
    for (const auto& hook : spec.hooks()) {
      layers.push_back(absl::StrCat(hook.layer(), ":", hook.site()));
    }
    out_ << absl::StrFormat("  name: %s\n  model: %s, %d checkpoints\n",
                            spec.name().empty() ? "-" : spec.name(),
                            spec.model().architecture(),
                            spec.model().checkpoints_size())
         << "  hooks: " << absl::StrJoin(layers, ", ") << "\n";
    return kExitOk;
  }

  int List() {
    if (!ExpectPositional(0, "no arguments")) return kExitUsage;
    v1::ListJobsResponse all;
    std::string token;
    do {
      absl::StatusOr<v1::ListJobsResponse> page = client_->ListJobs(500, token);
      if (!page.ok()) return Fail(page.status());
      for (const auto& job : page->jobs()) *all.add_jobs() = job;
      token = page->next_page_token();
    } while (!token.empty());
    if (inv_.json) {
      out_ << ToJson(all) << "\n";
      return kExitOk;
    }
    for (const auto& job : all.jobs()) out_ << ProgressLine(job) << "\n";
    return kExitOk;
  }

  bool ExpectLayer() {
    if (inv_.layer.has_value()) return true;
    Usage(absl::StrCat(inv_.command, " needs --layer"));
    return false;
  }

  int Metrics() {
    if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
    absl::StatusOr<v1::GetCheckpointMetricsResponse> metrics =
        client_->GetCheckpointMetrics(inv_.positional[0], *inv_.layer);
    if (!metrics.ok()) return Fail(metrics.status());
    if (inv_.json) {
      // Proto JSON: every field, new ones included, without listing them.
      out_ << ToJson(*metrics) << "\n";
      return kExitOk;
    }
    out_ << FormatCheckpointMetrics(*metrics);
    return kExitOk;
  }

  int Feature() {
    if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
    if (!inv_.feature_id.has_value()) return Usage("feature needs --feature");
    v1::GetFeatureHistoryRequest request;
    request.set_job_id(inv_.positional[0]);
    request.set_layer(*inv_.layer);
    request.set_feature_id(*inv_.feature_id);
    request.set_include_contexts(inv_.contexts);
    request.set_include_decoder(inv_.decoder);
    absl::StatusOr<v1::FeatureHistory> history =
        client_->GetFeatureHistory(request);
    if (!history.ok()) return Fail(history.status());
    if (inv_.json) {
      out_ << ToJson(*history) << "\n";
      return kExitOk;
    }
    out_ << FormatFeatureHistory(*history, inv_.contexts, inv_.decoder);
    return kExitOk;
  }

  int Features() {
    if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
    if (inv_.formed_from.has_value() && inv_.formed_to.has_value() &&
        *inv_.formed_from > *inv_.formed_to) {
      return Usage(absl::StrCat("--formed-from ", *inv_.formed_from,
                                " is after --formed-to ", *inv_.formed_to));
    }
    if (inv_.min_freq.has_value() && inv_.max_freq.has_value() &&
        *inv_.min_freq > *inv_.max_freq) {
      return Usage(absl::StrCat("--min-freq ", *inv_.min_freq,
                                " is above --max-freq ", *inv_.max_freq));
    }
    v1::ListFeaturesRequest request;
    request.set_job_id(inv_.positional[0]);
    request.set_layer(*inv_.layer);
    if (inv_.kind.has_value()) request.set_kind(*inv_.kind);
    if (inv_.formed_from.has_value()) {
      request.set_min_formation_step(*inv_.formed_from);
    }
    if (inv_.formed_to.has_value()) {
      request.set_max_formation_step(*inv_.formed_to);
    }
    if (inv_.min_freq.has_value()) request.set_min_frequency(*inv_.min_freq);
    if (inv_.max_freq.has_value()) request.set_max_frequency(*inv_.max_freq);
    if (inv_.order.has_value()) request.set_order_by(*inv_.order);
    if (inv_.limit.has_value()) request.set_page_size(*inv_.limit);
    request.set_page_token(inv_.page_token);
    absl::StatusOr<v1::ListFeaturesResponse> list =
        client_->ListFeatures(request);
    if (!list.ok()) return Fail(list.status());
    if (inv_.json) {
      out_ << ToJson(*list) << "\n";
      return kExitOk;
    }
    out_ << FormatFeatureList(*list);
    return kExitOk;
  }

  int Drift() {
    if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
    absl::StatusOr<v1::DriftSummary> drift =
        client_->GetDriftSummary(inv_.positional[0], *inv_.layer);
    if (!drift.ok()) return Fail(drift.status());
    if (inv_.json) {
      out_ << ToJson(*drift) << "\n";
      return kExitOk;
    }
    out_ << FormatDriftSummary(*drift);
    return kExitOk;
  }

  // Writes the SAE as QueryService.ExportSae streams it; through
  // DownloadSae and a cfg.json of its own (ExportLocally) when the
  // coordinator lacks ExportSae.
  int Export() {
    if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
    if (inv_.out_dir.empty()) return Usage("export needs --out");
    const std::string& job_id = inv_.positional[0];
    const int layer = *inv_.layer;
    // The chain entry first: it resolves a missing --step as documented
    // (the last SAE trained) and names the stored steps when --step has
    // none.
    absl::StatusOr<v1::GetCheckpointMetricsResponse> metrics =
        client_->GetCheckpointMetrics(job_id, layer);
    if (!metrics.ok()) return Fail(metrics.status());
    absl::StatusOr<v1::CheckpointMetrics> sae = FindSae(*metrics);
    if (!sae.ok()) return Fail(sae.status());
    absl::StatusOr<ExportedSae> exported =
        client_->ExportSae(job_id, layer, sae->step());
    if (exported.status().code() == absl::StatusCode::kUnimplemented) {
      return ExportLocally(*sae);  // An older coordinator.
    }
    if (!exported.ok()) return Fail(exported.status());
    if (exported->step != sae->step()) {
      return Fail(absl::InternalError(
          absl::StrCat("asked to export step ", sae->step(),
                       ", the coordinator sent step ", exported->step)));
    }
    absl::StatusOr<format::SaelensConfig> cfg =
        WriteExportedFiles(exported->files);
    if (!cfg.ok()) return Fail(cfg.status());
    std::vector<std::string> files;
    for (const auto& [name, bytes] : exported->files) files.push_back(name);
    PrintExported(*cfg, *sae, files);
    return kExitOk;
  }

  // Checks that `files` hold a SAELens directory whose cfg.json parses and
  // writes them into --out (created if needed; each file atomically, the
  // cfg.json last so that a reader finding it finds the weights too).
  // Returns the parsed config. Nothing is written when a file is missing or
  // the cfg.json does not parse.
  absl::StatusOr<format::SaelensConfig> WriteExportedFiles(
      const std::map<std::string, std::string>& files) const {
    for (const char* required :
         {format::kSaelensConfigFile, format::kSaelensWeightsFile}) {
      if (files.count(required) == 0) {
        return absl::DataLossError(
            absl::StrCat("the coordinator's export of job ", inv_.positional[0],
                         " layer ", *inv_.layer, " lacks ", required));
      }
    }
    const std::string config_path =
        absl::StrCat(inv_.out_dir, "/", format::kSaelensConfigFile);
    absl::StatusOr<format::SaelensConfig> cfg = format::ParseSaelensConfig(
        files.at(format::kSaelensConfigFile), config_path);
    if (!cfg.ok()) return cfg.status();
    std::error_code error;
    std::filesystem::create_directories(inv_.out_dir, error);
    if (error) {
      return absl::ErrnoToStatus(error.value(),
                                 absl::StrCat("creating ", inv_.out_dir));
    }
    for (const auto& [name, bytes] : files) {
      if (name == format::kSaelensConfigFile) continue;
      if (absl::Status s = format::WriteFileAtomically(
              absl::StrCat(inv_.out_dir, "/", name), bytes);
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = format::WriteFileAtomically(
            config_path, files.at(format::kSaelensConfigFile));
        !s.ok()) {
      return s;
    }
    return cfg;
  }

  // `export` against a coordinator without QueryService.ExportSae: the
  // weights through WorkerService.DownloadSae, the cfg.json from the job's
  // spec.
  int ExportLocally(const v1::CheckpointMetrics& sae) {
    const std::string& job_id = inv_.positional[0];
    const int layer = *inv_.layer;
    absl::StatusOr<v1::Job> job = client_->GetJob(job_id);
    if (!job.ok()) return Fail(job.status());
    absl::StatusOr<std::string> weights =
        client_->DownloadSae(job_id, layer, sae.step());
    if (!weights.ok()) return Fail(weights.status());

    format::SaelensConfig cfg = SaelensConfigForJob(
        job->spec(), job_id, layer, sae.step(), sae.d_in(), sae.d_sae());
    // An older coordinator's spec may lack k; the metrics have it.
    if (cfg.architecture == "topk" && cfg.k == 0) cfg.k = sae.k();
    if (absl::Status s = format::WriteSaelensDir(inv_.out_dir, cfg, *weights);
        !s.ok()) {
      return Fail(s);
    }
    PrintExported(cfg, sae,
                  {format::kSaelensConfigFile, format::kSaelensWeightsFile});
    return kExitOk;
  }

  // What `export` prints once `files` (names) of chain entry `sae` are in
  // --out.
  void PrintExported(const format::SaelensConfig& cfg,
                     const v1::CheckpointMetrics& sae,
                     const std::vector<std::string>& files) {
    const std::string& job_id = inv_.positional[0];
    const int layer = *inv_.layer;
    if (inv_.json) {
      using format::JsonValue;
      JsonValue::Array names;
      for (const std::string& name : files) {
        names.push_back(JsonValue::String(name));
      }
      out_ << format::SerializeJson(JsonValue::MakeObject({
                  {"job_id", JsonValue::String(job_id)},
                  {"layer", JsonValue::Integer(layer)},
                  {"step", JsonValue::Integer(sae.step())},
                  {"chain_index", JsonValue::Integer(sae.chain_index())},
                  {"architecture", JsonValue::String(cfg.architecture)},
                  {"d_in", JsonValue::Integer(cfg.d_in)},
                  {"d_sae", JsonValue::Integer(cfg.d_sae)},
                  {"k", JsonValue::Integer(cfg.k)},
                  {"hook_name", JsonValue::String(cfg.hook_name)},
                  {"model_name", JsonValue::String(cfg.model_name)},
                  {"dir", JsonValue::String(inv_.out_dir)},
                  {"cfg_path",
                   JsonValue::String(absl::StrCat(inv_.out_dir, "/",
                                                  format::kSaelensConfigFile))},
                  {"weights_path",
                   JsonValue::String(absl::StrCat(
                       inv_.out_dir, "/", format::kSaelensWeightsFile))},
                  {"files", JsonValue::MakeArray(std::move(names))},
              }))
           << "\n";
      return;
    }
    out_ << absl::StrFormat(
        "exported job %s layer %d step %d (%s%s, d_in %d, d_sae %d) to %s\n",
        job_id, layer, sae.step(), cfg.architecture,
        cfg.architecture == "topk" ? absl::StrCat(" k ", cfg.k) : "", cfg.d_in,
        cfg.d_sae, inv_.out_dir);
  }

  // `admin backup --to DIR`, straight over an AdminService stub.
  int Admin() {
    if (inv_.positional.size() != 1 || inv_.positional[0] != "backup") {
      return Usage("admin takes one subcommand: backup");
    }
    if (inv_.to_dir.empty()) return Usage("admin backup needs --to");
    auto stub = v1::AdminService::NewStub(grpc::CreateChannel(
        inv_.coordinator, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::hours(1));
    v1::BackupRequest request;
    request.set_to_dir(inv_.to_dir);
    v1::BackupResponse response;
    absl::Status s = FromGrpcStatus(stub->Backup(&context, request, &response));
    if (!s.ok()) return Fail(s);
    if (inv_.json) {
      out_ << ToJsonLine(response) << "\n";
      return kExitOk;
    }
    out_ << absl::StrFormat("backed up the database to %s (%d bytes)\n",
                            response.dir(), response.bytes());
    return kExitOk;
  }

  // The chain entry `export` writes: the one of --step, or without it the
  // last one trained (the highest chain index).
  absl::StatusOr<v1::CheckpointMetrics> FindSae(
      const v1::GetCheckpointMetricsResponse& metrics) const {
    const std::string what =
        absl::StrCat("job ", inv_.positional[0], " layer ", *inv_.layer);
    const v1::CheckpointMetrics* found = nullptr;
    std::vector<std::string> steps;
    for (const v1::CheckpointMetrics& m : metrics.checkpoints()) {
      steps.push_back(absl::StrCat(m.step()));
      if (inv_.step.has_value()
              ? m.step() == *inv_.step
              : found == nullptr || m.chain_index() > found->chain_index()) {
        found = &m;
      }
    }
    if (found != nullptr) return *found;
    if (!inv_.step.has_value()) {
      return absl::NotFoundError(absl::StrCat(what, " has no trained SAE yet"));
    }
    return absl::NotFoundError(absl::StrCat(
        what, " has no SAE at step ", *inv_.step, " (",
        steps.empty()
            ? "none trained yet"
            : absl::StrCat("steps with an SAE: ", absl::StrJoin(steps, ", ")),
        ")"));
  }

  const Invocation& inv_;
  std::ostream& out_;
  std::ostream& err_;
  const bool err_is_terminal_;
  std::unique_ptr<SaetrackClient> client_;
};

}  // namespace

std::string CliUsage() { return UsageText(); }

std::string Sparkline(const std::vector<std::optional<double>>& values) {
  static constexpr const char* kBars[] = {"▁", "▂", "▃", "▄",
                                          "▅", "▆", "▇", "█"};
  constexpr int kTop = 7;
  const std::optional<std::pair<double, double>> range = FiniteRange(values);
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
  std::string table =
      absl::StrFormat("%5s %8s %8s %8s %8s %10s %7s %6s %9s %8s %8s %7s  %s\n",
                      "chain", "step", "tokens", "FVU", "init FVU", "MSE", "L0",
                      "dead", "cos prev", "loss rec", "KL", "time s", "note");
  for (const auto& m : metrics.checkpoints()) {
    std::vector<std::string> notes;
    if (m.stopped_early()) notes.push_back("stopped early");
    if (m.resumed_from_tokens() > 0) {
      notes.push_back(
          absl::StrCat("resumed at ", HumanCount(m.resumed_from_tokens())));
    }
    std::string row = absl::StrFormat(
        "%5d %8d %8s %8.4f %8.4f %10.4g %7.1f %5.1f%% %9s %8s %8s %7.1f",
        m.chain_index(), m.step(), HumanCount(m.tokens_trained()), m.fvu(),
        m.init_fvu(), m.mse(), m.l0(), 100 * m.dead_fraction(),
        m.has_median_decoder_cos_prev()
            ? absl::StrFormat("%.3f", m.median_decoder_cos_prev())
            : "-",
        m.has_lm() ? absl::StrFormat("%.1f%%", 100 * m.lm().loss_recovered())
                   : "-",
        m.has_lm() ? absl::StrFormat("%.4f", m.lm().kl_divergence()) : "-",
        m.wall_time_s());
    if (!notes.empty()) absl::StrAppend(&row, "  ", absl::StrJoin(notes, ", "));
    absl::StrAppend(&table, row, "\n");
  }
  return table;
}

int RunCli(const std::vector<std::string>& args, std::ostream& out,
           std::ostream& err, bool err_is_terminal,
           const ClientFactory& make_client) {
  absl::StatusOr<Invocation> inv = ParseArgs(args);
  if (!inv.ok()) {
    err << "saetrack: " << inv.status().message() << " (see saetrack --help)\n";
    return kExitUsage;
  }
  if (inv->help || inv->command == "help") {
    out << UsageText();
    return kExitOk;
  }
  return Cli(*inv, out, err, err_is_terminal, make_client).Run();
}

int RunCli(const std::vector<std::string>& args, std::ostream& out,
           std::ostream& err, bool err_is_terminal) {
  return RunCli(args, out, err, err_is_terminal, &SaetrackClient::Create);
}

}  // namespace saetrack::client
