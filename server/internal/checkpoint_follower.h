// The coordinator side of follow mode: finds the checkpoints a training run
// writes into a following job's directory and hands each complete one to
// the scheduler.
#ifndef SAETRACK_SERVER_INTERNAL_CHECKPOINT_FOLLOWER_H_
#define SAETRACK_SERVER_INTERNAL_CHECKPOINT_FOLLOWER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/internal/checkpoint_scanner.h"
#include "server/internal/job_validator.h"
#include "server/internal/task_scheduler.h"

namespace saetrack::server {

// Scans the directory of every following job (spec.model.follow.dir) every
// poll_interval_s on its own thread, and gives the scheduler each
// checkpoint that is complete (CheckpointScanner) and not yet taken or
// refused, in step order. Nothing of its own is stored: after a restart the
// jobs' records say what was taken, and scanning resumes from there (a
// checkpoint is complete again after two scans). Does not own its
// collaborators. Thread-safe.
class CheckpointFollower {
 public:
  // `roots`: the follow directories are listed only while they lie under
  // them (the validator's roots).
  CheckpointFollower(TaskScheduler* scheduler, const JobValidator* validator,
                     format::DataRoots roots = {});
  // Stops the thread.
  ~CheckpointFollower();

  CheckpointFollower(const CheckpointFollower&) = delete;
  CheckpointFollower& operator=(const CheckpointFollower&) = delete;

  void Start();
  void Stop();

  // One pass over the following jobs whose scan is due at `now`.
  void PollOnce(absl::Time now);

 private:
  struct Followed {
    std::unique_ptr<CheckpointScanner> scanner;
    std::string dir;
    std::string pattern;
    std::string marker;
    absl::Time next_scan = absl::InfinitePast();
    // When each step was first seen, pending or complete (Unix ms).
    std::map<int64_t, int64_t> first_seen_ms;
    // The last problem logged for the directory (logged once).
    std::string last_error;
    // Step -> the reason logged for it while it is not complete.
    std::map<int64_t, std::string> pending_reasons;
    // Step -> when this follower had it refused (Unix ms).
    std::map<int64_t, int64_t> refused_ms;
    // When refused steps are examined again, and for how many more scans.
    absl::Time next_refused_check = absl::InfinitePast();
    int refused_rechecks_left = 0;
  };
  void Loop();

  TaskScheduler* const scheduler_;
  const JobValidator* const validator_;
  const format::DataRoots roots_;
  absl::Mutex poll_mu_;  // One PollOnce at a time.
  std::map<std::string, Followed> jobs_ ABSL_GUARDED_BY(poll_mu_);

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_CHECKPOINT_FOLLOWER_H_
