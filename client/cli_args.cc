// The hand-written parser of the command line.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/internal/cli_commands.h"

namespace saetrack::client {
namespace internal {

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

namespace {

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

}  // namespace

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

}  // namespace internal

}  // namespace saetrack::client
