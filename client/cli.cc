#include "client/cli.h"

#include <cstdlib>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/internal/cli_commands.h"
#include "proto/channel_security.h"

namespace saetrack::client {
namespace internal {

int Cli::Run() {
  if (inv_.command == "submit") return Submit();
  if (inv_.command == "status") return Status();
  if (inv_.command == "list") return List();
  if (inv_.command == "watch") return Watch();
  if (inv_.command == "cancel") return Cancel();
  if (inv_.command == "close") return Close();
  if (inv_.command == "add-checkpoint") return AddCheckpoint();
  if (inv_.command == "refresh") return Refresh();
  if (inv_.command == "metrics") return Metrics();
  if (inv_.command == "quality") return Quality();
  if (inv_.command == "feature") return Feature();
  if (inv_.command == "features") return Features();
  if (inv_.command == "drift") return Drift();
  if (inv_.command == "findings") return Findings();
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
  // `admin token create` writes the coordinator's token file, never reads a
  // client's bearer token.
  const bool creates_token = inv->command == "admin" &&
                             !inv->positional.empty() &&
                             inv->positional[0] == "token";
  if (!creates_token) {
    if (inv->security.token_file.empty()) {
      if (const char* env = std::getenv("SAETRACK_TOKEN_FILE")) {
        inv->security.token_file = env;
      }
    }
    // Unreadable security files are reported once, before any call.
    if (absl::StatusOr<LoadedChannelSecurity> loaded =
            LoadChannelSecurity(inv->security);
        !loaded.ok()) {
      err << "saetrack: " << loaded.status().message() << "\n";
      return kExitFailure;
    }
  }
  return Cli(*inv, out, err, err_is_terminal, make_client).Run();
}

int RunCli(const std::vector<std::string>& args, std::ostream& out,
           std::ostream& err, bool err_is_terminal) {
  return RunCli(args, out, err, err_is_terminal, &SaetrackClient::Create);
}

}  // namespace saetrack::client
