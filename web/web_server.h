// saetrack-web: the feature browser's HTTP server. It serves the built front
// end (web/frontend) and a JSON API under /api/ that mirrors the
// coordinator's JobService and QueryService calls; it is a gRPC client of the
// coordinator and holds no state of its own.
//
// API (every answer is the proto JSON mapping of the RPC's response, field
// names as in the .proto files, like the CLI's --json):
//   GET /api/jobs[?page_size=N&page_token=T]          JobService.ListJobs
//   GET /api/jobs/J                                   JobService.GetJob
//   GET /api/jobs/J/watch       server-sent events: one `data:` line per
//                               JobService.WatchJob update (JobUpdate), an
//                               `event: error` with the error JSON on failure
//   GET /api/jobs/J/layers/L/metrics                  GetCheckpointMetrics
//   GET /api/jobs/J/layers/L/quality                  GetQualityChecks
//   GET /api/jobs/J/layers/L/drift                    GetDriftSummary
//   GET /api/jobs/J/layers/L/features?kind=&order=&min_formation=&
//       max_formation=&min_frequency=&max_frequency=&page_size=&page_token=
//                                                     ListFeatures
//   GET /api/jobs/J/layers/L/features/F[?contexts=1&before=N&after=N]
//                                                     GetFeatureHistory
// Errors: {"error": {"code": "NOT_FOUND", "http_status": 404, "message": ...}}
// with the gRPC code mapped to an HTTP status (internal/http_mapping.h).
// Input from the URL is checked before any RPC: a malformed id or number is a
// 400 naming the parameter.
//
// Auth: a request's own `Authorization: Bearer ...` header is passed to the
// coordinator as the call's `authorization` metadata; without one the
// server's token (Options::token) is sent, when set.
//
// Every other GET serves a file of Options::static_dir, and the front end's
// page URLs (/, /jobs, /jobs/...) serve its index.html (history routing).
#ifndef SAETRACK_WEB_WEB_SERVER_H_
#define SAETRACK_WEB_WEB_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace saetrack::web {

struct WebServerOptions {
  // Behaviour.
  // host:port of the coordinator's gRPC API.
  std::string coordinator = "127.0.0.1:7070";
  // host:port to listen on; port 0 picks a free one (WebServer::port()).
  std::string listen = "127.0.0.1:8080";
  // The built front end (index.html, assets/). Empty: only /api/ is served.
  std::string static_dir;
  // Bearer token sent to the coordinator when a request carries none.
  // Empty: none.
  std::string token;
  // PEM root certificates: when non-empty the channel to the coordinator
  // uses TLS with these roots; empty: plaintext.
  std::string tls_ca_pem;
  // Deadline of each unary call to the coordinator.
  absl::Duration call_timeout = absl::Seconds(30);
  // Longest a /watch stream stays open; the browser's EventSource
  // reconnects after it ends.
  absl::Duration watch_timeout = absl::Minutes(10);

  // Performance.
  // HTTP worker threads; each open /watch stream holds one.
  int threads = 16;
};

// Owns the HTTP server and its threads. Thread-safe.
class WebServer {
 public:
  // Binds `options.listen` and starts serving. Errors: kInvalidArgument for a
  // malformed listen address or a static_dir without index.html;
  // kUnavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<WebServer>> Start(
      const WebServerOptions& options);
  // Stops serving (Shutdown()) and joins the threads.
  ~WebServer();
  WebServer(const WebServer&) = delete;
  WebServer& operator=(const WebServer&) = delete;

  // The bound port.
  int port() const;
  // Blocks until Shutdown() is called.
  void Wait();
  // Ends open /watch streams and stops accepting requests. Idempotent.
  void Shutdown();

  class Impl;

 private:
  explicit WebServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace saetrack::web

#endif  // SAETRACK_WEB_WEB_SERVER_H_
