// saetrack-coordinator: accepts tracking jobs (JobService), hands their tasks
// to pull-based workers (WorkerService), stores results in RocksDB and serves
// them (QueryService), all over gRPC, with Prometheus metrics over HTTP.
//
// Usage:
//   CoordinatorOptions options;
//   options.data_dir = "/var/lib/saetrack";
//   absl::StatusOr<std::unique_ptr<Coordinator>> c =
//   Coordinator::Start(options);
//   ... c->port() ...
//   (*c)->Shutdown();
#ifndef SAETRACK_SERVER_COORDINATOR_H_
#define SAETRACK_SERVER_COORDINATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/clock.h"

namespace saetrack {

struct CoordinatorOptions {
  // --- behaviour ---

  // Directory holding the RocksDB database (in `data_dir`/db). Created when
  // missing. Required.
  std::string data_dir;
  // gRPC listen address, HOST:PORT. Port 0 picks a free port (see port()).
  std::string listen_address = "127.0.0.1:7070";
  // Prometheus /metrics listen address, HOST:PORT; port 0 picks a free port.
  // Empty: no metrics endpoint.
  std::string metrics_listen_address = "127.0.0.1:9464";
  // When non-empty, every path named by a job must lie under one of these
  // directories (after resolving symlinks; ".." refused), else the job is
  // INVALID_ARGUMENT with one message whether or not the file exists. Every
  // later open (contexts read by QueryService, the worker's opens; the
  // roots travel to workers in each Task) refuses a symlink as the final
  // component and a file that resolves outside them. Required when
  // `token_file` is set or `listen_address` is beyond loopback, unless
  // `insecure`; without roots any local client can name any file.
  std::vector<std::string> data_roots;
  // Directory that AdminService.Backup writes into (backup_root/NAME).
  // Empty: Backup is FAILED_PRECONDITION. Must neither be, contain nor lie
  // inside `data_dir`.
  std::string backup_root;
  // A lease not renewed by a heartbeat for this long expires and its task is
  // requeued. Workers are told to heartbeat every lease_ttl_ms / 3.
  int64_t lease_ttl_ms = 30000;
  // Times a task may be leased before its job fails (counting expired leases
  // and retryable failures).
  int max_attempts = 3;
  // Backoff before a requeued task is leased again: retry_backoff_ms doubled
  // per earlier attempt, capped at retry_backoff_max_ms. 0: at once.
  int64_t retry_backoff_ms = 0;
  int64_t retry_backoff_max_ms = 60000;
  // Largest artifact (SAE weights or feature stats) a worker may upload;
  // jobs whose SAE would be larger are refused at submission.
  int64_t max_artifact_bytes = int64_t{4} << 30;
  // Uploads staged on disk (in `data_dir`/staging) until their
  // CompleteTask, all tasks together; beyond it uploads get
  // RESOURCE_EXHAUSTED and workers send them later.
  int64_t max_staged_bytes = int64_t{8} << 30;
  // The same for the uploads of one worker's leases.
  int64_t max_staged_bytes_per_worker = int64_t{5} << 30;
  // SAE weights larger than this are stored as parts of this size (one
  // RocksDB value holds less than 4 GiB), written before the synced batch
  // that publishes them.
  int64_t sae_part_bytes = int64_t{64} << 20;
  // --- security (README "Securing a fleet") ---

  // PEM certificate chain and private key of the gRPC port. Both set: TLS;
  // both empty: plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA certificate(s) of client certificates. Set (needs TLS): mutual
  // TLS, every client must present a certificate signed by this CA.
  std::string tls_client_ca_file;
  // Token file (proto/access_tokens.h: SHA-256 hashes, roles, names). Set:
  // every call except health and reflection needs a bearer token of a role
  // allowed to make it (server/internal/auth.h). Read once at start. A
  // coordinator with tokens requires `data_roots`.
  std::string token_file;
  // A listen_address beyond loopback (anything but 127.0.0.0/8, ::1,
  // localhost) needs TLS and a token file, unless this is set: then the
  // coordinator starts without them, logs a WARNING and exports
  // saetrack_insecure_mode = 1. It also lets a coordinator beyond loopback
  // or with tokens run without `data_roots`.
  bool insecure = false;

  // Source of time for lease deadlines and timestamps. Not owned; must
  // outlive the coordinator. Null: the system clock.
  Clock* clock = nullptr;

  // --- performance ---

  // How often the background thread looks for expired leases (in real time;
  // leases are also checked on every worker RPC, using `clock`).
  int64_t lease_check_interval_ms = 1000;
  // Time given to in-flight RPCs to finish on Shutdown.
  int64_t shutdown_grace_ms = 5000;
};

// A running coordinator. Owns its gRPC server, metrics endpoint, scheduler and
// database. Thread-safe; Shutdown may be called from any thread, once or more.
class Coordinator {
 public:
  // Opens the database in options.data_dir, recovers every job, task and
  // result from it, and starts serving. Errors: kInvalidArgument for bad
  // options (naming the field); kFailedPrecondition naming the missing
  // flags when listen_address is beyond loopback without TLS and a token
  // file and without `insecure`, naming --data_roots when they are required
  // (see CoordinatorOptions::data_roots) and missing, or naming
  // --backup_root when it overlaps data_dir; the errors of reading the TLS
  // files and the token file (naming the file, and the line of a malformed
  // entry); the database's error (naming the directory) when it cannot be
  // opened; kUnavailable when an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(
      const CoordinatorOptions& options);

  // Shuts down (see Shutdown) if still running.
  virtual ~Coordinator() = default;

  // The bound gRPC port.
  virtual int port() const = 0;
  // The bound metrics port; 0 when there is no metrics endpoint.
  virtual int metrics_port() const = 0;

  // Health goes NOT_SERVING, long polls return, in-flight RPCs get up to
  // shutdown_grace_ms to finish, then the database is closed. Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace saetrack

#endif  // SAETRACK_SERVER_COORDINATOR_H_
