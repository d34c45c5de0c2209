#include "proto/access_tokens.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace saetrack {
namespace {

constexpr absl::string_view kHashPrefix = "sha256:";
constexpr size_t kHashHexChars = 64;
constexpr size_t kMaxNameChars = 64;
constexpr int kTokenBytes = 32;  // 256 bits.

std::string Hex(const unsigned char* data, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 0xf];
  }
  return out;
}

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

absl::Status ErrnoStatus(const std::string& what, const std::string& path,
                         int err) {
  const std::string message =
      absl::StrCat(what, " ", path, ": ", strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(message);
  }
  return absl::InternalError(message);
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kSubmitter:
      return "submitter";
    case Role::kWorker:
      return "worker";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

absl::StatusOr<Role> ParseRole(std::string_view name) {
  for (Role role :
       {Role::kReader, Role::kSubmitter, Role::kWorker, Role::kAdmin}) {
    if (name == RoleName(role)) return role;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("role: '", std::string(name),
                   "' is not one of reader, submitter, worker, admin"));
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  return Hex(digest, size);
}

bool IsValidTokenName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameChars) return false;
  for (char c : name) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
          c == '_' || c == '@' || c == '-')) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<AccessTokenTable> AccessTokenTable::Load(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus("token_file: cannot read", path, errno);
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return ErrnoStatus("token_file: cannot read", path, errno);
  return Parse(contents.str(), path);
}

absl::StatusOr<AccessTokenTable> AccessTokenTable::Parse(
    std::string_view contents, const std::string& path) {
  AccessTokenTable table;
  std::set<std::string, std::less<>> names;
  std::set<std::string, std::less<>> hashes;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(
           absl::string_view(contents.data(), contents.size()), '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    const auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_file ", path, " line ", line_number, ": ", what));
    };
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 3) {
      return error(absl::StrCat("expected 'sha256:<hex> <role> <name>', found ",
                                fields.size(), " field(s)"));
    }
    AccessTokenEntry entry;
    const absl::string_view hash = fields[0];
    if (!absl::StartsWith(hash, kHashPrefix) ||
        hash.size() != kHashPrefix.size() + kHashHexChars ||
        !IsLowerHex(hash.substr(kHashPrefix.size()))) {
      return error(
          "hash: expected 'sha256:' and 64 lower-case hex digits (the file "
          "stores token hashes, never tokens)");
    }
    entry.sha256_hex = std::string(hash.substr(kHashPrefix.size()));
    absl::StatusOr<Role> role =
        ParseRole(std::string_view(fields[1].data(), fields[1].size()));
    if (!role.ok()) return error(role.status().message());
    entry.role = *role;
    if (!IsValidTokenName(
            std::string_view(fields[2].data(), fields[2].size()))) {
      return error(absl::StrCat("name: '", fields[2], "' must be 1-",
                                kMaxNameChars,
                                " characters of [A-Za-z0-9._@-]"));
    }
    entry.name = std::string(fields[2]);
    if (!names.insert(entry.name).second) {
      return error(absl::StrCat("name: '", entry.name, "' given twice"));
    }
    if (!hashes.insert(entry.sha256_hex).second) {
      return error("hash: the same token given twice");
    }
    table.entries_.push_back(std::move(entry));
  }
  return table;
}

std::optional<AccessTokenEntry> AccessTokenTable::Find(
    std::string_view token) const {
  const std::string hash = Sha256Hex(token);
  const AccessTokenEntry* found = nullptr;
  for (const AccessTokenEntry& entry : entries_) {
    // Every entry is compared in full, whatever matched before.
    if (entry.sha256_hex.size() == hash.size() &&
        CRYPTO_memcmp(entry.sha256_hex.data(), hash.data(), hash.size()) == 0) {
      found = &entry;
    }
  }
  if (found == nullptr) return std::nullopt;
  return *found;
}

absl::StatusOr<std::string> CreateAccessToken(const std::string& path,
                                              std::string_view role_name,
                                              std::string_view name_view) {
  const std::string name(name_view);
  absl::StatusOr<Role> role = ParseRole(role_name);
  if (!role.ok()) return role.status();
  if (!IsValidTokenName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: '", name, "' must be 1-", kMaxNameChars,
                     " characters of [A-Za-z0-9._@-]"));
  }
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC,
                      S_IRUSR | S_IWUSR);
  if (fd < 0) return ErrnoStatus("token_file: cannot open", path, errno);
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  if (flock(fd, LOCK_EX) != 0) {
    return ErrnoStatus("token_file: cannot lock", path, errno);
  }
  std::string contents;
  char buffer[4096];
  while (true) {
    const ssize_t n = pread(fd, buffer, sizeof(buffer), contents.size());
    if (n < 0) return ErrnoStatus("token_file: cannot read", path, errno);
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
  }
  absl::StatusOr<AccessTokenTable> table =
      AccessTokenTable::Parse(contents, path);
  if (!table.ok()) return table.status();
  for (const AccessTokenEntry& entry : table->entries()) {
    if (entry.name == name) {
      return absl::InvalidArgumentError(
          absl::StrCat("name: '", name, "' already has a token in ", path,
                       " (remove its line to replace it)"));
    }
  }
  unsigned char random[kTokenBytes];
  if (RAND_bytes(random, kTokenBytes) != 1) {
    return absl::InternalError("cannot draw random bytes (RAND_bytes)");
  }
  std::string token = Hex(random, kTokenBytes);
  std::string line;
  if (!contents.empty() && contents.back() != '\n') line = "\n";
  absl::StrAppend(&line, kHashPrefix, Sha256Hex(token), " ", RoleName(*role),
                  " ", name, "\n");
  if (write(fd, line.data(), line.size()) !=
      static_cast<ssize_t>(line.size())) {
    return ErrnoStatus("token_file: cannot write", path, errno);
  }
  if (fsync(fd) != 0) {
    return ErrnoStatus("token_file: cannot sync", path, errno);
  }
  return token;
}

}  // namespace saetrack
