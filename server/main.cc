// saetrack-coordinator: flags -> CoordinatorOptions -> Start -> wait for
// SIGTERM/SIGINT -> graceful Shutdown.
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/coordinator.h"

ABSL_FLAG(std::string, data_dir, "",
          "Directory of the coordinator's database (required; created if "
          "missing).");
ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "gRPC listen address HOST:PORT; port 0 picks a free port.");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics address HOST:PORT; port 0 picks a free port; "
          "empty disables the endpoint.");
ABSL_FLAG(std::string, port_file, "",
          "Once serving, atomically write 'grpc=<port>\\nmetrics=<port>\\n' "
          "here.");
ABSL_FLAG(std::vector<std::string>, data_roots, {},
          "Comma-separated directories; every path of a job must resolve "
          "(symlinks followed, '..' refused) under one of them, checked at "
          "submission and again at every open by the coordinator and the "
          "workers. Required with --token_file or a --listen address beyond "
          "loopback, unless --insecure.");
ABSL_FLAG(std::string, backup_root, "",
          "Directory AdminService.Backup writes into, as BACKUP_ROOT/NAME "
          "(mode 0700/0600); must not overlap --data_dir. Empty: no "
          "backups.");
ABSL_FLAG(int64_t, lease_ttl_ms, 30000,
          "A task lease expires after this long without a heartbeat.");
ABSL_FLAG(int32_t, max_attempts, 3,
          "Times a task may be leased before its job fails.");
ABSL_FLAG(int64_t, retry_backoff_ms, 1000,
          "A requeued task (expired lease or retryable failure) waits this "
          "long, doubled per earlier attempt, before it is leased again.");
ABSL_FLAG(int64_t, retry_backoff_max_ms, 60000, "Cap of the retry backoff.");
ABSL_FLAG(int64_t, max_artifact_bytes, int64_t{4} << 30,
          "Largest artifact a worker may upload; a job whose SAE weights "
          "would be larger is refused at submission.");
ABSL_FLAG(int64_t, max_staged_bytes, int64_t{8} << 30,
          "Uploads staged on disk (DATA_DIR/staging) until their "
          "CompleteTask, all tasks together (at least --max_artifact_bytes); "
          "beyond it uploads are refused with RESOURCE_EXHAUSTED and workers "
          "send them again later.");
ABSL_FLAG(int64_t, max_staged_bytes_per_worker, int64_t{5} << 30,
          "The same limit for the uploads of one worker's leases (at least "
          "--max_artifact_bytes).");
ABSL_FLAG(int64_t, sae_part_bytes, int64_t{64} << 20,
          "SAE weights larger than this are stored in parts of this size.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the gRPC port; with --tls_key: TLS.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA of client certificates: mutual TLS, every client (CLI, "
          "worker) must present a certificate it signed (needs --tls_cert).");
ABSL_FLAG(std::string, token_file, "",
          "Token file (lines 'sha256:<hex> <role> <name>', written by "
          "`saetrack admin token create`): every call but health and "
          "reflection needs a bearer token of a role allowed to make it "
          "(reader, submitter, worker, admin). Requires --data_roots.");
ABSL_FLAG(bool, insecure, false,
          "Serve a --listen address beyond loopback without TLS and a token "
          "file (refused otherwise), or without --data_roots (any client "
          "may then name any file on this machine); logs a WARNING and sets "
          "the metric saetrack_insecure_mode to 1.");

namespace {

// The HOST part of HOST:PORT.
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

bool WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "grpc=" << grpc_port << "\nmetrics=" << metrics_port << "\n";
    if (!out.good()) return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  return !ec;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "saetrack-coordinator --data_dir DIR [--listen HOST:PORT] ...");
  // --help lists this file's flags (absl matches on the program name
  // otherwise, which differs from the file's).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "saetrack-coordinator: unexpected argument '%s'\n",
                 rest[1]);
    return 2;
  }
  saetrack::CoordinatorOptions options;
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  if (options.data_dir.empty()) {
    std::fprintf(stderr, "saetrack-coordinator: --data_dir is required\n");
    return 2;
  }
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_listen_address = absl::GetFlag(FLAGS_metrics_listen);
  options.data_roots = absl::GetFlag(FLAGS_data_roots);
  options.backup_root = absl::GetFlag(FLAGS_backup_root);
  options.lease_ttl_ms = absl::GetFlag(FLAGS_lease_ttl_ms);
  options.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.retry_backoff_ms = absl::GetFlag(FLAGS_retry_backoff_ms);
  options.retry_backoff_max_ms = absl::GetFlag(FLAGS_retry_backoff_max_ms);
  options.max_artifact_bytes = absl::GetFlag(FLAGS_max_artifact_bytes);
  options.max_staged_bytes = absl::GetFlag(FLAGS_max_staged_bytes);
  options.max_staged_bytes_per_worker =
      absl::GetFlag(FLAGS_max_staged_bytes_per_worker);
  options.sae_part_bytes = absl::GetFlag(FLAGS_sae_part_bytes);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.token_file = absl::GetFlag(FLAGS_token_file);
  options.insecure = absl::GetFlag(FLAGS_insecure);

  // Block the stop signals in every thread (threads inherit the mask) and
  // take them synchronously below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<saetrack::Coordinator>> coordinator =
      saetrack::Coordinator::Start(options);
  if (!coordinator.ok()) {
    std::fprintf(stderr, "saetrack-coordinator: %s\n",
                 coordinator.status().ToString().c_str());
    return 1;
  }
  const int port = (*coordinator)->port();
  const int metrics_port = (*coordinator)->metrics_port();
  const std::string metrics =
      options.metrics_listen_address.empty()
          ? std::string("metrics off")
          : absl::StrCat("metrics on ", HostOf(options.metrics_listen_address),
                         ":", metrics_port);
  const std::string security = absl::StrCat(
      options.tls_cert_file.empty()
          ? "plaintext"
          : (options.tls_client_ca_file.empty() ? "TLS" : "mutual TLS"),
      options.token_file.empty() ? ", no tokens" : ", bearer tokens");
  std::fprintf(stderr,
               "saetrack-coordinator: serving on %s:%d (%s), %s, data in %s\n",
               HostOf(options.listen_address).c_str(), port, security.c_str(),
               metrics.c_str(), options.data_dir.c_str());
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty() && !WritePortFile(port_file, port, metrics_port)) {
    std::fprintf(stderr, "saetrack-coordinator: cannot write --port_file %s\n",
                 port_file.c_str());
    (*coordinator)->Shutdown();
    return 1;
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::fprintf(stderr, "saetrack-coordinator: signal %d, shutting down\n",
               signal_number);
  (*coordinator)->Shutdown();
  coordinator->reset();
  return 0;
}
