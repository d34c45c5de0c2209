// The worker's RPC loop: registers with a coordinator, leases SAE-training
// tasks, runs them on a SaeTrainingEngine, heartbeats while they run, uploads
// the results in checksummed chunks and completes (or fails) each task.
#ifndef SAETRACK_WORKER_WORKER_H_
#define SAETRACK_WORKER_WORKER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/training_engine.h"
#include "proto/channel_security.h"

namespace saetrack::worker {

struct WorkerOptions {
  // --- behaviour ---
  // host:port of the coordinator.
  std::string coordinator = "127.0.0.1:7070";
  // TLS and the bearer token (a token of role worker) to reach it with; all
  // empty: plaintext without a token.
  ChannelSecurity security;
  // Shown in the coordinator's logs; default hostname:pid.
  std::string name;
  // Device of the engine, advertised to the coordinator ("cpu" or "cuda").
  std::string device = "cpu";
  int threads = 0;
  // Long-poll wait of one LeaseTask call.
  absl::Duration lease_wait = absl::Seconds(5);
  // Back-off after a failed call (coordinator down or restarting).
  absl::Duration retry_backoff = absl::Milliseconds(500);
  // Stop after this many tasks (0: run until Stop()). For tests and batch use.
  int max_tasks = 0;
  // host:port of the Prometheus endpoint; empty: none. Port 0: ephemeral.
  std::string metrics_listen;
  // Where the engine saves training state so that a task interrupted on this
  // worker (crash, restart, lost lease) resumes instead of starting over when
  // it is leased here again. Each task gets
  // <state_dir>/<job_id>-L<layer>-s<step>, deleted once the task's result is
  // stored. Empty: no state is saved.
  std::string state_dir;
  // Training tokens between two state saves (with state_dir); 0: never.
  int64_t checkpoint_every_tokens = 50'000'000;

  // Memory reported to the coordinator, which gives this worker only jobs
  // whose spec.min_worker_memory_bytes fit. 0: the machine's physical memory
  // for cpu, unreported (any job) for cuda.
  int64_t memory_bytes = 0;

  // Called once each time the worker goes idle after running a task (a
  // lease wait ended without one); main hands the memory its tasks freed
  // back to the operating system there (engine/host_memory.h). Empty: none.
  std::function<void()> when_idle;

  // How long a trained result is retried (upload and CompleteTask, capped
  // exponential back-off from retry_backoff to 30 s) through faults that
  // lose nothing — the coordinator unreachable or restarting, a deadline,
  // staged uploads lost — before the worker gives it up. The lease is
  // heartbeated all along, so it does not expire while the result is sent.
  absl::Duration commit_timeout = absl::Minutes(15);
  // Slowest upload rate allowed: an upload's deadline is 30 s plus its
  // bytes at this rate.
  int64_t min_upload_bytes_per_second = 1 << 20;
  // Called before every CompleteTask of a trained SAE (tests inject faults
  // there, e.g. a coordinator restart between upload and completion).
  std::function<void()> before_complete_for_testing;
  // Called after every CompleteTask of a trained SAE that stored it, while
  // the task still holds its heartbeat (tests let beats cross the
  // completion there).
  std::function<void()> after_complete_for_testing;

  // --- performance ---
  // Bytes per artifact chunk.
  int64_t chunk_bytes = 1 << 20;
};

// Owns its engine, channel and metrics endpoint. Run() executes on the calling
// thread; Stop() may be called from any thread (e.g. a signal watcher).
class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Create(
      const WorkerOptions& options,
      std::unique_ptr<engine::SaeTrainingEngine> engine);
  virtual ~Worker() = default;

  // Leases and runs tasks until Stop() or max_tasks; returns OK then. A task
  // in flight when Stop() is called is abandoned and handed back to the
  // coordinator (FailTask, retryable), which requeues it for another worker.
  virtual absl::Status Run() = 0;
  virtual void Stop() = 0;
  // Port of the metrics endpoint, 0 when none.
  virtual int metrics_port() const = 0;
};

}  // namespace saetrack::worker

#endif  // SAETRACK_WORKER_WORKER_H_
