// The `saetrack` command line: submit jobs, follow them, and query their
// results. Kept apart from main() so that tests drive it in-process.
#ifndef SAETRACK_CLIENT_CLI_H_
#define SAETRACK_CLIENT_CLI_H_

#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "client/client.h"
#include "saetrack/v1/query.pb.h"

namespace saetrack::client {

// Exit codes of the CLI.
inline constexpr int kExitOk = 0;
// The request failed (RPC error, bad job file), or a waited-for job ended
// FAILED or CANCELLED.
inline constexpr int kExitFailure = 1;
// The command line itself is wrong.
inline constexpr int kExitUsage = 2;

// Runs one invocation; `args` excludes the program name. Results go to `out`,
// progress and errors to `err` (errors as one line: "saetrack: ..."). When
// `err_is_terminal`, progress lines rewrite themselves in place.
int RunCli(const std::vector<std::string>& args, std::ostream& out,
           std::ostream& err, bool err_is_terminal);

// Makes the client the commands use, from the coordinator address of the
// command line.
using ClientFactory =
    std::function<std::unique_ptr<SaetrackClient>(const ClientOptions&)>;

// As above, with the client made by `make_client` (SaetrackClient::Create in
// the overload above); tests pass a fake. Not called for --help or when
// the flags do not parse.
int RunCli(const std::vector<std::string>& args, std::ostream& out,
           std::ostream& err, bool err_is_terminal,
           const ClientFactory& make_client);

// The --help text.
std::string CliUsage();

// The table `saetrack metrics` prints without --json: a header line and one
// line per checkpoint.
std::string FormatCheckpointMetrics(
    const v1::GetCheckpointMetricsResponse& metrics);

// A Unicode sparkline of `values`: per value one of ▁▂▃▄▅▆▇█, scaled
// linearly between the smallest (▁) and the largest (█) value present and
// rounded to the nearest bar; ▄ for every value when they are all equal; a
// space for an absent or non-finite value. `saetrack feature` and `saetrack
// drift` print them.
std::string Sparkline(const std::vector<std::optional<double>>& values);

}  // namespace saetrack::client

#endif  // SAETRACK_CLIENT_CLI_H_
