// What the files of the `saetrack` CLI share (client/cli*.cc): the parsed
// command line, its parser (CLI11, in cli_args.cc), and class Cli, whose
// commands are defined one command group per file: cli.cc (dispatch),
// cli_jobs.cc, cli_queries.cc, cli_findings.cc, cli_export.cc,
// cli_admin.cc.
#ifndef SAETRACK_CLIENT_INTERNAL_CLI_COMMANDS_H_
#define SAETRACK_CLIENT_INTERNAL_CLI_COMMANDS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cli.h"
#include "client/client.h"
#include "format/saelens.h"
#include "proto/channel_security.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"

namespace saetrack::client::internal {

// How often `submit --wait` and `watch` poll a coordinator without WatchJob,
// and how long they wait before reconnecting to one that went away.
inline constexpr absl::Duration kWaitPollInterval = absl::Milliseconds(300);

// The largest page `features --limit` asks for (ListFeaturesRequest.page_size
// is at most 10000).
inline constexpr int kMaxFeaturesPage = 10000;

struct Invocation {
  std::string command;
  std::vector<std::string> positional;
  std::string coordinator = "127.0.0.1:7070";
  // --token_file, --tls_ca, --tls_cert, --tls_key, --tls_server_name. For
  // `admin token create`, token_file is the coordinator's token file to
  // append to instead.
  ChannelSecurity security;
  // admin token create
  std::string role;
  std::string name;
  bool json = false;
  bool wait = false;
  bool help = false;
  std::optional<int> layer;
  std::optional<int> feature_id;
  std::optional<int64_t> step;
  // add-checkpoint --path, as given (made absolute by the command).
  std::string checkpoint_path;
  std::string out_dir;
  std::string to_dir;
  std::string request_id;
  double timeout_s = 0;  // 0: wait forever
  // feature
  bool contexts = false;
  bool decoder = false;
  // feature: logit effects of every checkpoint, not only the first and final.
  bool logits = false;
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

// One replicate run of `saetrack findings`: a job's answers at one layer.
struct FindingsRun {
  std::string job_id;
  uint64_t seed = 0;
  int layer = 0;
  v1::DriftSummary drift;
  v1::GetQualityChecksResponse quality;
};

// What `saetrack findings` prints: one row per measured number (a column
// per run, then the median and range over the runs), then each finding's
// verdicts counted over the runs and the speed-ups over every measured
// link. With --json, the same as one object (FindingsOverRunsJson).
std::string FormatFindingsOverRuns(const std::vector<FindingsRun>& runs);
std::string FindingsOverRunsJson(const std::vector<FindingsRun>& runs);

// The --help text.
std::string UsageText();

// The command line (without the program name) as an Invocation. Errors:
// kInvalidArgument with the message the CLI prints.
absl::StatusOr<Invocation> ParseArgs(const std::vector<std::string>& args);

class Cli {
 public:
  Cli(const Invocation& inv, std::ostream& out, std::ostream& err,
      bool err_is_terminal, const ClientFactory& make_client)
      : inv_(inv), out_(out), err_(err), err_is_terminal_(err_is_terminal) {
    ClientOptions options;
    options.coordinator = inv.coordinator;
    options.security = inv.security;
    client_ = make_client(options);
  }

  int Run();

 private:
  int Usage(const std::string& reason);
  int Fail(const absl::Status& status);

  // Checks the number of positional arguments; `what` names them for the
  // message.
  bool ExpectPositional(size_t n, const std::string& what);
  int Submit();
  int Wait(const std::string& job_id);
  int Watch();
  int Cancel();
  // Follow mode: close, add-checkpoint, refresh.
  int Close();
  int AddCheckpoint();
  int Refresh();

  // 0 for a job that succeeded; else prints why it ended and returns 1.
  int JobExit(const v1::Job& job);

  // Prints `line` unless it repeats the last one: in place on a terminal.
  void ShowProgress(const std::string& line, std::string* last_line);

  // Follows the job until it ends, calling `show` with every update, and
  // returns it in its terminal state. Streams JobService.WatchJob; polls
  // GetJob when the coordinator lacks it. Reconnects while the coordinator
  // is unavailable. Errors: kDeadlineExceeded past --timeout_s, the
  // coordinator's.
  absl::StatusOr<v1::Job> Follow(
      const std::string& job_id,
      const std::function<void(const v1::JobUpdate&)>& show);
  void EndProgress(const std::string& last_line);
  int Status();
  int List();
  bool ExpectLayer();
  int Metrics();
  int Quality();
  int Feature();
  int Features();
  int Drift();
  int Findings();

  // Writes the SAE as QueryService.ExportSae streams it; through
  // DownloadSae and a cfg.json of its own (ExportLocally) when the
  // coordinator lacks ExportSae.
  int Export();

  // Checks that `files` hold a SAELens directory whose cfg.json parses and
  // writes them into --out (created if needed; each file atomically, the
  // cfg.json last so that a reader finding it finds the weights too).
  // Returns the parsed config. Nothing is written when a file is missing or
  // the cfg.json does not parse.
  absl::StatusOr<format::SaelensConfig> WriteExportedFiles(
      const std::map<std::string, std::string>& files) const;

  // `export` against a coordinator without QueryService.ExportSae: the
  // weights through WorkerService.DownloadSae, the cfg.json from the job's
  // spec.
  int ExportLocally(const v1::CheckpointMetrics& sae);

  // What `export` prints once `files` (names) of chain entry `sae` are in
  // --out.
  void PrintExported(const format::SaelensConfig& cfg,
                     const v1::CheckpointMetrics& sae,
                     const std::vector<std::string>& files);

  // `admin backup --to DIR`, straight over an AdminService stub.
  int Admin();
  // admin token create --role R --name N --token_file F.
  int CreateToken();

  // The chain entry `export` writes: the one of --step, or without it the
  // last one trained (the highest chain index).
  absl::StatusOr<v1::CheckpointMetrics> FindSae(
      const v1::GetCheckpointMetricsResponse& metrics) const;

  const Invocation& inv_;
  std::ostream& out_;
  std::ostream& err_;
  const bool err_is_terminal_;
  std::unique_ptr<SaetrackClient> client_;
};

}  // namespace saetrack::client::internal

#endif  // SAETRACK_CLIENT_INTERNAL_CLI_COMMANDS_H_
