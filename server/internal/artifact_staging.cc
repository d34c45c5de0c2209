#include "server/internal/artifact_staging.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace saetrack::server {
namespace {

constexpr char kStaged[] = ".staged";
constexpr char kPartial[] = ".partial";

absl::Status Errno(const char* what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " '", path, "': ", std::strerror(errno)));
}

void RemoveQuietly(const std::string& path) { ::unlink(path.c_str()); }

}  // namespace

absl::Status ArtifactStaging::Artifact::ReadAt(int64_t offset, int64_t n,
                                               std::string* out) const {
  const size_t old = out->size();
  out->resize(old + static_cast<size_t>(n));
  absl::Status s =
      file_.ReadAt(offset, static_cast<size_t>(n), out->data() + old);
  if (!s.ok()) out->resize(old);
  return s;
}

absl::StatusOr<std::string> ArtifactStaging::Artifact::ReadAll() const {
  std::string out;
  if (absl::Status s = ReadAt(0, size(), &out); !s.ok()) return s;
  return out;
}

ArtifactStaging::Writer::Writer(ArtifactStaging* staging, std::string task_id,
                                int64_t epoch, v1::ArtifactKind kind,
                                std::string worker_id, std::string path, int fd)
    : staging_(staging),
      task_id_(std::move(task_id)),
      epoch_(epoch),
      kind_(kind),
      worker_id_(std::move(worker_id)),
      path_(std::move(path)),
      fd_(fd) {}

ArtifactStaging::Writer::~Writer() {
  if (fd_ >= 0) {
    ::close(fd_);
    RemoveQuietly(path_);
    staging_->AddInProgress(worker_id_, -size_);
  }
}

absl::Status ArtifactStaging::Writer::Append(std::string_view data) {
  if (fd_ < 0) return absl::FailedPreconditionError("upload already ended");
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write staged upload", path_);
    }
    done += static_cast<size_t>(n);
  }
  size_ += static_cast<int64_t>(data.size());
  staging_->AddInProgress(worker_id_, static_cast<int64_t>(data.size()));
  return absl::OkStatus();
}

absl::Status ArtifactStaging::Writer::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError("upload already ended");
  // Synced before it is published: a machine crash after the rename never
  // leaves a short file under the final name.
  if (::fsync(fd_) != 0) return Errno("sync staged upload", path_);
  ::close(fd_);
  fd_ = -1;
  const std::string final_path = staging_->PathOf(task_id_, epoch_, kind_);
  if (::rename(path_.c_str(), final_path.c_str()) != 0) {
    absl::Status s = Errno("publish staged upload", final_path);
    RemoveQuietly(path_);
    staging_->AddInProgress(worker_id_, -size_);
    return s;
  }
  absl::StatusOr<format::ReadOnlyFile> file =
      format::ReadOnlyFile::Open(final_path);
  ArtifactStaging& st = *staging_;
  absl::MutexLock lock(&st.mu_);
  // The bytes counted while they arrived now belong to the staged entry.
  st.AddBytesLocked(worker_id_, -size_);
  const Key key{task_id_, epoch_, static_cast<int>(kind_)};
  for (auto it = st.staged_.lower_bound(Key{task_id_, INT64_MIN, 0});
       it != st.staged_.end() && std::get<0>(it->first) == task_id_;) {
    if (std::get<1>(it->first) != epoch_) {
      it = st.EraseLocked(it);
    } else if (it->first == key) {
      // Replaced: its file was already renamed over; only the count goes.
      st.AddBytesLocked(it->second.worker_id, -it->second.artifact->size());
      it = st.staged_.erase(it);
    } else {
      ++it;
    }
  }
  if (!file.ok()) {
    RemoveQuietly(final_path);
    return file.status();
  }
  auto artifact = std::make_shared<const Artifact>(*std::move(file));
  st.AddBytesLocked(worker_id_, artifact->size());
  st.staged_[key] = Entry{std::move(artifact), final_path, worker_id_};
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ArtifactStaging>> ArtifactStaging::Open(
    const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "staging directory '", dir, "': cannot create: ", ec.message()));
  }
  std::unique_ptr<ArtifactStaging> staging(new ArtifactStaging(dir));
  std::vector<std::string> unknown;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const std::string path = entry.path().string();
    if (!absl::EndsWith(name, kStaged)) {
      // A half-received upload (its stream died with the process) or
      // something that is not ours to keep.
      if (absl::EndsWith(name, kPartial)) RemoveQuietly(path);
      continue;
    }
    std::vector<std::string> parts =
        absl::StrSplit(name.substr(0, name.size() - std::strlen(kStaged)), '-');
    int64_t epoch = 0;
    int kind = 0;
    std::string task_id;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[1], &epoch) ||
        !absl::SimpleAtoi(parts[2], &kind) || !v1::ArtifactKind_IsValid(kind) ||
        parts[0].size() % 2 != 0 ||
        parts[0].find_first_not_of("0123456789abcdef") != std::string::npos) {
      RemoveQuietly(path);
      continue;
    }
    task_id = absl::HexStringToBytes(parts[0]);
    absl::StatusOr<format::ReadOnlyFile> file =
        format::ReadOnlyFile::Open(path);
    if (!file.ok()) {
      RemoveQuietly(path);
      continue;
    }
    auto artifact = std::make_shared<const Artifact>(*std::move(file));
    absl::MutexLock lock(&staging->mu_);
    // Recovered files are counted against the total only: the worker that
    // sent them is not recorded on disk.
    staging->AddBytesLocked("", artifact->size());
    staging->staged_[Key{task_id, epoch, kind}] =
        Entry{std::move(artifact), path, ""};
  }
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "staging directory '", dir, "': cannot list: ", ec.message()));
  }
  return staging;
}

std::string ArtifactStaging::PathOf(const std::string& task_id, int64_t epoch,
                                    v1::ArtifactKind kind) const {
  return absl::StrCat(dir_, "/", absl::BytesToHexString(task_id), "-", epoch,
                      "-", static_cast<int>(kind), kStaged);
}

absl::StatusOr<std::unique_ptr<ArtifactStaging::Writer>> ArtifactStaging::Begin(
    const std::string& task_id, int64_t epoch, v1::ArtifactKind kind,
    const std::string& worker_id) {
  int64_t upload = 0;
  {
    absl::MutexLock lock(&mu_);
    upload = next_upload_++;
  }
  const std::string path =
      absl::StrCat(PathOf(task_id, epoch, kind), ".", upload, kPartial);
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("create staged upload", path);
  return std::unique_ptr<Writer>(
      new Writer(this, task_id, epoch, kind, worker_id, path, fd));
}

absl::Status ArtifactStaging::Put(const std::string& task_id, int64_t epoch,
                                  v1::ArtifactKind kind, std::string_view data,
                                  const std::string& worker_id) {
  absl::StatusOr<std::unique_ptr<Writer>> writer =
      Begin(task_id, epoch, kind, worker_id);
  if (!writer.ok()) return writer.status();
  if (absl::Status s = (*writer)->Append(data); !s.ok()) return s;
  return (*writer)->Commit();
}

std::shared_ptr<const ArtifactStaging::Artifact> ArtifactStaging::Find(
    const std::string& task_id, int64_t epoch, v1::ArtifactKind kind) const {
  absl::MutexLock lock(&mu_);
  auto it = staged_.find(Key{task_id, epoch, static_cast<int>(kind)});
  return it == staged_.end() ? nullptr : it->second.artifact;
}

std::map<ArtifactStaging::Key, ArtifactStaging::Entry>::iterator
ArtifactStaging::EraseLocked(std::map<Key, Entry>::iterator it) {
  RemoveQuietly(it->second.path);
  AddBytesLocked(it->second.worker_id, -it->second.artifact->size());
  return staged_.erase(it);
}

void ArtifactStaging::AddBytesLocked(const std::string& worker_id, int64_t n) {
  bytes_ += n;
  int64_t& mine = worker_bytes_[worker_id];
  mine += n;
  if (mine == 0) worker_bytes_.erase(worker_id);
}

void ArtifactStaging::AddInProgress(const std::string& worker_id, int64_t n) {
  absl::MutexLock lock(&mu_);
  AddBytesLocked(worker_id, n);
}

void ArtifactStaging::DropTask(const std::string& task_id) {
  absl::MutexLock lock(&mu_);
  for (auto it = staged_.lower_bound(Key{task_id, INT64_MIN, 0});
       it != staged_.end() && std::get<0>(it->first) == task_id;) {
    it = EraseLocked(it);
  }
}

void ArtifactStaging::DropLease(const std::string& task_id, int64_t epoch) {
  absl::MutexLock lock(&mu_);
  for (auto it = staged_.lower_bound(Key{task_id, epoch, 0});
       it != staged_.end() && std::get<0>(it->first) == task_id &&
       std::get<1>(it->first) == epoch;) {
    it = EraseLocked(it);
  }
}

int64_t ArtifactStaging::DropStale(
    const std::function<bool(const std::string&, int64_t)>& stale) {
  absl::MutexLock lock(&mu_);
  int64_t freed = 0;
  for (auto it = staged_.begin(); it != staged_.end();) {
    if (stale(std::get<0>(it->first), std::get<1>(it->first))) {
      freed += it->second.artifact->size();
      it = EraseLocked(it);
    } else {
      ++it;
    }
  }
  return freed;
}

int64_t ArtifactStaging::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

int64_t ArtifactStaging::worker_bytes(const std::string& worker_id) const {
  absl::MutexLock lock(&mu_);
  auto it = worker_bytes_.find(worker_id);
  return it == worker_bytes_.end() ? 0 : it->second;
}

}  // namespace saetrack::server
