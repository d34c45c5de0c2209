#include "web/web_server.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "web/internal/http_mapping.h"

namespace saetrack::web {

using internal::QueryParams;

namespace {

// With a charset, so that cpp-httplib does not compress it: Debian's build
// picks brotli at its default quality (11) whenever a browser accepts it,
// which took 0.2-3 s per answer (a 500 KB feature history) on two cores.
// Served on loopback by default; put a compressing proxy in front for slow
// links.
constexpr char kJson[] = "application/json; charset=utf-8";

QueryParams ParamsOf(const httplib::Request& req) {
  QueryParams params;
  for (const auto& [name, value] : req.params) params[name] = value;
  return params;
}

void ReplyError(const absl::Status& status, httplib::Response& res) {
  res.status = internal::HttpStatusFor(status.code());
  res.set_content(internal::ErrorJson(status), kJson);
}

// Header values that gRPC accepts as metadata: printable ASCII.
bool IsPrintableAscii(absl::string_view value) {
  for (char c : value) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

absl::StatusOr<std::pair<std::string, int>> ParseListen(
    const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen: '", listen, "' is not host:port (port 0 picks a free one)"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::make_pair(host, port);
}

}  // namespace

class WebServer::Impl {
 public:
  explicit Impl(const WebServerOptions& options) : options_(options) {
    std::shared_ptr<grpc::ChannelCredentials> credentials;
    if (options.tls_ca_pem.empty()) {
      credentials = grpc::InsecureChannelCredentials();
    } else {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = options.tls_ca_pem;
      credentials = grpc::SslCredentials(ssl);
    }
    auto channel = grpc::CreateChannel(options.coordinator, credentials);
    jobs_ = v1::JobService::NewStub(channel);
    queries_ = v1::QueryService::NewStub(channel);
  }

  absl::Status Start() {
    absl::StatusOr<std::pair<std::string, int>> listen =
        ParseListen(options_.listen);
    if (!listen.ok()) return listen.status();
    if (!options_.static_dir.empty()) {
      if (!std::filesystem::is_regular_file(
              std::filesystem::path(options_.static_dir) / "index.html")) {
        return absl::InvalidArgumentError(absl::StrCat(
            "static_dir: '", options_.static_dir,
            "' holds no index.html (build the front end: "
            "cmake --build build --target saetrack_web_frontend)"));
      }
      index_path_ = options_.static_dir + "/index.html";
      if (!server_.set_mount_point("/", options_.static_dir)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "static_dir: '", options_.static_dir, "' is not a directory"));
      }
    }
    // The bundle (~80 KB) likewise, uncompressed (see kJson).
    server_.set_file_extension_and_mimetype_mapping(
        "js", "application/javascript; charset=utf-8");
    const int threads = std::max(2, options_.threads);
    server_.new_task_queue = [threads] {
      return new httplib::ThreadPool(threads);
    };
    Routes();
    if (listen->second == 0) {
      port_ = server_.bind_to_any_port(listen->first);
    } else {
      port_ = server_.bind_to_port(listen->first, listen->second)
                  ? listen->second
                  : -1;
    }
    if (port_ <= 0) {
      return absl::UnavailableError(
          absl::StrCat("listen: cannot bind ", options_.listen));
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    return absl::OkStatus();
  }

  ~Impl() {
    Shutdown();
    if (thread_.joinable()) thread_.join();
  }

  int port() const { return port_; }

  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&stopped_));
  }

  void Shutdown() {
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return;
      stopped_ = true;
      for (grpc::ClientContext* watch : watches_) watch->TryCancel();
    }
    server_.stop();
  }

 private:
  // Deadline and authorization of one call made for `req`.
  absl::Status Prepare(const httplib::Request& req, absl::Duration timeout,
                       grpc::ClientContext* context) const {
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(timeout));
    const std::string auth = req.get_header_value("Authorization");
    if (!auth.empty()) {
      if (!absl::StartsWithIgnoreCase(auth, "Bearer ") ||
          !IsPrintableAscii(auth)) {
        return absl::UnauthenticatedError(
            "Authorization: expected 'Bearer <token>'");
      }
      context->AddMetadata("authorization", auth);
    } else if (!options_.token.empty()) {
      context->AddMetadata("authorization", "Bearer " + options_.token);
    }
    return absl::OkStatus();
  }

  // Runs one unary call and writes its answer (or error) as JSON.
  template <typename Response, typename Call>
  void Unary(const httplib::Request& req, httplib::Response& res,
             const Call& call) const {
    grpc::ClientContext context;
    if (absl::Status s = Prepare(req, options_.call_timeout, &context);
        !s.ok()) {
      return ReplyError(s, res);
    }
    Response response;
    grpc::Status status = call(&context, &response);
    if (!status.ok()) return ReplyError(FromGrpcStatus(status), res);
    res.set_header("Cache-Control", "no-store");
    res.set_content(internal::ToJson(response), kJson);
  }

  // The job id and layer of a /api/jobs/J/layers/L/... path.
  static absl::Status JobAndLayer(const httplib::Request& req,
                                  std::string* job_id, int32_t* layer) {
    *job_id = req.matches[1].str();
    if (absl::Status s = internal::CheckJobId(*job_id); !s.ok()) return s;
    absl::StatusOr<int32_t> l =
        internal::ParseIndex("layer", req.matches[2].str());
    if (!l.ok()) return l.status();
    *layer = *l;
    return absl::OkStatus();
  }

  void Routes() {
    server_.Get("/api/jobs", [this](const httplib::Request& req,
                                    httplib::Response& res) {
      QueryParams params = ParamsOf(req);
      if (absl::Status s = internal::CheckJobListParams(params); !s.ok()) {
        return ReplyError(s, res);
      }
      v1::ListJobsRequest request;
      if (int size = 0; absl::SimpleAtoi(params["page_size"], &size)) {
        request.set_page_size(size);
      }
      request.set_page_token(params["page_token"]);
      Unary<v1::ListJobsResponse>(
          req, res, [&](grpc::ClientContext* c, v1::ListJobsResponse* r) {
            return jobs_->ListJobs(c, request, r);
          });
    });
    server_.Get(R"(/api/jobs/([^/]+))", [this](const httplib::Request& req,
                                               httplib::Response& res) {
      v1::GetJobRequest request;
      request.set_job_id(req.matches[1].str());
      if (absl::Status s = internal::CheckJobId(request.job_id()); !s.ok()) {
        return ReplyError(s, res);
      }
      Unary<v1::Job>(req, res, [&](grpc::ClientContext* c, v1::Job* r) {
        return jobs_->GetJob(c, request, r);
      });
    });
    server_.Get(R"(/api/jobs/([^/]+)/watch)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Watch(req, res);
                });
    server_.Get(
        R"(/api/jobs/([^/]+)/layers/([^/]+)/(metrics|quality|drift))",
        [this](const httplib::Request& req, httplib::Response& res) {
          std::string job_id;
          int32_t layer = 0;
          if (absl::Status s = JobAndLayer(req, &job_id, &layer); !s.ok()) {
            return ReplyError(s, res);
          }
          if (!req.params.empty()) {
            return ReplyError(
                absl::InvalidArgumentError(absl::StrCat(
                    "unknown query parameter '", req.params.begin()->first,
                    "'; this call takes none")),
                res);
          }
          const std::string what = req.matches[3].str();
          if (what == "metrics") {
            v1::GetCheckpointMetricsRequest request;
            request.set_job_id(job_id);
            request.set_layer(layer);
            Unary<v1::GetCheckpointMetricsResponse>(
                req, res,
                [&](grpc::ClientContext* c,
                    v1::GetCheckpointMetricsResponse* r) {
                  return queries_->GetCheckpointMetrics(c, request, r);
                });
          } else if (what == "quality") {
            v1::GetQualityChecksRequest request;
            request.set_job_id(job_id);
            request.set_layer(layer);
            Unary<v1::GetQualityChecksResponse>(
                req, res,
                [&](grpc::ClientContext* c, v1::GetQualityChecksResponse* r) {
                  return queries_->GetQualityChecks(c, request, r);
                });
          } else {
            v1::GetDriftSummaryRequest request;
            request.set_job_id(job_id);
            request.set_layer(layer);
            Unary<v1::DriftSummary>(
                req, res, [&](grpc::ClientContext* c, v1::DriftSummary* r) {
                  return queries_->GetDriftSummary(c, request, r);
                });
          }
        });
    server_.Get(R"(/api/jobs/([^/]+)/layers/([^/]+)/features)",
                [this](const httplib::Request& req, httplib::Response& res) {
                  std::string job_id;
                  int32_t layer = 0;
                  if (absl::Status s = JobAndLayer(req, &job_id, &layer);
                      !s.ok()) {
                    return ReplyError(s, res);
                  }
                  absl::StatusOr<v1::ListFeaturesRequest> request =
                      internal::ParseListFeatures(job_id, layer, ParamsOf(req));
                  if (!request.ok()) return ReplyError(request.status(), res);
                  Unary<v1::ListFeaturesResponse>(
                      req, res,
                      [&](grpc::ClientContext* c, v1::ListFeaturesResponse* r) {
                        return queries_->ListFeatures(c, *request, r);
                      });
                });
    server_.Get(
        R"(/api/jobs/([^/]+)/layers/([^/]+)/features/([^/]+))",
        [this](const httplib::Request& req, httplib::Response& res) {
          std::string job_id;
          int32_t layer = 0;
          if (absl::Status s = JobAndLayer(req, &job_id, &layer); !s.ok()) {
            return ReplyError(s, res);
          }
          absl::StatusOr<int32_t> feature =
              internal::ParseIndex("feature", req.matches[3].str());
          if (!feature.ok()) return ReplyError(feature.status(), res);
          absl::StatusOr<v1::GetFeatureHistoryRequest> request =
              internal::ParseFeatureHistory(job_id, layer, *feature,
                                            ParamsOf(req));
          if (!request.ok()) return ReplyError(request.status(), res);
          Unary<v1::FeatureHistory>(
              req, res, [&](grpc::ClientContext* c, v1::FeatureHistory* r) {
                return queries_->GetFeatureHistory(c, *request, r);
              });
        });
    server_.Get(R"(/api(/.*)?)", [](const httplib::Request& req,
                                    httplib::Response& res) {
      ReplyError(absl::NotFoundError(absl::StrCat("no API call at ", req.path,
                                                  " (see web/web_server.h)")),
                 res);
    });
    if (!index_path_.empty()) {
      // The front end's own routes: history-API URLs that a user may share
      // or reload.
      server_.Get(R"(/|/jobs(/.*)?)",
                  [this](const httplib::Request&, httplib::Response& res) {
                    std::ifstream in(index_path_, std::ios::binary);
                    std::string html((std::istreambuf_iterator<char>(in)),
                                     std::istreambuf_iterator<char>());
                    res.set_header("Cache-Control", "no-cache");
                    res.set_content(html, "text/html; charset=utf-8");
                  });
    }
  }

  // Server-sent events over JobService.WatchJob. The job is looked up first
  // so that an unknown job is a plain 404.
  void Watch(const httplib::Request& req, httplib::Response& res) {
    v1::GetJobRequest get;
    get.set_job_id(req.matches[1].str());
    if (absl::Status s = internal::CheckJobId(get.job_id()); !s.ok()) {
      return ReplyError(s, res);
    }
    {
      grpc::ClientContext context;
      if (absl::Status s = Prepare(req, options_.call_timeout, &context);
          !s.ok()) {
        return ReplyError(s, res);
      }
      v1::Job job;
      grpc::Status status = jobs_->GetJob(&context, get, &job);
      if (!status.ok()) return ReplyError(FromGrpcStatus(status), res);
    }
    auto context = std::make_shared<grpc::ClientContext>();
    if (absl::Status s = Prepare(req, options_.watch_timeout, context.get());
        !s.ok()) {
      return ReplyError(s, res);
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) {
        return ReplyError(absl::UnavailableError("shutting down"), res);
      }
      watches_.insert(context.get());
    }
    res.set_header("Cache-Control", "no-store");
    const std::string job_id = get.job_id();
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, context, job_id](size_t, httplib::DataSink& sink) {
          v1::WatchJobRequest request;
          request.set_job_id(job_id);
          std::unique_ptr<grpc::ClientReader<v1::JobUpdate>> reader =
              jobs_->WatchJob(context.get(), request);
          v1::JobUpdate update;
          bool open = true;
          while (reader->Read(&update)) {
            const std::string event =
                absl::StrCat("data: ", internal::ToJson(update), "\n\n");
            if (!sink.write(event.data(), event.size())) {
              open = false;
              context->TryCancel();
              break;
            }
          }
          grpc::Status status = reader->Finish();
          if (open && !status.ok() &&
              status.error_code() != grpc::StatusCode::CANCELLED) {
            const std::string event = absl::StrCat(
                "event: error\ndata: ",
                internal::ErrorJson(FromGrpcStatus(status)), "\n\n");
            sink.write(event.data(), event.size());
          }
          if (open) sink.done();
          return open;
        },
        [this, context](bool) {
          absl::MutexLock lock(&mu_);
          watches_.erase(context.get());
        });
  }

  const WebServerOptions options_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::QueryService::Stub> queries_;
  httplib::Server server_;
  std::string index_path_;
  int port_ = -1;
  std::thread thread_;
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // Open /watch calls, cancelled by Shutdown().
  std::set<grpc::ClientContext*> watches_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<WebServer>> WebServer::Start(
    const WebServerOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  if (absl::Status s = impl->Start(); !s.ok()) return s;
  return std::unique_ptr<WebServer>(new WebServer(std::move(impl)));
}

WebServer::WebServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WebServer::~WebServer() = default;
int WebServer::port() const { return impl_->port(); }
void WebServer::Wait() { impl_->Wait(); }
void WebServer::Shutdown() { impl_->Shutdown(); }

}  // namespace saetrack::web
