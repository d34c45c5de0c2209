// The recurrent-initialisation speed-up of a finished (or running) job,
// measured on its own chain (DESIGN.md §3, §9): for a checkpoint `step` of
// the chain, how many tokens an SAE initialised from the job's stored SAE of
// the previous checkpoint needs to reach the held-out FVU that an SAE trained
// from scratch on `step` reaches with the job's first-SAE budget, against the
// tokens the from-scratch SAE needed (the paper: >= 20x fewer).
//
// Both SAEs use the job's own settings: architecture, sparsity, batch size
// and seed; the from-scratch one the first SAE's learning rate, warm-up and
// token budget, the recurrent one the later SAEs' learning rate and warm-up.
// Held-out FVU is measured on the job's held-out positions, so the target is
// comparable with the job's stored metrics (shown next to it: the FVU the
// job's own later SAE reached with its tokens_later).
//
// Runs on the client side (LibTorch, the job's model and token files must be
// readable here); the coordinator only serves the job spec, the stored SAEs
// and the metrics, all through its public services (JobService,
// QueryService: the SAEs come as SAELens files from ExportSae, read with
// engine::ImportSaelens; never WorkerService, which is for workers). Used by
// `saetrack-recurrence` and the demo's report.
#ifndef SAETRACK_TOOLS_RECURRENCE_REPORT_H_
#define SAETRACK_TOOLS_RECURRENCE_REPORT_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "engine/recurrence/recurrence_study.h"

namespace saetrack::tools {

// The paper's claim: >= 20x fewer tokens to the from-scratch FVU.
inline constexpr double kPaperRecurrenceSpeedup = 20;

struct RecurrenceReportOptions {
  // Hooked layer of the job; -1: its first hook.
  int layer = -1;
  // Checkpoint steps to study; each must be in the job's chain and not its
  // first checkpoint (which has no previous SAE). Empty: three of them — the
  // chain's second checkpoint, its middle one and its last.
  std::vector<int64_t> steps;
  // Token budget of each from-scratch SAE; 0: the job's
  // schedule.tokens_first.
  int64_t scratch_tokens = 0;
  // Training activations collected per studied checkpoint (the SAEs cycle
  // over them); 0: min(scratch_tokens, 262,144).
  int64_t train_tokens = 0;
  // Held-out FVU every this many tokens: the resolution of the token
  // counts; 0: four batches.
  int64_t eval_every_tokens = 0;
  // "cpu" or "cuda".
  std::string device = "cpu";
};

struct RecurrencePair {
  int64_t prev_step = 0;
  int64_t step = 0;
  engine::TokensToFvuResult result;
  // The job's own SAE on `step` (GetCheckpointMetrics): its held-out FVU and
  // the tokens it trained; nullopt when the job has no metrics for it.
  std::optional<double> job_fvu;
  int64_t job_tokens = 0;
  double seconds = 0;
};

struct RecurrenceReport {
  std::string job_id;
  int layer = 0;
  std::string site;
  std::string architecture;
  // "l1 0.01" or "k 32".
  std::string sparsity;
  int64_t d_in = 0;
  int64_t d_sae = 0;
  int batch_size = 0;
  double lr_scratch = 0;
  double lr_recurrent = 0;
  int warmup_scratch = 0;
  int warmup_recurrent = 0;
  int64_t scratch_tokens = 0;
  int64_t train_tokens = 0;
  int64_t eval_tokens = 0;
  int64_t eval_every_tokens = 0;
  // The job's later-SAE budget (schedule.tokens_later).
  int64_t job_tokens_later = 0;
  std::vector<RecurrencePair> pairs;

  // Median of the pairs' speed-ups; a pair that never reached the target
  // counts as 0.
  double MedianSpeedup() const;
  // Pairs whose recurrent SAE never reached the target.
  int Never() const;
  // Whether every pair reached the target and the median is >= 20x.
  bool ClaimHolds() const;
};

// The steps studied by default: the chain's second checkpoint, the middle
// one and the last, in chain order (`chain_steps`: the job's checkpoint
// steps in chain order), without repeats; fewer for chains shorter than 4.
std::vector<int64_t> DefaultStudySteps(const std::vector<int64_t>& chain_steps);

// Measures the report for `job_id` through `client`. `progress` (may be
// empty) receives a line per stage. Errors: kInvalidArgument naming the
// option (a layer the job does not hook, a step not in its chain or its
// first, negative budgets); the coordinator's errors (kNotFound for an
// unknown job or an SAE not stored yet; kUnimplemented for a coordinator
// without ExportSae); kDataLoss for an export lacking cfg.json or
// sae_weights.safetensors; the SAELens reader's for files it rejects (with
// the SAE's step); kFailedPrecondition naming the step for an exported SAE
// whose architecture, k, d_in or d_sae is not the job's; the engine's for
// unreadable models or token files.
absl::StatusOr<RecurrenceReport> MeasureJobRecurrence(
    client::SaetrackClient& client, const std::string& job_id,
    const RecurrenceReportOptions& options,
    const std::function<void(const std::string&)>& progress);

// One plain sentence on the paper's claim, with the numbers.
std::string RecurrenceVerdict(const RecurrenceReport& report);

// The report as a table with a header and the verdict (ends in a newline).
std::string FormatRecurrenceReport(const RecurrenceReport& report);

// The report as one JSON object (no curves' weights; with the FVU curves).
std::string RecurrenceReportJson(const RecurrenceReport& report);

}  // namespace saetrack::tools

#endif  // SAETRACK_TOOLS_RECURRENCE_REPORT_H_
