#include "server/internal/checkpoint_scanner.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <memory>
#include <queue>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/absl_compat.h"
#include "format/json.h"

namespace saetrack::server {
namespace {

constexpr std::string_view kStepPlaceholder = "{step}";
constexpr char kPatternField[] = "spec.model.follow.pattern";
constexpr char kConfigFile[] = "config.json";
constexpr char kSingleWeightsFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";
// The header entry that is not a tensor (see format/safetensors.h).
constexpr char kMetadataKey[] = "__metadata__";
// A safetensors file starts with its header length, little-endian.
constexpr int64_t kHeaderLengthBytes = 8;

// Owns a file descriptor; closes it on destruction. Move-only.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

struct DirCloser {
  void operator()(DIR* listing) const { ::closedir(listing); }
};

// strerror() is not thread-safe; the follower threads of several jobs scan
// at once.
std::string ErrnoText(int error) {
  return std::generic_category().message(error);
}

int64_t MtimeNs(const struct stat& info) {
  return static_cast<int64_t>(info.st_mtim.tv_sec) * 1'000'000'000 +
         info.st_mtim.tv_nsec;
}

const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symlink";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

// Why a checkpoint is not complete: the message is the pending reason.
absl::Status NotReady(absl::string_view reason) {
  return absl::FailedPreconditionError(reason);
}

// Reads exactly `n` bytes at `offset`. A short read means the file shrank
// since it was stat'ed: it is being rewritten.
absl::Status ReadExactly(int fd, const std::string& name, int64_t offset,
                         size_t n, char* out) {
  size_t done = 0;
  while (done < n) {
    const ssize_t got =
        ::pread(fd, out + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return NotReady(absl::StrCat(name, ": ", ErrnoText(errno)));
    }
    if (got == 0) {
      return NotReady(absl::StrCat(name, ": shrank while being read"));
    }
    done += static_cast<size_t>(got);
  }
  return absl::OkStatus();
}

}  // namespace

// Examines the files of one checkpoint directory (already open), recording
// the stamp of each file it opens. Not thread-safe; lives for one check.
class CheckpointScanner::DirectoryCheck {
 public:
  explicit DirectoryCheck(int dir_fd) : dir_fd_(dir_fd) {}

  // OK when config.json and every safetensors file are whole; otherwise the
  // status message is the first problem found, naming the file.
  absl::Status Run() {
    absl::StatusOr<format::JsonValue> config = ReadJson(kConfigFile);
    if (!config.ok()) return config.status();

    std::set<std::string> weight_files;
    struct stat info;
    if (::fstatat(dir_fd_, kSingleWeightsFile, &info, AT_SYMLINK_NOFOLLOW) ==
        0) {
      weight_files.insert(kSingleWeightsFile);
    } else if (errno != ENOENT) {
      return NotReady(absl::StrCat(kSingleWeightsFile, ": ", ErrnoText(errno)));
    } else {
      if (::fstatat(dir_fd_, kIndexFile, &info, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) {
          return NotReady(absl::StrCat("no weights yet: neither ",
                                       kSingleWeightsFile, " nor ", kIndexFile,
                                       " exists"));
        }
        return NotReady(absl::StrCat(kIndexFile, ": ", ErrnoText(errno)));
      }
      absl::StatusOr<format::JsonValue> index = ReadJson(kIndexFile);
      if (!index.ok()) return index.status();
      const format::JsonValue* weight_map = index->Find("weight_map");
      if (weight_map == nullptr || !weight_map->is_object()) {
        return NotReady(absl::StrCat(
            kIndexFile,
            ": expected an object \"weight_map\" at the top level"));
      }
      for (const format::JsonValue::Member& member : weight_map->members()) {
        const format::JsonValue& shard = member.second;
        // Plain names beside the index only: the job validator refuses
        // anything else, so there is nothing to wait for.
        if (!shard.is_string() || shard.string_value().empty() ||
            shard.string_value().find('/') != std::string::npos ||
            shard.string_value() == "." || shard.string_value() == "..") {
          return NotReady(absl::StrCat(kIndexFile, ": weight_map entry \"",
                                       absl::CHexEscape(member.first),
                                       "\" is not a file name"));
        }
        weight_files.insert(shard.string_value());
      }
      if (weight_files.empty()) {
        return NotReady(absl::StrCat(kIndexFile, ": weight_map is empty"));
      }
    }
    for (const std::string& file : weight_files) {
      absl::Status status = CheckSafetensors(file);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

  // The stamps of the files opened by Run().
  DirectoryStamps& stamps() { return stamps_; }

 private:
  struct OpenedFile {
    ScopedFd fd;
    int64_t size = 0;
  };

  // Opens regular file `name` of the directory without following a symlink
  // or waiting on a FIFO, and records its stamp.
  absl::StatusOr<OpenedFile> OpenRegular(const std::string& name) {
    struct stat info;
    // The type is checked before opening: opening a device can have side
    // effects, whatever the flags.
    if (::fstatat(dir_fd_, name.c_str(), &info, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return NotReady(absl::StrCat(name, ": missing"));
      return NotReady(absl::StrCat(name, ": ", ErrnoText(errno)));
    }
    if (!S_ISREG(info.st_mode)) {
      return NotReady(absl::StrCat(name, " is ", FileTypeName(info.st_mode),
                                   ", expected a regular file"));
    }
    OpenedFile file{ScopedFd(
        ::openat(dir_fd_, name.c_str(),
                 O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY))};
    if (file.fd.get() < 0) {
      return NotReady(absl::StrCat(name, ": ", ErrnoText(errno)));
    }
    // Stat again through the descriptor: the name may have been replaced
    // since, and the stamp must describe what is read.
    if (::fstat(file.fd.get(), &info) != 0) {
      return NotReady(absl::StrCat(name, ": ", ErrnoText(errno)));
    }
    if (!S_ISREG(info.st_mode)) {
      return NotReady(absl::StrCat(name, " is ", FileTypeName(info.st_mode),
                                   ", expected a regular file"));
    }
    file.size = static_cast<int64_t>(info.st_size);
    stamps_[name] =
        FileStamp{file.size, MtimeNs(info), static_cast<uint64_t>(info.st_ino)};
    return file;
  }

  absl::StatusOr<format::JsonValue> ReadJson(const std::string& name) {
    absl::StatusOr<OpenedFile> file = OpenRegular(name);
    if (!file.ok()) return file.status();
    if (file->size > kMaxJsonFileBytes) {
      return NotReady(absl::StrCat(name, ": ", file->size,
                                   " bytes, more than the ", kMaxJsonFileBytes,
                                   " read"));
    }
    std::string text(static_cast<size_t>(file->size), '\0');
    absl::Status read =
        ReadExactly(file->fd.get(), name, 0, text.size(), text.data());
    if (!read.ok()) return read;
    absl::StatusOr<format::JsonValue> json = format::ParseJson(text, name);
    if (!json.ok()) return NotReady(json.status().message());
    return json;
  }

  // A complete header whose data_offsets account for the file's size
  // exactly. Dtypes and shapes are left to the job validator.
  absl::Status CheckSafetensors(const std::string& name) {
    absl::StatusOr<OpenedFile> file = OpenRegular(name);
    if (!file.ok()) return file.status();
    const int64_t size = file->size;
    if (size < kHeaderLengthBytes) {
      return NotReady(absl::StrCat(name, ": header incomplete (", size, " of ",
                                   kHeaderLengthBytes, " length bytes)"));
    }
    unsigned char length_bytes[kHeaderLengthBytes];
    absl::Status read = ReadExactly(file->fd.get(), name, 0, kHeaderLengthBytes,
                                    reinterpret_cast<char*>(length_bytes));
    if (!read.ok()) return read;
    uint64_t header_length = 0;
    for (int64_t i = kHeaderLengthBytes - 1; i >= 0; --i) {
      header_length = (header_length << 8) | length_bytes[i];
    }
    if (header_length > kMaxHeaderBytes) {
      return NotReady(absl::StrCat(name, ": invalid header (length ",
                                   header_length, " exceeds ", kMaxHeaderBytes,
                                   " bytes)"));
    }
    const int64_t header_end =
        kHeaderLengthBytes + static_cast<int64_t>(header_length);
    if (size < header_end) {
      return NotReady(absl::StrCat(name, ": header incomplete (",
                                   size - kHeaderLengthBytes, " of ",
                                   header_length, " header bytes)"));
    }
    // Spaces in place of the length bytes make JSON error offsets file
    // offsets.
    std::string text(static_cast<size_t>(header_end), ' ');
    read = ReadExactly(file->fd.get(), name, kHeaderLengthBytes, header_length,
                       text.data() + kHeaderLengthBytes);
    if (!read.ok()) return read;
    absl::StatusOr<format::JsonValue> header = format::ParseJson(text);
    if (!header.ok()) {
      return NotReady(
          absl::StrCat(name, ": invalid header: ", header.status().message()));
    }
    if (!header->is_object()) {
      return NotReady(
          absl::StrCat(name, ": invalid header: not a JSON object"));
    }
    int64_t data_bytes = 0;
    for (const format::JsonValue::Member& member : header->members()) {
      if (member.first == kMetadataKey) continue;
      const format::JsonValue* offsets = member.second.Find("data_offsets");
      std::optional<int64_t> begin, end;
      if (offsets != nullptr && offsets->is_array() &&
          offsets->array().size() == 2) {
        begin = offsets->array()[0].AsInt64();
        end = offsets->array()[1].AsInt64();
      }
      if (!begin.has_value() || !end.has_value() || *begin < 0 ||
          *end < *begin) {
        return NotReady(absl::StrCat(name, ": invalid header: tensor \"",
                                     absl::CHexEscape(member.first),
                                     "\" has no valid data_offsets"));
      }
      data_bytes = std::max(data_bytes, *end);
    }
    if (data_bytes > std::numeric_limits<int64_t>::max() - header_end) {
      return NotReady(absl::StrCat(name, ": invalid header: data_offsets end ",
                                   data_bytes, " is out of range"));
    }
    const int64_t expected = header_end + data_bytes;
    if (size < expected) {
      return NotReady(absl::StrCat(name, ": data incomplete (", size, " of ",
                                   expected, " bytes)"));
    }
    if (size > expected) {
      return NotReady(absl::StrCat(name, ": ", size, " bytes, more than the ",
                                   expected, " its header accounts for"));
    }
    return absl::OkStatus();
  }

  const int dir_fd_;
  DirectoryStamps stamps_;
};

absl::StatusOr<CheckpointPattern> ParseCheckpointPattern(
    std::string_view pattern) {
  auto invalid = [pattern](auto&&... why) {
    return absl::InvalidArgumentError(absl::StrCat(
        kPatternField, " \"", absl::CHexEscape(format::AsAbsl(pattern)),
        "\": ", why...));
  };
  if (pattern.empty()) {
    return invalid("must not be empty (e.g. \"step-{step}\")");
  }
  const size_t at = pattern.find(kStepPlaceholder);
  if (at == std::string_view::npos) {
    return invalid("must contain \"{step}\" where the step number stands");
  }
  if (pattern.find(kStepPlaceholder, at + kStepPlaceholder.size()) !=
      std::string_view::npos) {
    return invalid("must contain \"{step}\" only once");
  }
  for (size_t i = 0; i < pattern.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(pattern[i]);
    if (c < 0x20 || c == 0x7f) {
      return invalid(
          "must not contain a NUL byte or other control character "
          "(byte ",
          i, ")");
    }
  }
  // A directory entry's name has at most 255 bytes; the step takes up to 19.
  constexpr size_t kMaxFixedBytes = 255 - 19;
  if (pattern.size() - kStepPlaceholder.size() > kMaxFixedBytes) {
    return invalid("is ", pattern.size() - kStepPlaceholder.size(),
                   " bytes besides \"{step}\", more than a file name can "
                   "hold with its step (at most ",
                   kMaxFixedBytes, ")");
  }
  CheckpointPattern result{
      std::string(pattern.substr(0, at)),
      std::string(pattern.substr(at + kStepPlaceholder.size()))};
  for (const std::string* part : {&result.prefix, &result.suffix}) {
    if (part->find('/') != std::string::npos) {
      return invalid("names a directory entry, so must not contain '/'");
    }
    if (part->find_first_of("{}") != std::string::npos) {
      return invalid("must not contain braces other than \"{step}\"");
    }
  }
  return result;
}

std::optional<int64_t> MatchCheckpointName(const CheckpointPattern& pattern,
                                           std::string_view name) {
  if (name.size() <= pattern.prefix.size() + pattern.suffix.size()) {
    return std::nullopt;
  }
  if (name.substr(0, pattern.prefix.size()) != pattern.prefix ||
      name.substr(name.size() - pattern.suffix.size()) != pattern.suffix) {
    return std::nullopt;
  }
  const std::string_view digits =
      name.substr(pattern.prefix.size(),
                  name.size() - pattern.prefix.size() - pattern.suffix.size());
  int64_t step = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    const int digit = c - '0';
    if (step > (std::numeric_limits<int64_t>::max() - digit) / 10) {
      return std::nullopt;
    }
    step = step * 10 + digit;
  }
  return step;
}

CheckpointScanner::CheckpointScanner(std::string dir, CheckpointPattern pattern,
                                     std::string marker_file,
                                     format::DataRoots roots)
    : dir_(std::move(dir)),
      pattern_(std::move(pattern)),
      marker_file_(std::move(marker_file)),
      roots_(std::move(roots)) {}

absl::StatusOr<CheckpointScanner::Result> CheckpointScanner::Scan(
    const std::set<int64_t>& skip) {
  const int opened =
      ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC);
  if (opened < 0) {
    const int error = errno;
    if (error == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat("follow directory ", dir_, " does not exist"));
    }
    if (error == ENOTDIR) {
      return absl::FailedPreconditionError(
          absl::StrCat("follow directory ", dir_, " is not a directory"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot open follow directory ", dir_, ": ", ErrnoText(error)));
  }
  if (absl::Status inside = roots_.CheckOpened(opened, dir_); !inside.ok()) {
    ::close(opened);
    return absl::PermissionDeniedError(
        absl::StrCat("follow directory ", dir_,
                     " no longer lies under the data roots; it is not listed"));
  }
  std::unique_ptr<DIR, DirCloser> listing(::fdopendir(opened));
  if (listing == nullptr) {
    const int error = errno;
    ::close(opened);
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot list follow directory ", dir_, ": ", ErrnoText(error)));
  }
  const int dir_fd = ::dirfd(listing.get());

  // Names are cheap to match; only the lowest kMaxEntriesPerScan steps are
  // stat'ed and examined. A max-heap keeps them.
  std::priority_queue<std::pair<int64_t, std::string>> lowest;
  for (;;) {
    errno = 0;
    const dirent* entry = ::readdir(listing.get());
    if (entry == nullptr) {
      if (errno != 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot list follow directory ", dir_, ": ", ErrnoText(errno)));
      }
      break;
    }
    const std::optional<int64_t> step =
        MatchCheckpointName(pattern_, entry->d_name);
    if (!step.has_value() || skip.count(*step) > 0) continue;
    // d_type saves a stat where the file system fills it in.
    if (entry->d_type != DT_DIR && entry->d_type != DT_UNKNOWN) continue;
    lowest.emplace(*step, entry->d_name);
    if (lowest.size() > static_cast<size_t>(kMaxEntriesPerScan)) lowest.pop();
  }
  std::vector<std::pair<int64_t, std::string>> candidates;
  candidates.reserve(lowest.size());
  for (; !lowest.empty(); lowest.pop()) candidates.push_back(lowest.top());
  std::reverse(candidates.begin(), candidates.end());

  // Steps in ascending order, each with the directories naming it.
  std::vector<std::pair<int64_t, std::vector<std::string>>> steps;
  for (auto& [step, name] : candidates) {
    struct stat info;
    // A symlink is not followed (the coordinator confines paths to its data
    // roots elsewhere); an entry that vanished since listing is ignored.
    if (::fstatat(dir_fd, name.c_str(), &info, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISDIR(info.st_mode)) {
      continue;
    }
    if (steps.empty() || steps.back().first != step) {
      steps.emplace_back(step, std::vector<std::string>());
    }
    steps.back().second.push_back(std::move(name));
  }

  Result result;
  std::map<std::string, DirectoryStamps> seen;
  for (const auto& [step, names] : steps) {
    const std::string& name = names.front();
    const std::string path = JoinPath(dir_, name);
    auto pending = [&result, step = step, &path](std::string reason) {
      result.pending.push_back(
          PendingCheckpoint{step, path, std::move(reason)});
    };
    if (names.size() > 1) {
      pending(absl::StrCat("step ", step, " is named by more than one ",
                           "directory: ", absl::StrJoin(names, ", ")));
      continue;
    }
    ScopedFd checkpoint_fd(
        ::openat(dir_fd, name.c_str(),
                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (checkpoint_fd.get() < 0) {
      pending(absl::StrCat("cannot open: ", ErrnoText(errno)));
      continue;
    }

    if (!marker_file_.empty()) {
      struct stat info;
      if (::fstatat(checkpoint_fd.get(), marker_file_.c_str(), &info,
                    AT_SYMLINK_NOFOLLOW) != 0) {
        pending(errno == ENOENT
                    ? absl::StrCat("waiting for marker file ", marker_file_)
                    : absl::StrCat("marker file ", marker_file_, ": ",
                                   ErrnoText(errno)));
      } else if (!S_ISREG(info.st_mode)) {
        pending(absl::StrCat("marker file ", marker_file_, " is ",
                             FileTypeName(info.st_mode),
                             ", expected a regular file"));
      } else {
        result.complete.push_back(
            FoundCheckpoint{step, path, MtimeNs(info) / 1'000'000});
      }
      continue;
    }

    DirectoryCheck check(checkpoint_fd.get());
    const absl::Status files = check.Run();
    DirectoryStamps& stamps = seen[name];
    stamps = std::move(check.stamps());
    const auto previous = previous_.find(name);
    if (!files.ok()) {
      pending(std::string(files.message()));
    } else if (previous == previous_.end()) {
      pending(
          "seen for the first time; complete if unchanged at the next "
          "scan");
    } else if (previous->second != stamps) {
      std::vector<std::string> changed;
      for (const auto& [file, stamp] : stamps) {
        auto before = previous->second.find(file);
        if (before == previous->second.end() || !(before->second == stamp)) {
          changed.push_back(file);
        }
      }
      for (const auto& [file, stamp] : previous->second) {
        if (stamps.count(file) == 0) changed.push_back(file);
      }
      pending(absl::StrCat("sizes still changing (",
                           absl::StrJoin(changed, ", "), ")"));
    } else {
      int64_t newest = 0;
      for (const auto& [file, stamp] : stamps) {
        newest = std::max(newest, stamp.mtime_ns);
      }
      result.complete.push_back(
          FoundCheckpoint{step, path, newest / 1'000'000});
    }
  }
  // Directories not examined this time (taken, refused, vanished, beyond
  // the cap) start afresh if examined again.
  previous_ = std::move(seen);
  return result;
}

}  // namespace saetrack::server
