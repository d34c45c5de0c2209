#include "client/cli.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/job_file.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/admin.grpc.pb.h"
#include "worker/format/json.h"
#include "worker/format/saelens.h"

namespace saetrack::client {
namespace {

// How often `submit --wait` and `watch` poll a coordinator without WatchJob,
// and how long they wait before reconnecting to one that went away.
constexpr absl::Duration kWaitPollInterval = absl::Milliseconds(300);

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
  feature JOB_ID --layer L --id N
                           The history of one feature across checkpoints.
  export JOB_ID --layer L [--step S] --out DIR
                           Write the SAE of checkpoint step S in SAELens's
                           layout: DIR/cfg.json and DIR/sae_weights.safetensors
                           (sae_lens: SAE.load_from_disk(DIR)). Without
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
  --json                   Print results as JSON (saetrack.v1 messages;
                           for export, an object naming what was written).
  --help                   This text.

Exit codes: 0 success; 1 failure (the reason is printed on one line:
"saetrack: ..."; for --wait and watch also a job that failed or was
cancelled);
2 bad command line.
)";
}

absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& args) {
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
    if (name == "json" || name == "wait" || name == "help") {
      if (value) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " takes no value"));
      }
      (name == "json" ? inv.json : name == "wait" ? inv.wait : inv.help) = true;
    } else if (name == "coordinator" || name == "request_id" || name == "out" ||
               name == "to") {
      absl::StatusOr<std::string> v = take_value();
      if (!v.ok()) return v.status();
      (name == "coordinator" ? inv.coordinator
       : name == "out"       ? inv.out_dir
       : name == "to"        ? inv.to_dir
                             : inv.request_id) = *v;
    } else if (name == "layer" || name == "id") {
      int v;
      if (absl::Status s = take_int(&v); !s.ok()) return s;
      (name == "layer" ? inv.layer : inv.feature_id) = v;
    } else if (name == "step") {
      int64_t v;
      if (absl::Status s = take_int(&v); !s.ok()) return s;
      inv.step = v;
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
    if (!inv_.feature_id.has_value()) return Usage("feature needs --id");
    absl::StatusOr<v1::FeatureHistory> history = client_->GetFeatureHistory(
        inv_.positional[0], *inv_.layer, *inv_.feature_id);
    if (!history.ok()) return Fail(history.status());
    if (inv_.json) {
      out_ << ToJson(*history) << "\n";
      return kExitOk;
    }
    out_ << absl::StrFormat("feature %d, layer %d, job %s\n",
                            history->feature_id(), history->layer(),
                            history->job_id());
    out_ << absl::StrFormat("%5s %8s %10s %10s %10s %9s %8s\n", "chain", "step",
                            "frequency", "mean act", "max act", "cos prev",
                            "|w_enc|");
    for (const auto& p : history->points()) {
      out_ << absl::StrFormat(
          "%5d %8d %10.5f %10.4g %10.4g %9s %8.3f\n", p.chain_index(), p.step(),
          p.frequency(), p.mean_activation(), p.max_activation(),
          p.has_decoder_cos_prev()
              ? absl::StrFormat("%.3f", p.decoder_cos_prev())
              : "-",
          p.encoder_norm());
    }
    return kExitOk;
  }

  int Export() {
    if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
    if (inv_.out_dir.empty()) return Usage("export needs --out");
    const std::string& job_id = inv_.positional[0];
    const int layer = *inv_.layer;
    absl::StatusOr<v1::Job> job = client_->GetJob(job_id);
    if (!job.ok()) return Fail(job.status());
    absl::StatusOr<v1::GetCheckpointMetricsResponse> metrics =
        client_->GetCheckpointMetrics(job_id, layer);
    if (!metrics.ok()) return Fail(metrics.status());
    absl::StatusOr<v1::CheckpointMetrics> sae = FindSae(*metrics);
    if (!sae.ok()) return Fail(sae.status());
    absl::StatusOr<std::string> weights =
        client_->DownloadSae(job_id, layer, sae->step());
    if (!weights.ok()) return Fail(weights.status());

    const v1::JobSpec& spec = job->spec();
    format::SaelensConfig cfg;
    cfg.architecture = spec.sae().architecture().empty()
                           ? "relu_l1"
                           : spec.sae().architecture();
    cfg.d_in = sae->d_in();
    cfg.d_sae = sae->d_sae();
    if (cfg.architecture == "topk") {
      cfg.k = spec.sae().k() != 0 ? spec.sae().k() : sae->k();
    }
    // The checkpoint the SAE read; the job's name if the spec lacks it.
    cfg.model_name = spec.name();
    for (const v1::Checkpoint& checkpoint : spec.model().checkpoints()) {
      if (checkpoint.step() == sae->step()) cfg.model_name = checkpoint.path();
    }
    std::string site = "resid_pre";
    for (const v1::HookPoint& hook : spec.hooks()) {
      if (hook.layer() == layer && !hook.site().empty()) site = hook.site();
    }
    cfg.hook_name = format::HookName(layer, site);
    cfg.hook_layer = layer;
    cfg.checkpoint_step = sae->step();
    cfg.job_id = job_id;
    if (absl::Status s = format::WriteSaelensDir(inv_.out_dir, cfg, *weights);
        !s.ok()) {
      return Fail(s);
    }

    const std::string config_path =
        absl::StrCat(inv_.out_dir, "/", format::kSaelensConfigFile);
    const std::string weights_path =
        absl::StrCat(inv_.out_dir, "/", format::kSaelensWeightsFile);
    if (inv_.json) {
      using format::JsonValue;
      out_ << format::SerializeJson(JsonValue::MakeObject({
                  {"job_id", JsonValue::String(job_id)},
                  {"layer", JsonValue::Integer(layer)},
                  {"step", JsonValue::Integer(sae->step())},
                  {"chain_index", JsonValue::Integer(sae->chain_index())},
                  {"architecture", JsonValue::String(cfg.architecture)},
                  {"d_in", JsonValue::Integer(cfg.d_in)},
                  {"d_sae", JsonValue::Integer(cfg.d_sae)},
                  {"k", JsonValue::Integer(cfg.k)},
                  {"hook_name", JsonValue::String(cfg.hook_name)},
                  {"model_name", JsonValue::String(cfg.model_name)},
                  {"dir", JsonValue::String(inv_.out_dir)},
                  {"cfg_path", JsonValue::String(config_path)},
                  {"weights_path", JsonValue::String(weights_path)},
              }))
           << "\n";
      return kExitOk;
    }
    out_ << absl::StrFormat(
        "exported job %s layer %d step %d (%s%s, d_in %d, d_sae %d) to %s\n",
        job_id, layer, sae->step(), cfg.architecture,
        cfg.architecture == "topk" ? absl::StrCat(" k ", cfg.k) : "", cfg.d_in,
        cfg.d_sae, inv_.out_dir);
    return kExitOk;
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
