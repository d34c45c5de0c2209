// A minimal HTTP/1.0 server for the worker's Prometheus metrics.
//
// Why not prometheus::Exposer: it runs on civetweb, whose worker threads are
// created with a small fixed stack; in a process that links LibTorch, whose
// static thread-local storage is larger than that stack, pthread_create fails
// ("Cannot create first worker thread") and the Exposer cannot start. This
// server serves the same prometheus-cpp registry, serialised by prometheus-cpp,
// from one ordinary thread.
#ifndef SAETRACK_WORKER_INTERNAL_METRICS_HTTP_SERVER_H_
#define SAETRACK_WORKER_INTERNAL_METRICS_HTTP_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace prometheus {
class Registry;
}

namespace saetrack::worker {

// Serves GET /metrics (Prometheus text format) and GET /healthz ("ok").
// Owns its listening socket and serving thread; the destructor stops both.
// Thread-safe: the registry is read under prometheus-cpp's own locking.
class MetricsHttpServer {
 public:
  // Binds `listen_address` (HOST:PORT, IPv4; port 0 picks a free port) and
  // starts serving `registry`. Errors: kInvalidArgument for a malformed
  // address, kUnavailable when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen_address,
      std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port,
                    std::shared_ptr<prometheus::Registry> registry);
  void Serve();
  void Answer(int connection);

  const int fd_;
  const int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace saetrack::worker

#endif  // SAETRACK_WORKER_INTERNAL_METRICS_HTTP_SERVER_H_
