// The command line, parsed with CLI11: one subcommand per command, every flag
// bound to a field of Invocation, CLI11's errors turned into the messages the
// CLI prints.

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
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
  status JOB_ID            State and progress of one job; for a job that
                           follows a training run (spec.model.follow) also
                           its follow state (waiting for the next checkpoint
                           since when, training, or closed and why), the last
                           step taken, checkpoints taken and stored with the
                           lag of the last one stored (its last write to its
                           SAEs stored), refused checkpoints with the reason,
                           and the analysis round (provisional or final).
  list                     All jobs, oldest first; the state of a following
                           job reads running (following).
  watch JOB_ID [--timeout_s S]
                           Follow a job until it ends: a progress line on
                           stderr (rewritten in place on a terminal), e.g.
                           "checkpoints 3/11  tokens 1.2M  2.3k tok/s  loss
                           0.0123  ETA 1m20s  state RUNNING", then the final
                           state on stdout. Exits 0 if the job succeeded, 1 if
                           it failed or was cancelled. With --json, one
                           saetrack.v1.JobUpdate per line on stdout instead.
                           A following job's line adds e.g. "following:
                           waiting for step > 32 since 12s, 5 checkpoints
                           taken, 5 stored"; it ends once the job is closed
                           and its final analysis done.
  cancel JOB_ID            Cancel a queued or running job (running tasks stop
                           at their next heartbeat); prints the resulting
                           state. Cancelling a cancelled job succeeds again;
                           a job that already ended is refused
                           (FAILED_PRECONDITION).
  close JOB_ID             End a following job's following: the final
                           analysis runs over the checkpoints taken and the
                           job then ends as a fixed-list job does. Closing a
                           closed job succeeds again.
  add-checkpoint JOB_ID --step N --path DIR
                           Give a following job the checkpoint of step N in
                           DIR (resolved against the current directory; the
                           coordinator reads it there). Prints whether it was
                           taken or already there (the same step and path
                           again changes nothing).
  refresh JOB_ID           Start a provisional analysis round of a following
                           job over the checkpoints trained so far (after the
                           round running, if one is).
                           close, add-checkpoint and refresh print the job
                           (saetrack.v1.Job) with --json.
  metrics JOB_ID --layer L Per-checkpoint SAE metrics of one hooked layer.
                           "loss rec" and "KL" compare the LM with the SAE
                           spliced in to the clean model ("-": not measured);
                           "cos init" is the median decoder cosine to the SAE's
                           initialisation, "epochs" how often each distinct
                           training token was seen; "note" marks SAEs the
                           adaptive budget stopped early, SAEs resumed from
                           saved training state and SAEs whose held-out loss
                           had not plateaued ("not converged").
  quality JOB_ID --layer L The trust checks: at the reference checkpoints
                           (schedule.reference_checkpoints) the chain's SAE
                           beside an independent SAE trained from scratch with
                           another seed (held-out loss, FVU, L0, dead, median
                           decoder cosine to its initialisation, converged),
                           their dictionaries' median matched decoder cosine
                           (two random dictionaries' in brackets), then one
                           verdict per check: seed stability, distance from
                           initialisation, chain vs independent ("ok" or
                           "FAIL").
  feature JOB_ID --layer L --feature N [--contexts] [--decoder] [--logits]
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
                           decoder rows. Logit effects: the tokens the unit
                           decoder direction promotes and suppresses most
                           through the checkpoint's unembedding (token id,
                           text, logit) at the first and the final
                           checkpoint; --logits at every checkpoint.
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
                           For a following job before its final analysis,
                           drift and feature say first that the analysis is
                           provisional: over the checkpoints up to a step,
                           against that step as the final one.
  findings JOB_ID [JOB_ID...] --layer L
                           The paper's findings over replicate runs (the same
                           job submitted with different sae.seed): per
                           reference checkpoint the median cos to the final
                           decoder beside what two SAEs of that checkpoint
                           share (seed stability, chain vs independent) and
                           two random dictionaries, the speed-ups, the phase
                           fit (segments, breakpoints as steps), formation
                           steps and the final progress measure per kind with
                           both baselines; a column per job, then the median
                           and range. Then each finding's verdicts counted
                           over the runs (drift, phases, formation, drift vs
                           the noise of SAE training) and the speed-up over
                           every measured link.
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
  admin backup --to NAME   Copy the coordinator's database (a consistent
                           RocksDB checkpoint) into BACKUP_ROOT/NAME on the
                           coordinator's machine (its --backup_root; NAME is
                           letters, digits, '.', '_', '-' and must not exist
                           yet). Copied to P/db, it is served by a
                           coordinator started with --data_dir P.
  admin token create --role ROLE --name NAME --token_file FILE
                           Create a bearer token for a coordinator started
                           with --token_file FILE: 256 random bits, printed
                           once (with --json, {"name","role","token"}); FILE
                           (created with mode 0600) keeps only its SHA-256.
                           ROLE: reader (queries, job status), submitter
                           (reader + submit, cancel its own jobs), worker
                           (WorkerService only), admin (everything). Names
                           are unique within FILE. Works offline.

Flags (every command):
  --coordinator HOST:PORT  Coordinator address (default 127.0.0.1:7070).
  --token_file FILE        A file holding the bearer token to send (default:
                           $SAETRACK_TOKEN_FILE when set).
  --tls_ca FILE            Connect with TLS, trusting the coordinator's
                           certificate when this PEM CA signed it.
  --tls_cert FILE, --tls_key FILE
                           Client certificate and key, for a coordinator that
                           requires them (mutual TLS).
  --tls_server_name NAME   Check the coordinator's certificate against NAME
                           instead of the host of --coordinator.
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

// The commands, one CLI11 subcommand each (Cli::Run dispatches on the name).
constexpr const char* kCommands[] = {
    "submit",  "status",   "list",           "watch",   "cancel",  "close",
    "refresh", "metrics",  "add-checkpoint", "quality", "feature", "features",
    "drift",   "findings", "export",         "admin",
};

// A flag's value that fails its check, thrown from the flag's CLI11 callback
// so that parsing stops there, as at the first bad flag. what(): the message
// the CLI prints.
class FlagValueError : public CLI::ParseError {
 public:
  explicit FlagValueError(const absl::Status& status)
      : CLI::ParseError("FlagValueError", std::string(status.message()),
                        CLI::ExitCodes::ValidationError) {}
};

template <typename Int>
absl::Status ParseInt(const std::string& name, const std::string& value,
                      Int* out) {
  if (!absl::SimpleAtoi(value, out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, ": '", value, "' is not an integer"));
  }
  return absl::OkStatus();
}

// An integer of at least `min`; `what` names it for the message.
template <typename Int>
absl::Status ParseIntAtLeast(const std::string& name, const std::string& value,
                             int64_t min, const char* what, Int* out) {
  if (absl::Status s = ParseInt(name, value, out); !s.ok()) return s;
  if (*out < min) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flag --", name, ": ", *out, " is not ", what, " (", min, " or more)"));
  }
  return absl::OkStatus();
}

absl::Status ParseFrequency(const std::string& name, const std::string& value,
                            std::optional<double>* out) {
  double frequency;
  if (!absl::SimpleAtod(value, &frequency) || !(frequency >= 0) ||
      !(frequency <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flag --", name, ": '", value, "' is not a frequency in [0, 1]"));
  }
  *out = frequency;
  return absl::OkStatus();
}

absl::Status ParseKind(const std::string& value, Invocation* inv) {
  if (value == "token") {
    inv->kind = v1::FEATURE_KIND_TOKEN_LEVEL;
  } else if (value == "concept") {
    inv->kind = v1::FEATURE_KIND_CONCEPT_LEVEL;
  } else if (value == "dead") {
    inv->kind = v1::FEATURE_KIND_DEAD;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "flag --kind: '", value, "' is not one of token, concept, dead"));
  }
  return absl::OkStatus();
}

absl::Status ParseOrder(const std::string& value, Invocation* inv) {
  if (value == "id") {
    inv->order = v1::ListFeaturesRequest::FEATURE_ID;
  } else if (value == "formation") {
    inv->order = v1::ListFeaturesRequest::FORMATION_STEP;
  } else if (value == "drift") {
    inv->order = v1::ListFeaturesRequest::FINAL_DRIFT;
  } else if (value == "frequency") {
    inv->order = v1::ListFeaturesRequest::FREQUENCY;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --order: '", value,
                     "' is not one of id, formation, drift, frequency"));
  }
  return absl::OkStatus();
}

// One flag of the command line: a switch (`on`) or a flag with a value
// (`set`, which checks the value and stores it in the Invocation). Every
// command accepts every flag, before or after its name.
struct Flag {
  const char* name;
  bool Invocation::*on;
  absl::Status (*set)(const std::string& name, const std::string& value,
                      Invocation* inv);
};

const Flag kFlags[] = {
    {"json", &Invocation::json, nullptr},
    {"wait", &Invocation::wait, nullptr},
    {"help", &Invocation::help, nullptr},
    {"contexts", &Invocation::contexts, nullptr},
    {"decoder", &Invocation::decoder, nullptr},
    {"logits", &Invocation::logits, nullptr},
    {"coordinator", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->coordinator = value;
       return absl::OkStatus();
     }},
    {"token_file", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->security.token_file = value;
       return absl::OkStatus();
     }},
    {"tls_ca", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->security.tls_ca_file = value;
       return absl::OkStatus();
     }},
    {"tls_cert", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->security.tls_cert_file = value;
       return absl::OkStatus();
     }},
    {"tls_key", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->security.tls_key_file = value;
       return absl::OkStatus();
     }},
    {"tls_server_name", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->security.tls_server_name = value;
       return absl::OkStatus();
     }},
    {"role", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->role = value;
       return absl::OkStatus();
     }},
    {"name", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->name = value;
       return absl::OkStatus();
     }},
    {"request_id", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->request_id = value;
       return absl::OkStatus();
     }},
    {"out", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->out_dir = value;
       return absl::OkStatus();
     }},
    {"path", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->checkpoint_path = value;
       return absl::OkStatus();
     }},
    {"to", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->to_dir = value;
       return absl::OkStatus();
     }},
    {"page-token", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       inv->page_token = value;
       return absl::OkStatus();
     }},
    {"layer", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       int layer;
       absl::Status s = ParseInt(name, value, &layer);
       if (s.ok()) inv->layer = layer;
       return s;
     }},
    // --id is the same as --feature; each names itself in its messages.
    {"id", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       int id;
       absl::Status s = ParseIntAtLeast(name, value, 0, "a feature id", &id);
       if (s.ok()) inv->feature_id = id;
       return s;
     }},
    {"feature", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       int id;
       absl::Status s = ParseIntAtLeast(name, value, 0, "a feature id", &id);
       if (s.ok()) inv->feature_id = id;
       return s;
     }},
    {"step", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       int64_t step;
       absl::Status s = ParseInt(name, value, &step);
       if (s.ok()) inv->step = step;
       return s;
     }},
    {"formed-from", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       int64_t step;
       absl::Status s = ParseIntAtLeast(name, value, 0, "a step", &step);
       if (s.ok()) inv->formed_from = step;
       return s;
     }},
    {"formed-to", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       int64_t step;
       absl::Status s = ParseIntAtLeast(name, value, 0, "a step", &step);
       if (s.ok()) inv->formed_to = step;
       return s;
     }},
    {"min-freq", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       return ParseFrequency(name, value, &inv->min_freq);
     }},
    {"max-freq", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       return ParseFrequency(name, value, &inv->max_freq);
     }},
    {"limit", nullptr,
     [](const std::string& name, const std::string& value, Invocation* inv) {
       int limit;
       if (absl::Status s =
               ParseIntAtLeast(name, value, 1, "a page size", &limit);
           !s.ok()) {
         return s;
       }
       if (limit > kMaxFeaturesPage) {
         return absl::InvalidArgumentError(absl::StrCat(
             "flag --limit: ", limit, " is more than ", kMaxFeaturesPage));
       }
       inv->limit = limit;
       return absl::OkStatus();
     }},
    {"kind", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       return ParseKind(value, inv);
     }},
    {"order", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       return ParseOrder(value, inv);
     }},
    {"timeout_s", nullptr,
     [](const std::string&, const std::string& value, Invocation* inv) {
       if (!absl::SimpleAtod(value, &inv->timeout_s) ||
           !(inv->timeout_s >= 0)) {
         return absl::InvalidArgumentError(
             absl::StrCat("flag --timeout_s: '", value, "' is not a duration"));
       }
       return absl::OkStatus();
     }},
};

bool IsFlagName(const std::string& name) {
  for (const Flag& flag : kFlags) {
    if (name == flag.name) return true;
  }
  return false;
}

bool IsCommand(const std::string& arg) {
  for (const char* command : kCommands) {
    if (arg == command) return true;
  }
  return false;
}

// Whether `arg` is a flag rather than an argument: "--x", "--x=v", but not
// "--" (an argument like any other) nor "-x".
bool IsFlagArg(const std::string& arg) {
  return arg.rfind("--", 0) == 0 && arg != "--";
}

// The arguments as CLI11 gets them. CLI11 gives some arguments a meaning this
// command line never had: "--" ends the flags, "++" a subcommand, "-x" is a
// short flag, "[a,b]" two values, "--flag=" and "--flag={}" no value,
// "--flag=true" a switch that is on. So CLI11 sees only the names of the
// commands and of the flags as they are ("--layer", and "--layer=" before a
// value); it sees every other argument, and every value after "=", as an
// opaque token that Original() maps back.
class CliTokens {
 public:
  explicit CliTokens(const std::vector<std::string>& args) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& arg = args[i];
      size_t eq = arg.find('=');
      if (IsFlagArg(arg) && IsFlagName(arg.substr(2, eq - 2))) {
        if (eq == std::string::npos) {
          reversed_.push_back(arg);
        } else {
          std::string value = Opaque(i);
          originals_[value] = arg.substr(eq + 1);
          std::string token = arg.substr(0, eq + 1) + value;
          originals_[token] = arg;
          reversed_.push_back(token);
        }
      } else if (IsCommand(arg)) {
        reversed_.push_back(arg);
      } else {
        std::string token = Opaque(i);
        originals_[token] = arg;
        reversed_.push_back(token);
      }
    }
    std::reverse(reversed_.begin(), reversed_.end());
  }

  // In reverse order, as CLI::App::parse takes them.
  const std::vector<std::string>& reversed() const { return reversed_; }

  // The argument, or the value after "=", that `token` from CLI11 stands for.
  const std::string& Original(const std::string& token) const {
    auto it = originals_.find(token);
    return it == originals_.end() ? token : it->second;
  }

  // Whether `token` stands for a value after "=" or for an argument other
  // than a command's or a flag's name. Never the result of a bare switch.
  bool IsOpaque(const std::string& token) const {
    return token.rfind(kOpaquePrefix, 0) == 0 && originals_.count(token) > 0;
  }

 private:
  // CLI11 takes a token of this prefix for an argument, and no command or
  // flag name has it.
  static constexpr char kOpaquePrefix[] = "\x1a";

  static std::string Opaque(size_t index) {
    return absl::StrCat(kOpaquePrefix, index);
  }

  std::vector<std::string> reversed_;
  std::map<std::string, std::string> originals_;
};

// Binds every flag of kFlags to `inv` on `app`. The callbacks run as CLI11
// meets each flag, so that the first bad value, left to right, is the one
// reported, and the last value of a repeated flag is the one kept.
void AddFlags(const CliTokens& tokens, Invocation* inv, CLI::App* app) {
  for (const Flag& flag : kFlags) {
    const std::string name = flag.name;
    CLI::Option* option;
    if (flag.on != nullptr) {
      option = app->add_option("--" + name, [&tokens, inv, name, on = flag.on](
                                                const CLI::results_t& results) {
        if (tokens.IsOpaque(results.back())) {
          throw FlagValueError(absl::InvalidArgumentError(
              absl::StrCat("flag --", name, " takes no value")));
        }
        inv->*on = true;
        return true;
      });
      option->expected(0);
    } else {
      option = app->add_option(
          "--" + name,
          [&tokens, inv, name, set = flag.set](const CLI::results_t& results) {
            absl::Status s = set(name, tokens.Original(results.back()), inv);
            if (!s.ok()) throw FlagValueError(s);
            return true;
          });
    }
    option->trigger_on_parse();
    option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  }
}

// Makes `app` leave to ParseArgs what this command line does its own way:
// --help prints UsageText(), and the arguments no flag took (the command's,
// and unknown flags) are set aside, to be read with remaining().
void Configure(CLI::App* app) {
  app->set_help_flag();
  app->allow_extras();
}

}  // namespace

absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& args) {
  CliTokens tokens(args);
  Invocation inv;
  CLI::App app("saetrack", "saetrack");
  Configure(&app);
  AddFlags(tokens, &inv, &app);
  // Only the first command's name starts a subcommand; after it, a command's
  // name is an argument (`saetrack status list`).
  app.require_subcommand(0, 1);
  for (const char* command : kCommands) {
    CLI::App* subcommand = app.add_subcommand(command);
    Configure(subcommand);
    AddFlags(tokens, &inv, subcommand);
  }

  absl::Status error;
  try {
    std::vector<std::string> reversed = tokens.reversed();
    app.parse(reversed);
  } catch (const CLI::ArgumentMismatch& e) {
    // A flag lacking its value. CLI11 takes the next argument as the value,
    // whatever it is, so only the last argument can lack one.
    error = absl::InvalidArgumentError(
        !args.empty() && IsFlagArg(args.back())
            ? absl::StrCat("flag ", args.back(), " needs a value")
            : std::string(e.what()));
  } catch (const CLI::ParseError& e) {
    error = absl::InvalidArgumentError(e.what());
  }

  // What no flag took, in order: the arguments before the command's name,
  // the name, the arguments after it. The command is the first of them.
  std::vector<std::string> rest = app.remaining();
  if (std::vector<CLI::App*> parsed = app.get_subcommands(); !parsed.empty()) {
    rest.push_back(parsed.front()->get_name());
    for (const std::string& token : parsed.front()->remaining()) {
      rest.push_back(token);
    }
  }
  // CLI11 sets an unknown flag aside with the arguments; having been met
  // first, it is the error even when CLI11 threw one later.
  for (const std::string& token : rest) {
    const std::string& arg = tokens.Original(token);
    if (IsFlagArg(arg)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag ", arg.substr(0, arg.find('='))));
    }
  }
  if (!error.ok()) return error;
  for (const std::string& token : rest) {
    const std::string& arg = tokens.Original(token);
    if (inv.command.empty()) {
      inv.command = arg;
    } else {
      inv.positional.push_back(arg);
    }
  }
  return inv;
}

}  // namespace internal

}  // namespace saetrack::client
