#include "server/coordinator.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "format/confined_path.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "prometheus/exposer.h"
#include "proto/access_tokens.h"
#include "proto/channel_security.h"
#include "server/internal/admin_service.h"
#include "server/internal/artifact_staging.h"
#include "server/internal/auth.h"
#include "server/internal/checkpoint_follower.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/job_service.h"
#include "server/internal/job_validator.h"
#include "server/internal/query_service.h"
#include "server/internal/result_store.h"
#include "server/internal/summariser.h"
#include "server/internal/task_scheduler.h"
#include "server/internal/worker_service.h"
#include "storage/kv_store.h"

namespace saetrack {
namespace {

// Artifact chunks are ~1 MiB; leave room for workers that send larger ones.
constexpr int kMaxReceiveMessageBytes = 64 << 20;

const char* const kServiceNames[] = {
    "saetrack.v1.AdminService", "saetrack.v1.JobService",
    "saetrack.v1.QueryService", "saetrack.v1.WorkerService"};

// Stops a prometheus::Exposer quickly. Its civetweb server notices the stop
// only when its accept poll returns, which takes up to 2 s when idle;
// connecting to the port wakes the poll.
void StopExposer(std::unique_ptr<prometheus::Exposer> exposer, int port,
                 const std::string& bind_address) {
  if (exposer == nullptr) return;
  std::string host = bind_address.substr(0, bind_address.rfind(':'));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (host == "0.0.0.0" ||
      inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  }
  absl::Notification stopped;
  std::thread waker([&] {
    do {
      const int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (fd < 0) return;
      connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
      close(fd);
    } while (!stopped.WaitForNotificationWithTimeout(absl::Milliseconds(20)));
  });
  exposer.reset();
  stopped.Notify();
  waker.join();
}

// Whether the host of `address` (HOST:PORT, [IPv6]:PORT or unix:) accepts
// connections from this machine only: 127.0.0.0/8, ::1, localhost or a unix
// socket. An empty host, 0.0.0.0, [::] or any other name or address is
// beyond loopback.
bool IsLoopbackAddress(const std::string& address) {
  if (absl::StartsWith(address, "unix:") ||
      absl::StartsWith(address, "unix-abstract:")) {
    return true;
  }
  const size_t colon = address.rfind(':');
  std::string host =
      colon == std::string::npos ? address : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (absl::AsciiStrToLower(host) == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6);
  }
  return false;
}

absl::Status CheckSecurityOptions(const CoordinatorOptions& o) {
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert_file / tls_key_file: TLS needs both the certificate and "
        "its key");
  }
  const bool tls = !o.tls_cert_file.empty();
  if (!o.tls_client_ca_file.empty() && !tls) {
    return absl::InvalidArgumentError(
        "tls_client_ca_file: client certificates need TLS (tls_cert_file, "
        "tls_key_file)");
  }
  if (IsLoopbackAddress(o.listen_address)) return absl::OkStatus();
  if (!o.insecure) {
    std::vector<std::string> missing;
    if (!tls) missing.push_back("--tls_cert and --tls_key");
    if (o.token_file.empty()) missing.push_back("--token_file");
    bool has_root = false;
    for (const std::string& root : o.data_roots) has_root |= !root.empty();
    if (!has_root) missing.push_back("--data_roots");
    if (!missing.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "listen_address ", o.listen_address,
          " is beyond loopback: refusing to serve without ",
          absl::StrJoin(missing, " and "),
          " (or pass --insecure to serve anyone who can reach the port)"));
    }
  }
  if (!o.token_file.empty() && !tls) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token_file: bearer tokens travel beyond loopback only over TLS; "
        "listen_address ",
        o.listen_address, " needs --tls_cert and --tls_key"));
  }
  return absl::OkStatus();
}

// Checks that `backup_root` neither is, lies inside nor contains `data_dir`
// (compared with symlinks resolved as far as the paths exist).
absl::Status CheckBackupRoot(const CoordinatorOptions& o) {
  if (o.backup_root.empty()) return absl::OkStatus();
  std::error_code ec;
  const std::filesystem::path root = std::filesystem::weakly_canonical(
      std::filesystem::absolute(o.backup_root, ec), ec);
  const std::filesystem::path data = std::filesystem::weakly_canonical(
      std::filesystem::absolute(o.data_dir, ec), ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "backup_root: cannot resolve '", o.backup_root, "': ", ec.message()));
  }
  const std::string r = root.string();
  const std::string d = data.string();
  if (format::IsUnderRoot(r, d) || format::IsUnderRoot(d, r)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--backup_root '", o.backup_root, "' overlaps --data_dir '", o.data_dir,
        "': backups go outside the live data directory"));
  }
  return absl::OkStatus();
}

// The credentials of the gRPC port: TLS when a certificate is given (mutual
// when a client CA is), else plaintext. With a token file, an
// AuthMetadataProcessor checks every call; gRPC runs one only for secure
// credentials, so plaintext with tokens uses local credentials, which accept
// plaintext connections from loopback peers only (CheckSecurityOptions
// allows plaintext with tokens on loopback addresses only).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const CoordinatorOptions& o, const server::Authenticator* authenticator) {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (!o.tls_cert_file.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    absl::StatusOr<std::string> cert =
        ReadSecurityFile("tls_cert_file", o.tls_cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key =
        ReadSecurityFile("tls_key_file", o.tls_key_file);
    if (!key.ok()) return key.status();
    ssl.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
    if (!o.tls_client_ca_file.empty()) {
      absl::StatusOr<std::string> ca =
          ReadSecurityFile("tls_client_ca_file", o.tls_client_ca_file);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *std::move(ca);
      ssl.client_certificate_request =
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    credentials = grpc::SslServerCredentials(ssl);
  } else if (authenticator != nullptr) {
    credentials = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    return grpc::InsecureServerCredentials();
  }
  if (authenticator != nullptr) {
    credentials->SetAuthMetadataProcessor(authenticator->NewProcessor());
  }
  return credentials;
}

absl::Status CheckOptions(const CoordinatorOptions& o) {
  if (o.data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir: required");
  }
  if (o.listen_address.empty()) {
    return absl::InvalidArgumentError("listen_address: required");
  }
  if (o.lease_ttl_ms <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ttl_ms: ", o.lease_ttl_ms, " must be > 0"));
  }
  if (o.retry_backoff_ms < 0 || o.retry_backoff_max_ms < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "retry_backoff_ms / retry_backoff_max_ms: ", o.retry_backoff_ms, " / ",
        o.retry_backoff_max_ms, " must be >= 0"));
  }
  if (o.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_attempts: ", o.max_attempts, " must be >= 1"));
  }
  if (o.max_artifact_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_artifact_bytes: ", o.max_artifact_bytes, " must be > 0"));
  }
  if (o.max_staged_bytes < o.max_artifact_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_staged_bytes: ", o.max_staged_bytes,
        " must be at least max_artifact_bytes ", o.max_artifact_bytes,
        " (or no artifact of that size could ever be staged)"));
  }
  if (o.max_staged_bytes_per_worker < o.max_artifact_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_staged_bytes_per_worker: ", o.max_staged_bytes_per_worker,
        " must be at least max_artifact_bytes ", o.max_artifact_bytes));
  }
  if (o.sae_part_bytes < 1024 || o.sae_part_bytes > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sae_part_bytes: ", o.sae_part_bytes, " must be in [1024, 2^31]"));
  }
  if (absl::Status s = CheckSecurityOptions(o); !s.ok()) return s;
  bool has_root = false;
  for (const std::string& root : o.data_roots) has_root |= !root.empty();
  if (!has_root && !o.insecure) {
    if (!o.token_file.empty()) {
      return absl::FailedPreconditionError(
          "--data_roots: required for a coordinator with --token_file (or "
          "pass --insecure): without roots any client may name any file on "
          "this machine");
    }
    if (!IsLoopbackAddress(o.listen_address)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--data_roots: required for a coordinator listening on ",
          o.listen_address,
          " beyond loopback (or pass --insecure): without roots any client "
          "may name any file on this machine"));
    }
  }
  if (!has_root) {
    std::fprintf(stderr,
                 "saetrack-coordinator: warning: no --data_roots; any client "
                 "that reaches %s may name any file on this machine\n",
                 o.listen_address.c_str());
  }
  return CheckBackupRoot(o);
}

// Owns every part of a running coordinator. Members are declared in
// dependency order, so destruction tears down users before what they use.
class CoordinatorImpl final : public Coordinator {
 public:
  explicit CoordinatorImpl(const CoordinatorOptions& options)
      : options_(options),
        clock_(options.clock != nullptr ? options.clock : &system_clock_),
        validator_(options.data_roots, options.max_artifact_bytes) {}

  ~CoordinatorImpl() override { Shutdown(); }

  absl::Status Init();

  int port() const override { return port_; }
  int metrics_port() const override { return metrics_port_; }
  void Shutdown() override;

 private:
  const CoordinatorOptions options_;
  SystemClock system_clock_;
  Clock* const clock_;
  const server::JobValidator validator_;
  // Null without a token file. Outlives the server (its processor refers
  // to it).
  std::unique_ptr<server::Authenticator> authenticator_;

  std::unique_ptr<storage::KvStore> store_;
  std::unique_ptr<server::CoordinatorMetrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<server::TaskScheduler> scheduler_;
  std::unique_ptr<server::ResultStore> results_;
  std::unique_ptr<server::Summariser> summariser_;
  std::unique_ptr<server::CheckpointFollower> follower_;
  std::unique_ptr<server::ArtifactStaging> staging_;
  std::unique_ptr<server::JobServiceImpl> job_service_;
  std::unique_ptr<server::QueryServiceImpl> query_service_;
  std::unique_ptr<server::WorkerServiceImpl> worker_service_;
  std::unique_ptr<server::AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  int metrics_port_ = 0;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

absl::Status CoordinatorImpl::Init() {
  // Before the database: bad security files change nothing on disk.
  if (!options_.token_file.empty()) {
    absl::StatusOr<AccessTokenTable> tokens =
        AccessTokenTable::Load(options_.token_file);
    if (!tokens.ok()) return tokens.status();
    if (tokens->entries().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token_file ", options_.token_file,
          ": holds no token (create one with `saetrack admin token create`)"));
    }
    authenticator_ =
        std::make_unique<server::Authenticator>(*std::move(tokens));
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      ServerCredentials(options_, authenticator_.get());
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::unique_ptr<storage::KvStore>> store =
      storage::OpenRocksDbStore(
          {.path = (std::filesystem::path(options_.data_dir) / "db").string()});
  if (!store.ok()) return store.status();

  metrics_ = std::make_unique<server::CoordinatorMetrics>();
  server::CoordinatorMetrics* metrics = metrics_.get();
  store_ = storage::NewErrorObservingStore(
      *std::move(store),
      [metrics](storage::StoreOp op) { metrics->StorageError(op); });
  metrics_->SetInsecureMode(options_.insecure);
  if (options_.insecure) {
    std::fprintf(stderr,
                 "saetrack-coordinator: WARNING: --insecure: serving %s "
                 "with%s TLS and with%s bearer tokens; anyone who can reach "
                 "the port may %s\n",
                 options_.listen_address.c_str(),
                 options_.tls_cert_file.empty() ? "out" : "",
                 options_.token_file.empty() ? "out" : "",
                 options_.token_file.empty()
                     ? "submit and cancel jobs, act as a worker and back up "
                       "the database"
                     : "read the traffic");
  }
  // Workers heartbeat every lease_ttl / 3; active: seen within 3 intervals.
  metrics_->SetScrapeSources(
      clock_, absl::Milliseconds(options_.lease_ttl_ms),
      [store = store_.get()] { return store->LiveDataBytes(); });
  if (!options_.metrics_listen_address.empty()) {
    try {
      exposer_ = std::make_unique<prometheus::Exposer>(
          options_.metrics_listen_address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ",
                       options_.metrics_listen_address, ": ", e.what()));
    }
    exposer_->RegisterCollectable(metrics_->collectable());
    std::vector<int> ports = exposer_->GetListeningPorts();
    metrics_port_ = ports.empty() ? 0 : ports.front();
  }

  server::SchedulerOptions scheduler_options;
  scheduler_options.lease_ttl = absl::Milliseconds(options_.lease_ttl_ms);
  scheduler_options.max_attempts = options_.max_attempts;
  scheduler_options.retry_backoff =
      absl::Milliseconds(options_.retry_backoff_ms);
  scheduler_options.retry_backoff_max =
      absl::Milliseconds(options_.retry_backoff_max_ms);
  scheduler_options.expiry_check_interval =
      absl::Milliseconds(options_.lease_check_interval_ms);
  absl::StatusOr<std::unique_ptr<server::TaskScheduler>> scheduler =
      server::TaskScheduler::Recover(store_.get(), clock_, metrics_.get(),
                                     scheduler_options);
  if (!scheduler.ok()) return scheduler.status();
  scheduler_ = *std::move(scheduler);
  results_ = std::make_unique<server::ResultStore>(store_.get(),
                                                   options_.sae_part_bytes);
  // Parts of SAEs whose completion never committed (a crash mid-commit).
  absl::StatusOr<int> cleaned = results_->RecoverSaeParts();
  if (!cleaned.ok()) return cleaned.status();
  if (*cleaned > 0) {
    std::fprintf(stderr,
                 "saetrack-coordinator: removed the parts of %d SAE(s) whose "
                 "completion never committed\n",
                 *cleaned);
  }
  summariser_ = std::make_unique<server::Summariser>(
      scheduler_.get(), results_.get(), store_.get(),
      server::SummariserOptions());
  summariser_->Start();
  follower_ = std::make_unique<server::CheckpointFollower>(
      scheduler_.get(), &validator_, format::DataRoots(options_.data_roots));
  follower_->Start();
  metrics_->SetFollowSource(
      [scheduler = scheduler_.get()] { return scheduler->FollowingJobs(); });

  server::WorkerServiceOptions worker_options;
  worker_options.lease_ttl = scheduler_options.lease_ttl;
  worker_options.max_artifact_bytes = options_.max_artifact_bytes;
  worker_options.max_staged_bytes = options_.max_staged_bytes;
  worker_options.max_staged_bytes_per_worker =
      options_.max_staged_bytes_per_worker;
  absl::StatusOr<std::unique_ptr<server::ArtifactStaging>> staging =
      server::ArtifactStaging::Open(
          (std::filesystem::path(options_.data_dir) / "staging").string());
  if (!staging.ok()) return staging.status();
  staging_ = *std::move(staging);
  job_service_ = std::make_unique<server::JobServiceImpl>(
      &validator_, scheduler_.get(), metrics_.get(), authenticator_.get());
  const format::DataRoots roots(options_.data_roots);
  worker_options.data_roots = roots.roots();
  query_service_ = std::make_unique<server::QueryServiceImpl>(
      scheduler_.get(), results_.get(), metrics_.get(), roots);
  worker_service_ = std::make_unique<server::WorkerServiceImpl>(
      scheduler_.get(), results_.get(), staging_.get(), metrics_.get(),
      worker_options, authenticator_.get());
  admin_service_ = std::make_unique<server::AdminServiceImpl>(
      store_.get(), metrics_.get(), options_.backup_root);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.listen_address, *std::move(credentials),
                           &port_);
  builder.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  builder.RegisterService(job_service_.get());
  builder.RegisterService(query_service_.get());
  builder.RegisterService(worker_service_.get());
  builder.RegisterService(admin_service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen_address));
  }
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus("", true);
    for (const char* name : kServiceNames) health->SetServingStatus(name, true);
  }
  return absl::OkStatus();
}

void CoordinatorImpl::Shutdown() {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (server_ != nullptr) {
    if (grpc::HealthCheckServiceInterface* health =
            server_->GetHealthCheckService()) {
      health->Shutdown();  // Everything NOT_SERVING from now on.
    }
  }
  // Long polls return first, so that draining does not wait for them.
  if (scheduler_ != nullptr) scheduler_->Shutdown();
  // WatchJob streams end (UNAVAILABLE) with the scheduler.
  if (job_service_ != nullptr) job_service_->Stop();
  if (summariser_ != nullptr) summariser_->Stop();
  if (follower_ != nullptr) follower_->Stop();
  if (server_ != nullptr) {
    server_->Shutdown(absl::ToChronoTime(
        absl::Now() + absl::Milliseconds(options_.shutdown_grace_ms)));
    server_->Wait();
  }
  StopExposer(std::move(exposer_), metrics_port_,
              options_.metrics_listen_address);
  summariser_.reset();
  follower_.reset();
  scheduler_.reset();
  results_.reset();
  store_.reset();  // Closes the database.
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(
    const CoordinatorOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  auto coordinator = std::make_unique<CoordinatorImpl>(options);
  if (absl::Status s = coordinator->Init(); !s.ok()) return s;
  return coordinator;
}

}  // namespace saetrack
