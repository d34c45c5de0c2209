// saetrack-recurrence: the recurrent-initialisation speed-up of a job,
// measured on its own chain (worker/recurrence_report.h).
#include <torch/torch.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "client/client.h"
#include "tools/recurrence_report.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7070",
          "host:port of the coordinator");
ABSL_FLAG(int, layer, -1, "Hooked layer of the job (default: its first hook)");
ABSL_FLAG(std::vector<std::string>, steps, {},
          "Checkpoint steps to study, comma-separated, each with a previous "
          "checkpoint in the chain (default: the chain's second, middle and "
          "last)");
ABSL_FLAG(int64_t, scratch_tokens, 0,
          "Token budget of each from-scratch SAE (default: the job's "
          "schedule.tokens_first)");
ABSL_FLAG(int64_t, train_tokens, 0,
          "Training activations collected per studied checkpoint, cycled "
          "over (default: min(scratch_tokens, 262144))");
ABSL_FLAG(int64_t, eval_every, 0,
          "Held-out FVU every this many training tokens, the resolution of "
          "the token counts (default: four batches)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads on CPU");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of the table");
ABSL_FLAG(std::string, json_out, "",
          "Also write the JSON object to this file (with the table printed)");

namespace {

constexpr char kUsage[] = R"(Usage: saetrack-recurrence [flags] JOB_ID

Measures the recurrent-initialisation speed-up of a job on its own chain: for
a few checkpoints, the tokens an SAE initialised from the job's stored SAE of
the previous checkpoint needs to reach the held-out FVU of an SAE trained from
scratch on that checkpoint with the job's first-SAE budget, against the tokens
the from-scratch SAE needed (the paper claims >= 20x fewer). The job's model
and token files must be readable here. Progress goes to stderr.

Exit status: 0 measured (whatever the verdict), 1 an error, 2 a usage error.)";

int UsageError(const std::string& message) {
  std::cerr << "saetrack-recurrence: " << message
            << "\nRun saetrack-recurrence --help for usage.\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // --help lists this file's flags (absl matches on the program name
  // otherwise, which differs from the file's).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "tools/recurrence_main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) return UsageError("expected one JOB_ID");
  const std::string job_id = args[1];

  saetrack::tools::RecurrenceReportOptions options;
  options.layer = absl::GetFlag(FLAGS_layer);
  for (const std::string& part : absl::GetFlag(FLAGS_steps)) {
    int64_t step = 0;
    if (!absl::SimpleAtoi(part, &step) || step < 0) {
      return UsageError("--steps: \"" + part + "\" is not a step");
    }
    options.steps.push_back(step);
  }
  options.scratch_tokens = absl::GetFlag(FLAGS_scratch_tokens);
  options.train_tokens = absl::GetFlag(FLAGS_train_tokens);
  options.eval_every_tokens = absl::GetFlag(FLAGS_eval_every);
  options.device = absl::GetFlag(FLAGS_device);
  if (options.scratch_tokens < 0) return UsageError("--scratch_tokens < 0");
  if (options.train_tokens < 0) return UsageError("--train_tokens < 0");
  if (options.eval_every_tokens < 0) return UsageError("--eval_every < 0");
  if (absl::GetFlag(FLAGS_threads) <= 0) return UsageError("--threads <= 0");
  torch::set_num_threads(absl::GetFlag(FLAGS_threads));

  saetrack::client::ClientOptions client_options;
  client_options.coordinator = absl::GetFlag(FLAGS_coordinator);
  const std::unique_ptr<saetrack::client::SaetrackClient> client =
      saetrack::client::SaetrackClient::Create(client_options);
  absl::StatusOr<saetrack::tools::RecurrenceReport> report =
      saetrack::tools::MeasureJobRecurrence(
          *client, job_id, options, [](const std::string& line) {
            std::cerr << "saetrack-recurrence: " << line << "\n";
          });
  if (!report.ok()) {
    std::cerr << "saetrack-recurrence: " << report.status() << "\n";
    return 1;
  }
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream file(json_out, std::ios::trunc);
    file << saetrack::tools::RecurrenceReportJson(*report);
    if (!file.flush()) {
      std::cerr << "saetrack-recurrence: --json_out: cannot write " << json_out
                << "\n";
      return 1;
    }
  }
  std::cout << (absl::GetFlag(FLAGS_json)
                    ? saetrack::tools::RecurrenceReportJson(*report)
                    : saetrack::tools::FormatRecurrenceReport(*report));
  return 0;
}
