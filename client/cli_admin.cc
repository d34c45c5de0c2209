#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "client/internal/cli_commands.h"
#include "client/output.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "proto/access_tokens.h"
#include "proto/channel_security.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/admin.grpc.pb.h"

namespace saetrack::client {
namespace internal {
namespace {

// JSON string literal of `s` (token names and roles are plain ASCII; the
// token is hex).
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

// `admin backup --to NAME` (a backup under the coordinator's --backup_root),
// straight over an AdminService stub, and `admin token create`, which only
// writes a local file.
int Cli::Admin() {
  if (inv_.positional.size() == 2 && inv_.positional[0] == "token" &&
      inv_.positional[1] == "create") {
    return CreateToken();
  }
  if (inv_.positional.size() != 1 || inv_.positional[0] != "backup") {
    return Usage("admin takes one subcommand: backup, token create");
  }
  if (inv_.to_dir.empty()) return Usage("admin backup needs --to NAME");
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      NewSecureChannel(inv_.coordinator, inv_.security);
  if (!channel.ok()) return Fail(channel.status());
  auto stub = v1::AdminService::NewStub(*channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::hours(1));
  v1::BackupRequest request;
  request.set_name(inv_.to_dir);
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

int Cli::CreateToken() {
  if (inv_.role.empty()) return Usage("admin token create needs --role");
  if (inv_.name.empty()) return Usage("admin token create needs --name");
  if (inv_.security.token_file.empty()) {
    return Usage(
        "admin token create needs --token_file (the coordinator's token "
        "file to append to)");
  }
  absl::StatusOr<std::string> token =
      CreateAccessToken(inv_.security.token_file, inv_.role, inv_.name);
  if (!token.ok()) return Fail(token.status());
  if (inv_.json) {
    out_ << "{\"name\":" << JsonString(inv_.name)
         << ",\"role\":" << JsonString(inv_.role)
         << ",\"token\":" << JsonString(*token) << "}\n";
    return kExitOk;
  }
  out_ << *token << "\n";
  err_ << absl::StrFormat(
      "saetrack: created %s token '%s' in %s; it is shown only now (the file "
      "keeps its SHA-256). Restart the coordinator to load it.\n",
      inv_.role, inv_.name, inv_.security.token_file);
  return kExitOk;
}

}  // namespace internal

}  // namespace saetrack::client
