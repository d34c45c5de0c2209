#include "client/cli.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "analysis/findings.h"
#include "client/client.h"
#include "client/internal/cli_commands.h"
#include "client/job_file.h"
#include "client/output.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "format/saelens.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/saelens_config.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/admin.grpc.pb.h"

namespace saetrack::client {
namespace internal {

int Cli::Run() {
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

int Cli::Usage(const std::string& reason) {
  err_ << "saetrack: " << reason << " (see saetrack --help)\n";
  return kExitUsage;
}

int Cli::Fail(const absl::Status& status) {
  err_ << "saetrack: " << absl::StatusCodeToString(status.code()) << ": "
       << status.message() << "\n";
  return kExitFailure;
}

// Checks the number of positional arguments; `what` names them for the
// message.
bool Cli::ExpectPositional(size_t n, const std::string& what) {
  if (inv_.positional.size() == n) return true;
  Usage(absl::StrCat(inv_.command, " takes ", what));
  return false;
}

}  // namespace internal

using internal::Cli;
using internal::Invocation;
using internal::ParseArgs;
using internal::UsageText;

std::string CliUsage() { return UsageText(); }

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
