// Bearer tokens and roles of the saetrack.v1 API, and the token file that
// stores them: one line per token holding the SHA-256 of the token (never the
// token itself), its role and its name:
//
//   # comment
//   sha256:<64 hex digits> <role> <name>
//
// The coordinator reads the file at start (--token_file); `saetrack admin
// token create` appends to it. Clients send a token as the gRPC metadata
// `authorization: Bearer <token>` (proto/channel_security.h).
#ifndef SAETRACK_PROTO_ACCESS_TOKENS_H_
#define SAETRACK_PROTO_ACCESS_TOKENS_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack {

// What a token may do (the method table is server/internal/auth.cc):
//   kReader:    QueryService, JobService.GetJob / ListJobs / WatchJob.
//   kSubmitter: reader + SubmitJob, CancelJob of the jobs it submitted.
//   kWorker:    WorkerService only.
//   kAdmin:     everything, AdminService, cancelling any job.
enum class Role { kReader, kSubmitter, kWorker, kAdmin };

// "reader", "submitter", "worker", "admin".
const char* RoleName(Role role);
// The inverse of RoleName. Errors: kInvalidArgument naming `name` and the
// roles there are.
absl::StatusOr<Role> ParseRole(std::string_view name);

// Lower-case hex SHA-256 of `data` (OpenSSL).
std::string Sha256Hex(std::string_view data);

struct AccessTokenEntry {
  // Lower-case hex SHA-256 of the token, 64 characters.
  std::string sha256_hex;
  Role role = Role::kReader;
  // Unique within a file: 1-64 characters of [A-Za-z0-9._@-].
  std::string name;
};

// The entries of one token file. Immutable after Load/Parse, so thread-safe.
class AccessTokenTable {
 public:
  AccessTokenTable() = default;

  // Reads and parses the token file at `path`. Errors: kNotFound /
  // kPermissionDenied naming the path when it cannot be read; those of
  // Parse.
  static absl::StatusOr<AccessTokenTable> Load(const std::string& path);
  // Parses token file `contents`; `path` only names the file in errors.
  // Errors: kInvalidArgument naming the file, the line number and what is
  // wrong (field count, hash, role, name, a name or hash given twice).
  static absl::StatusOr<AccessTokenTable> Parse(std::string_view contents,
                                                const std::string& path);

  // The entry whose hash is the SHA-256 of `token`, or nullopt. Compares
  // the hash with every entry in constant time (no early exit), so the time
  // taken does not reveal how much of a hash matched.
  std::optional<AccessTokenEntry> Find(std::string_view token) const;

  const std::vector<AccessTokenEntry>& entries() const { return entries_; }

 private:
  std::vector<AccessTokenEntry> entries_;
};

// Whether `name` may name a token: 1-64 characters of [A-Za-z0-9._@-].
bool IsValidTokenName(std::string_view name);

// Creates a token: 256 random bits (OpenSSL RAND_bytes) as 64 hex digits,
// appends its entry to the token file at `path` (created with mode 0600 when
// missing; locked with flock while read and appended, and synced) and
// returns the token, which is stored nowhere. Errors: kInvalidArgument for
// an unknown role (see ParseRole) or an invalid name, or when the file
// already holds `name` (nothing written); the errors of Parse for a
// malformed existing file; kInternal / kPermissionDenied naming the path for
// I/O errors.
absl::StatusOr<std::string> CreateAccessToken(const std::string& path,
                                              std::string_view role,
                                              std::string_view name);

}  // namespace saetrack

#endif  // SAETRACK_PROTO_ACCESS_TOKENS_H_
