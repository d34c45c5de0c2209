
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/internal/cli_commands.h"
#include "client/job_file.h"
#include "client/output.h"

namespace saetrack::client {
namespace internal {

int Cli::Submit() {
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
      out_ << job.job_id() << (submitted->created() ? "" : " (existing)") << " "
           << StateName(job.state()) << "\n";
    }
    return kExitOk;
  }
  return Wait(job.job_id());
}

int Cli::Wait(const std::string& job_id) {
  std::string last_line;
  absl::StatusOr<v1::Job> job =
      Follow(job_id, [&](const v1::JobUpdate& update) {
        std::string line = ProgressLine(update.job());
        if (update.job().has_follow()) {
          absl::StrAppend(&line, ", ",
                          FollowProgress(update.job().follow(), absl::Now()));
        }
        ShowProgress(line, &last_line);
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

int Cli::Watch() {
  if (!ExpectPositional(1, "one job id")) return kExitUsage;
  std::string last_line;
  absl::StatusOr<v1::Job> job =
      Follow(inv_.positional[0], [&](const v1::JobUpdate& update) {
        if (inv_.json) {
          out_ << ToJsonLine(update) << "\n" << std::flush;
        } else {
          ShowProgress(WatchLine(update, absl::Now()), &last_line);
        }
      });
  EndProgress(last_line);
  if (!job.ok()) return Fail(job.status());
  if (!inv_.json) {
    out_ << job->job_id() << " " << StateName(job->state()) << "\n";
  }
  return JobExit(*job);
}

int Cli::Cancel() {
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

int Cli::Close() {
  if (!ExpectPositional(1, "one job id")) return kExitUsage;
  absl::StatusOr<v1::CloseJobResponse> closed =
      client_->CloseJob(inv_.positional[0]);
  if (!closed.ok()) return Fail(closed.status());
  const v1::Job& job = closed->job();
  if (inv_.json) {
    out_ << ToJson(job) << "\n";
    return kExitOk;
  }
  out_ << job.job_id() << " " << StateName(job.state()) << ": "
       << FollowStateText(job.follow(), absl::Now()) << ", "
       << job.follow().checkpoints_size() << " checkpoints taken\n";
  return kExitOk;
}

int Cli::AddCheckpoint() {
  if (!ExpectPositional(1, "one job id")) return kExitUsage;
  if (!inv_.step.has_value()) return Usage("add-checkpoint needs --step");
  if (inv_.checkpoint_path.empty()) {
    return Usage("add-checkpoint needs --path");
  }
  // As a job file's paths: the coordinator resolves none of its own.
  const std::string path =
      std::filesystem::absolute(inv_.checkpoint_path).lexically_normal();
  absl::StatusOr<v1::AddCheckpointResponse> added =
      client_->AddCheckpoint(inv_.positional[0], *inv_.step, path);
  if (!added.ok()) return Fail(added.status());
  const v1::Job& job = added->job();
  if (inv_.json) {
    out_ << ToJson(job) << "\n";
    return kExitOk;
  }
  out_ << job.job_id() << ": step " << *inv_.step << " "
       << (added->created() ? "taken" : "already there") << " (" << path
       << "), " << job.follow().checkpoints_size() << " checkpoints taken\n";
  return kExitOk;
}

int Cli::Refresh() {
  if (!ExpectPositional(1, "one job id")) return kExitUsage;
  absl::StatusOr<v1::RefreshAnalysisResponse> refreshed =
      client_->RefreshAnalysis(inv_.positional[0]);
  if (!refreshed.ok()) return Fail(refreshed.status());
  const v1::Job& job = refreshed->job();
  if (inv_.json) {
    out_ << ToJson(job) << "\n";
    return kExitOk;
  }
  const v1::FollowStatus& follow = job.follow();
  if (follow.refresh_pending()) {
    out_ << job.job_id() << ": a provisional analysis round starts after round "
         << follow.analysis_round() << " (running)\n";
  } else {
    out_ << job.job_id() << ": provisional analysis round "
         << follow.analysis_round() << " over " << follow.analysed_checkpoints()
         << " checkpoints " << (follow.analysis_running() ? "running" : "done")
         << "\n";
  }
  return kExitOk;
}

// 0 for a job that succeeded; else prints why it ended and returns 1.
int Cli::JobExit(const v1::Job& job) {
  if (job.state() == v1::JOB_STATE_SUCCEEDED) return kExitOk;
  err_ << "saetrack: job " << job.job_id() << " " << StateName(job.state())
       << (job.error().empty() ? "" : ": " + job.error()) << "\n";
  return kExitFailure;
}

// Prints `line` unless it repeats the last one: in place on a terminal.
void Cli::ShowProgress(const std::string& line, std::string* last_line) {
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
absl::StatusOr<v1::Job> Cli::Follow(
    const std::string& job_id,
    const std::function<void(const v1::JobUpdate&)>& show) {
  const absl::Time deadline = inv_.timeout_s > 0
                                  ? absl::Now() + absl::Seconds(inv_.timeout_s)
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

void Cli::EndProgress(const std::string& last_line) {
  if (err_is_terminal_ && !last_line.empty()) err_ << "\n";
}

int Cli::Status() {
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
       << "  hooks: " << absl::StrJoin(layers, ", ") << "\n"
       << FormatFollowStatus(*job, absl::Now());
  return kExitOk;
}

int Cli::List() {
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

}  // namespace internal

}  // namespace saetrack::client
