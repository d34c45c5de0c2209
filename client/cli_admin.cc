
#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "client/internal/cli_commands.h"
#include "client/output.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/admin.grpc.pb.h"

namespace saetrack::client {
namespace internal {

// `admin backup --to NAME` (a backup under the coordinator's --backup_root),
// straight over an AdminService stub.
int Cli::Admin() {
  if (inv_.positional.size() != 1 || inv_.positional[0] != "backup") {
    return Usage("admin takes one subcommand: backup");
  }
  if (inv_.to_dir.empty()) return Usage("admin backup needs --to NAME");
  auto stub = v1::AdminService::NewStub(grpc::CreateChannel(
      inv_.coordinator, grpc::InsecureChannelCredentials()));
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

}  // namespace internal

}  // namespace saetrack::client
