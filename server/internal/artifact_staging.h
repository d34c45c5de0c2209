// Uploaded artifacts waiting for their CompleteTask.
#ifndef SAETRACK_SERVER_INTERNAL_ARTIFACT_STAGING_H_
#define SAETRACK_SERVER_INTERNAL_ARTIFACT_STAGING_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "saetrack/v1/worker.pb.h"

namespace saetrack::server {

// Fully received, checksummed artifacts in memory, keyed by (task, lease
// epoch, kind). Nothing here is durable: a coordinator restart loses staged
// uploads and the worker's CompleteTask then fails with FAILED_PRECONDITION,
// so it re-uploads. Thread-safe.
class ArtifactStaging {
 public:
  // Stages `data`, replacing an earlier upload of the same key, and drops
  // whatever is staged for other epochs of the task.
  void Put(const std::string& task_id, int64_t epoch, v1::ArtifactKind kind,
           std::string data);
  // The staged bytes, or null. Shared so that a large artifact is not copied
  // while other uploads proceed.
  std::shared_ptr<const std::string> Find(const std::string& task_id,
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
  // Bytes staged in total.
  int64_t bytes() const;

 private:
  using Key = std::tuple<std::string, int64_t, int>;
  mutable absl::Mutex mu_;
  std::map<Key, std::shared_ptr<const std::string>> staged_
      ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_ARTIFACT_STAGING_H_
