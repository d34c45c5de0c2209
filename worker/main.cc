// saetrack-worker: leases SAE-training tasks from a coordinator and runs them
// on LibTorch (CPU or CUDA).
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/host_memory.h"
#include "engine/training_engine.h"
#include "worker/worker.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7070",
          "host:port of the coordinator");
ABSL_FLAG(std::string, token_file, "",
          "A file holding the bearer token (role worker) for a coordinator "
          "started with --token_file (default: $SAETRACK_TOKEN_FILE when set)");
ABSL_FLAG(std::string, tls_ca, "",
          "Connect with TLS, trusting the coordinator's certificate when this "
          "PEM CA signed it");
ABSL_FLAG(std::string, tls_cert, "",
          "Client certificate (PEM) for a coordinator that requires one "
          "(mutual TLS); needs --tls_key and --tls_ca");
ABSL_FLAG(std::string, tls_key, "", "Private key (PEM) of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "Check the coordinator's certificate against this name instead of "
          "the host of --coordinator");
ABSL_FLAG(std::string, name, "",
          "Name shown by the coordinator (default "
          "hostname:pid)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads on CPU");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9465",
          "host:port of the Prometheus /metrics endpoint (port 0: ephemeral; "
          "empty: none)");
ABSL_FLAG(int, max_tasks, 0,
          "Exit after this many tasks (0: run until "
          "SIGTERM)");
ABSL_FLAG(absl::Duration, lease_wait, absl::Seconds(5),
          "Long-poll wait of one lease request");
ABSL_FLAG(std::string, state_dir, "",
          "Directory for training state, so that a task interrupted here "
          "resumes when leased here again; each task uses "
          "<state_dir>/<job_id>-L<layer>-s<step>, deleted once its result is "
          "stored (empty: no state saved)");
ABSL_FLAG(int64_t, checkpoint_every_tokens, 50'000'000,
          "Training tokens between two state saves with --state_dir (0: "
          "never)");
ABSL_FLAG(int64_t, memory_bytes, 0,
          "Memory to report to the coordinator, which then leases only jobs "
          "whose min_worker_memory_bytes fit (0: physical memory on cpu, "
          "unreported on cuda)");
ABSL_FLAG(std::string, precision, "auto",
          "Precision of the SAE's matrix products: fp32, bf16 (bf16 operands, "
          "fp32 accumulation and master weights) or auto (bf16 on cuda, fp32 "
          "on cpu)");
ABSL_FLAG(bool, retain_freed_memory, true,
          "Keep the memory a task frees for its next steps instead of "
          "returning it to the OS at once (every large tensor came back as "
          "fresh pages, one page fault per 4 KiB: a later SAE of the "
          "shortened demo took 5.4 s instead of 1.2 s); it is returned when "
          "the worker goes idle");

namespace {

// Blocks SIGTERM / SIGINT in the calling thread and in every thread it
// starts afterwards. Must run before any thread exists (LibTorch and gRPC
// start theirs early): a thread with the signals unblocked would take them
// with the default action and kill the process mid-task.
sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

// Stops the worker on SIGTERM / SIGINT, from a normal thread rather than the
// signal handler.
void StopOnSignal(saetrack::worker::Worker* worker, const sigset_t& signals) {
  std::thread([worker, signals] {
    int signal = 0;
    sigwait(&signals, &signal);
    worker->Stop();
  }).detach();
}

}  // namespace

int main(int argc, char** argv) {
  const sigset_t stop_signals = BlockStopSignals();
  absl::SetProgramUsageMessage(
      "Leases SAE-training tasks from a saetrack coordinator and runs them.\n"
      "usage: saetrack-worker --coordinator HOST:PORT [flags]");
  // absl's --help lists only flags of a file named after the program
  // (saetrack-worker.cc); ours live in main.cc.
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "worker/main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::ParseCommandLine(argc, argv);
  const bool retain_memory = absl::GetFlag(FLAGS_retain_freed_memory) &&
                             saetrack::engine::RetainFreedHostMemory();

  saetrack::engine::EngineOptions engine_options;
  engine_options.device = absl::GetFlag(FLAGS_device);
  engine_options.threads = absl::GetFlag(FLAGS_threads);
  engine_options.matmul_precision = absl::GetFlag(FLAGS_precision);
  // Checked here so that a typo names the flag rather than an engine option.
  if (const std::string& p = engine_options.matmul_precision;
      p != "auto" && p != "fp32" && p != "bf16") {
    std::cerr << "saetrack-worker: --precision: '" << p
              << "' is not one of auto, fp32, bf16" << std::endl;
    return 1;
  }
  auto engine = saetrack::engine::NewTorchEngine(engine_options);
  if (!engine.ok()) {
    std::cerr << "saetrack-worker: " << engine.status() << std::endl;
    return 1;
  }

  saetrack::worker::WorkerOptions options;
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  options.name = absl::GetFlag(FLAGS_name);
  options.security.token_file = absl::GetFlag(FLAGS_token_file);
  if (options.security.token_file.empty()) {
    if (const char* env = std::getenv("SAETRACK_TOKEN_FILE")) {
      options.security.token_file = env;
    }
  }
  options.security.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.security.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  options.device = engine_options.device;
  options.threads = engine_options.threads;
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.max_tasks = absl::GetFlag(FLAGS_max_tasks);
  options.lease_wait = absl::GetFlag(FLAGS_lease_wait);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.checkpoint_every_tokens =
      absl::GetFlag(FLAGS_checkpoint_every_tokens);
  options.memory_bytes = absl::GetFlag(FLAGS_memory_bytes);
  if (options.memory_bytes < 0) {
    std::cerr << "saetrack-worker: --memory_bytes: must be >= 0" << std::endl;
    return 1;
  }
  if (retain_memory) {
    options.when_idle = saetrack::engine::ReleaseFreedHostMemory;
  }
  auto worker = saetrack::worker::Worker::Create(options, *std::move(engine));
  if (!worker.ok()) {
    std::cerr << "saetrack-worker: " << worker.status() << std::endl;
    return 1;
  }
  StopOnSignal(worker->get(), stop_signals);
  std::cerr << "saetrack-worker: coordinator " << options.coordinator
            << ", device " << options.device << ", precision "
            << engine_options.matmul_precision << ", metrics on port "
            << (*worker)->metrics_port() << std::endl;
  absl::Status status = (*worker)->Run();
  if (!status.ok()) {
    std::cerr << "saetrack-worker: " << status << std::endl;
    return 1;
  }
  return 0;
}
