// Uploaded artifacts waiting for their CompleteTask, staged on disk.
#ifndef SAETRACK_SERVER_INTERNAL_ARTIFACT_STAGING_H_
#define SAETRACK_SERVER_INTERNAL_ARTIFACT_STAGING_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "format/mapped_file.h"
#include "saetrack/v1/worker.pb.h"

namespace saetrack::server {

// Fully received, checksummed artifacts, keyed by (task, lease epoch, kind),
// each in its own file under one directory: an upload streams into a
// ".partial" file that is synced and renamed once its last chunk is checked,
// so memory stays bounded by a chunk whatever the artifact's size, and a
// coordinator restart keeps what was staged (leases survive it too). Staged
// files are removed when their lease is completed, replaced, failed or
// ends. Thread-safe.
class ArtifactStaging {
 public:
  // A staged artifact: an open file, readable after it was dropped (the
  // name is unlinked, the file lives until the last reader lets it go).
  class Artifact {
   public:
    explicit Artifact(format::ReadOnlyFile file) : file_(std::move(file)) {}
    int64_t size() const { return file_.size(); }
    // `n` bytes at `offset`, appended to `out`.
    absl::Status ReadAt(int64_t offset, int64_t n, std::string* out) const;
    absl::StatusOr<std::string> ReadAll() const;

   private:
    format::ReadOnlyFile file_;
  };

  // One upload being received. Dropping it unfinished removes its file and
  // its bytes from the staged total.
  class Writer {
   public:
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;
    absl::Status Append(std::string_view data);
    int64_t size() const { return size_; }
    // Syncs and publishes the file, replacing an earlier upload of the same
    // (task, epoch, kind) and dropping what is staged for other epochs of the
    // task.
    absl::Status Commit();

   private:
    friend class ArtifactStaging;
    Writer(ArtifactStaging* staging, std::string task_id, int64_t epoch,
           v1::ArtifactKind kind, std::string worker_id, std::string path,
           int fd);
    ArtifactStaging* const staging_;
    const std::string task_id_;
    const int64_t epoch_;
    const v1::ArtifactKind kind_;
    const std::string worker_id_;
    const std::string path_;
    int fd_ = -1;
    int64_t size_ = 0;
  };

  // Stages under `dir` (created when absent). Files a previous run staged
  // are taken up again; half-received ones are removed. Errors name `dir`.
  static absl::StatusOr<std::unique_ptr<ArtifactStaging>> Open(
      const std::string& dir);

  // Starts receiving an artifact for the lease (task, epoch) held by
  // `worker_id` (counted against that worker's staged bytes).
  absl::StatusOr<std::unique_ptr<Writer>> Begin(const std::string& task_id,
                                                int64_t epoch,
                                                v1::ArtifactKind kind,
                                                const std::string& worker_id);
  // Begin, Append and Commit in one call (small artifacts and tests).
  absl::Status Put(const std::string& task_id, int64_t epoch,
                   v1::ArtifactKind kind, std::string_view data,
                   const std::string& worker_id = "");
  // The staged artifact, or null.
  std::shared_ptr<const Artifact> Find(const std::string& task_id,
                                       int64_t epoch,
                                       v1::ArtifactKind kind) const;
  // Forgets everything staged for `task_id`.
  void DropTask(const std::string& task_id);
  // Forgets what is staged for one lease (task, epoch) of a task.
  void DropLease(const std::string& task_id, int64_t epoch);
  // Forgets everything staged for a (task, epoch) for which `stale` is true
  // (its lease expired, was taken over or its job ended); returns the bytes
  // freed.
  int64_t DropStale(const std::function<bool(const std::string& task_id,
                                             int64_t epoch)>& stale);
  // Bytes staged in total, uploads in progress included.
  int64_t bytes() const;
  // Bytes staged for leases of `worker_id`, uploads in progress included.
  int64_t worker_bytes(const std::string& worker_id) const;
  const std::string& dir() const { return dir_; }

 private:
  using Key = std::tuple<std::string, int64_t, int>;
  struct Entry {
    std::shared_ptr<const Artifact> artifact;
    std::string path;
    std::string worker_id;
  };
  explicit ArtifactStaging(std::string dir) : dir_(std::move(dir)) {}
  std::string PathOf(const std::string& task_id, int64_t epoch,
                     v1::ArtifactKind kind) const;
  // Removes `it` (its file and its bytes); returns the next entry.
  std::map<Key, Entry>::iterator EraseLocked(std::map<Key, Entry>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddBytesLocked(const std::string& worker_id, int64_t n)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddInProgress(const std::string& worker_id, int64_t n);

  const std::string dir_;
  mutable absl::Mutex mu_;
  std::map<Key, Entry> staged_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> worker_bytes_ ABSL_GUARDED_BY(mu_);
  int64_t next_upload_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_ARTIFACT_STAGING_H_
