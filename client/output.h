// The CLI's output: tables, sparklines, human-readable numbers and JSON of
// the `saetrack` commands (shared by client/cli*.cc).
#ifndef SAETRACK_CLIENT_OUTPUT_H_
#define SAETRACK_CLIENT_OUTPUT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "analysis/findings.h"
#include "google/protobuf/message.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"

namespace saetrack::client::internal {

// Contexts `feature --contexts` prints per checkpoint (--json has them all).
inline constexpr int kContextsShown = 5;
// Promoted and suppressed tokens `feature` prints per checkpoint (--json
// has them all).
inline constexpr int kLogitEffectsShown = 5;
// Decoder values `feature --decoder` prints per checkpoint.
inline constexpr int kDecoderValuesShown = 8;

std::string ToJson(const google::protobuf::Message& message);

// Proto JSON on one line.
std::string ToJsonLine(const google::protobuf::Message& message);

std::string StateName(v1::JobState state);

bool IsTerminal(v1::JobState state);

std::string HumanCount(int64_t n);

std::string HumanRate(double per_second);

std::string HumanDuration(int64_t seconds);

// A time as the CLI prints it, in UTC: "2026-12-04 20:21:00 UTC".
std::string HumanTime(int64_t unix_ms);

// `then` (Unix milliseconds) as seen at `now`: "<HumanTime> (<duration>
// ago)".
std::string TimeAndAgo(int64_t then_ms, absl::Time now);

// Whether the job follows a training run (spec.model.follow or Job.follow).
bool IsFollowing(const v1::Job& job);

// A following job's state in words, as of `now`: "waiting for step > 32
// since 12s" (for the first checkpoint before any), "training", "closed
// (<reason>)".
std::string FollowStateText(const v1::FollowStatus& follow, absl::Time now);

// "following: <FollowStateText>, <n> checkpoints taken, <m> stored": the
// follow part of the progress lines of `submit --wait` and `watch`.
std::string FollowProgress(const v1::FollowStatus& follow, absl::Time now);

// The line `saetrack watch` prints for one update; for a following job
// with FollowProgress appended.
std::string WatchLine(const v1::JobUpdate& update, absl::Time now);

// "<job id> <STATE>: <done>/<total> SAEs trained, <n> tokens", then
// ", submitted by <name>" when the job records a submitter, then the error
// in parentheses when there is one. A following job's state reads
// "running (following)" (or "(following closed)" until the job ends).
std::string ProgressLine(const v1::Job& job);

// The "follow:" section of `saetrack status` (indented lines) for a
// following job as of `now`: where it looks for checkpoints, its state,
// the last step taken, checkpoints taken and stored with the lag of the
// last one stored, the refused checkpoints and the analysis round. Empty
// for a job that does not follow.
std::string FormatFollowStatus(const v1::Job& job, absl::Time now);

// "-" for an absent value, else the value with three decimals.
std::string Fixed3(bool present, double value);

std::string KindName(v1::FeatureKind kind);

// Text on one line: line breaks and tabs written as escapes.
std::string OneLine(const std::string& text);

// A token id with its text when the job has a tokenizer: 262 " the".
std::string TokenLabel(int32_t token, const std::string& text);

// A context as `feature --contexts` prints it: the decoded text, else the
// window's token ids, the focus token between [[ and ]].
std::string ContextLabel(const v1::FeatureContext& context);

// The smallest and the largest finite value present in `values`; nullopt
// for none.
std::optional<std::pair<double, double>> FiniteRange(
    const std::vector<std::optional<double>>& values);

// One labelled sparkline with the range it spans, or nothing when no value
// is present.
std::string SparklineRow(const std::string& label,
                         const std::vector<std::optional<double>>& values);

// The summary lines of `saetrack feature`.
std::string FormatFeatureSummary(const v1::FeatureSummary& summary);

// `saetrack feature` without --json.
// Logit effects print for the first and the final checkpoint, or for every
// checkpoint with `logits`; kLogitEffectsShown of each side.
std::string FormatFeatureHistory(const v1::FeatureHistory& history,
                                 bool contexts, bool decoder,
                                 bool logits = false);

// `saetrack features` without --json.
std::string FormatFeatureList(const v1::ListFeaturesResponse& list);

// The inputs of the paper's three drift findings (analysis/findings.h) from
// `drift`.
analysis::FindingsInput FindingsInputOf(const v1::DriftSummary& drift);

// `saetrack drift` without --json.
std::string FormatDriftSummary(const v1::DriftSummary& drift);

// `saetrack quality` without --json: per reference checkpoint the chain's
// SAE beside the independent one, then one line per verdict.
std::string FormatQualityChecks(const v1::GetQualityChecksResponse& checks);

}  // namespace saetrack::client::internal

#endif  // SAETRACK_CLIENT_OUTPUT_H_
