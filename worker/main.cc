// saetrack-worker: leases SAE-training tasks from a coordinator and runs them
// on LibTorch (CPU or CUDA).
#include <csignal>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "worker/engine/training_engine.h"
#include "worker/worker.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7070",
          "host:port of the coordinator");
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

namespace {

// Stops the worker on SIGTERM / SIGINT, from a normal thread rather than the
// signal handler.
void StopOnSignal(saetrack::worker::Worker* worker) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([worker, signals] {
    int signal = 0;
    sigwait(&signals, &signal);
    worker->Stop();
  }).detach();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Leases SAE-training tasks from a saetrack coordinator and runs them.\n"
      "usage: saetrack-worker --coordinator HOST:PORT [flags]");
  absl::ParseCommandLine(argc, argv);

  saetrack::engine::EngineOptions engine_options;
  engine_options.device = absl::GetFlag(FLAGS_device);
  engine_options.threads = absl::GetFlag(FLAGS_threads);
  auto engine = saetrack::engine::NewTorchEngine(engine_options);
  if (!engine.ok()) {
    std::cerr << "saetrack-worker: " << engine.status() << std::endl;
    return 1;
  }

  saetrack::worker::WorkerOptions options;
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  options.name = absl::GetFlag(FLAGS_name);
  options.device = engine_options.device;
  options.threads = engine_options.threads;
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.max_tasks = absl::GetFlag(FLAGS_max_tasks);
  options.lease_wait = absl::GetFlag(FLAGS_lease_wait);
  auto worker = saetrack::worker::Worker::Create(options, *std::move(engine));
  if (!worker.ok()) {
    std::cerr << "saetrack-worker: " << worker.status() << std::endl;
    return 1;
  }
  StopOnSignal(worker->get());
  std::cerr << "saetrack-worker: coordinator " << options.coordinator
            << ", device " << options.device << ", metrics on port "
            << (*worker)->metrics_port() << std::endl;
  absl::Status status = (*worker)->Run();
  if (!status.ok()) {
    std::cerr << "saetrack-worker: " << status << std::endl;
    return 1;
  }
  return 0;
}
