// Authentication and roles of the coordinator's gRPC API.
//
// With a token file (CoordinatorOptions::token_file), every call except the
// open ones (grpc.health.v1 and server reflection) must carry
// `authorization: Bearer <token>`; Authenticator's processor checks it before
// the call reaches a handler:
//   no or malformed token, or one not in the file  -> UNAUTHENTICATED
//   a role the method table does not allow         -> PERMISSION_DENIED
// The table from full method name to allowed roles (auth.cc) is the one
// place where roles are decided. Handlers that need the caller's identity
// (JobService: who submitted a job, who may cancel it) ask CallerOf.
#ifndef SAETRACK_SERVER_INTERNAL_AUTH_H_
#define SAETRACK_SERVER_INTERNAL_AUTH_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/server_context.h"
#include "proto/access_tokens.h"

namespace saetrack::server {

// Who made a call.
struct Caller {
  // False when the coordinator runs without a token file (then every call
  // is allowed, `name` is empty and `role` means nothing).
  bool authenticated = false;
  // The token's name from the token file.
  std::string name;
  Role role = Role::kReader;
};

// Whether `method` ("/package.Service/Method") is open to anyone: the
// health service and server reflection.
bool IsOpenMethod(std::string_view method);

// The access decision for `role` calling `method`. OK for an open method
// (whatever the role); kUnauthenticated for any other method without a role;
// kPermissionDenied naming the role and the method when the table does not
// allow it, or does not know the method.
absl::Status CheckAccess(std::string_view method, std::optional<Role> role);

// Every method of the table (for tests that check each one).
std::vector<std::string> ProtectedMethods();

// Checks the bearer tokens of calls against one token file. Immutable after
// construction, so thread-safe.
class Authenticator {
 public:
  explicit Authenticator(AccessTokenTable tokens)
      : tokens_(std::move(tokens)) {}

  // The decision for a call of `method` whose metadata `authorization` is
  // `header` (nullopt: absent): the caller's entry (nullopt for an open
  // method), kUnauthenticated without a known "Bearer <token>", or
  // CheckAccess's kPermissionDenied.
  absl::StatusOr<std::optional<AccessTokenEntry>> Authorize(
      std::string_view method, std::optional<std::string_view> header) const;

  // The caller of a call that passed the processor, from the call's own
  // metadata (gRPC 1.51 shares one AuthContext among the calls of a
  // connection, so nothing per call is kept there). A call whose token
  // cannot be resolved (only open methods) gives an authenticated caller
  // with an empty name and role reader, which owns nothing.
  Caller CallerOf(const grpc::ServerContextBase& context) const;

  // A processor applying Authorize to every call before it reaches a
  // handler. Refers to this Authenticator, which must outlive the server.
  // Non-blocking (a SHA-256 and a scan of the table on the transport's
  // thread).
  std::shared_ptr<grpc::AuthMetadataProcessor> NewProcessor() const;

 private:
  const AccessTokenTable tokens_;
};

// The caller of the call `context` belongs to (a ServerContext or a
// CallbackServerContext): authenticator->CallerOf(context), or, when
// `authenticator` is null (no token file), a caller with authenticated =
// false. Cheap; thread-safe.
Caller CallerOf(const Authenticator* authenticator,
                const grpc::ServerContextBase& context);

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_AUTH_H_
