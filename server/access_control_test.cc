// The coordinator's TLS, bearer tokens and roles, over real loopback gRPC
// against an in-process coordinator on a real RocksDB: every RPC of the four
// services for every kind of caller, the cancel-own-job rule, TLS and mutual
// TLS with certificates made by openssl, and the refusal to serve beyond
// loopback without them.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "proto/access_tokens.h"
#include "proto/channel_security.h"
#include "saetrack/v1/admin.grpc.pb.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "server/coordinator.h"
#include "server/internal/test_fixtures.h"
#include "server/testing/test_certificates.h"

namespace saetrack {
namespace {

using server::testing::TempDir;
using ::testing::HasSubstr;

constexpr Role kRoles[] = {Role::kReader, Role::kSubmitter, Role::kWorker,
                           Role::kAdmin};

template <typename Context>
Context* WithDeadline(Context* context, int seconds = 10) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(seconds));
  return context;
}

struct ApiMethod {
  std::string path;  // "/saetrack.v1.Service/Method"
  bool client_streaming = false;
  bool server_streaming = false;
};

std::vector<ApiMethod> AllApiMethods() {
  const google::protobuf::ServiceDescriptor* services[] = {
      v1::Job::descriptor()->file()->FindServiceByName("JobService"),
      v1::FeatureHistory::descriptor()->file()->FindServiceByName(
          "QueryService"),
      v1::LeaseTaskRequest::descriptor()->file()->FindServiceByName(
          "WorkerService"),
      v1::BackupRequest::descriptor()->file()->FindServiceByName(
          "AdminService")};
  std::vector<ApiMethod> methods;
  for (const google::protobuf::ServiceDescriptor* service : services) {
    for (int i = 0; i < service->method_count(); ++i) {
      const google::protobuf::MethodDescriptor* m = service->method(i);
      methods.push_back(
          {absl::StrCat("/", service->full_name(), "/", m->name()),
           m->client_streaming(), m->server_streaming()});
    }
  }
  return methods;
}

// Calls `method` with one empty request message (an empty message is valid
// protobuf for every request type), reading any stream to its end.
grpc::Status CallWithEmptyRequest(grpc::Channel* channel,
                                  const ApiMethod& method) {
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  WithDeadline(&context, 5);
  if (method.client_streaming) {
    const grpc::internal::RpcMethod rpc(
        method.path.c_str(), grpc::internal::RpcMethod::CLIENT_STREAMING);
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(
            channel, rpc, &context, &response));
    writer->Write(request);
    writer->WritesDone();
    return writer->Finish();
  }
  if (method.server_streaming) {
    const grpc::internal::RpcMethod rpc(
        method.path.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING);
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
            channel, rpc, &context, request));
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  }
  const grpc::internal::RpcMethod rpc(method.path.c_str(),
                                      grpc::internal::RpcMethod::NORMAL_RPC);
  return grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel, rpc, &context, request, &response);
}

// The role definitions, independent of server/internal/auth.cc.
bool Allowed(const std::string& method, Role role) {
  const bool query = absl::StartsWith(method, "/saetrack.v1.QueryService/");
  const bool job_read = method == "/saetrack.v1.JobService/GetJob" ||
                        method == "/saetrack.v1.JobService/ListJobs" ||
                        method == "/saetrack.v1.JobService/WatchJob";
  // Follow mode's calls change a job as CancelJob does.
  const bool job_write = method == "/saetrack.v1.JobService/SubmitJob" ||
                         method == "/saetrack.v1.JobService/CancelJob" ||
                         method == "/saetrack.v1.JobService/AddCheckpoint" ||
                         method == "/saetrack.v1.JobService/CloseJob" ||
                         method == "/saetrack.v1.JobService/RefreshAnalysis";
  const bool worker = absl::StartsWith(method, "/saetrack.v1.WorkerService/");
  switch (role) {
    case Role::kReader:
      return query || job_read;
    case Role::kSubmitter:
      return query || job_read || job_write;
    case Role::kWorker:
      return worker;
    case Role::kAdmin:
      return true;
  }
  return false;
}

bool PassedAuth(const grpc::Status& s) {
  return s.error_code() != grpc::StatusCode::UNAUTHENTICATED &&
         s.error_code() != grpc::StatusCode::PERMISSION_DENIED;
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = dir_.path() + "/tokens";
    for (Role role : kRoles) {
      absl::StatusOr<std::string> token =
          CreateAccessToken(token_file_, RoleName(role), RoleName(role));
      ASSERT_TRUE(token.ok()) << token.status();
      tokens_[role] = *token;
    }
    absl::StatusOr<std::string> other =
        CreateAccessToken(token_file_, "submitter", "other-submitter");
    ASSERT_TRUE(other.ok()) << other.status();
    other_submitter_token_ = *other;
    absl::StatusOr<std::string> other_worker =
        CreateAccessToken(token_file_, "worker", "other-worker");
    ASSERT_TRUE(other_worker.ok()) << other_worker.status();
    other_worker_token_ = *other_worker;
  }

  void TearDown() override {
    if (coordinator_ != nullptr) coordinator_->Shutdown();
  }

  CoordinatorOptions Options() {
    CoordinatorOptions options;
    options.data_dir = dir_.path() + "/data";
    options.listen_address = "127.0.0.1:0";
    options.metrics_listen_address = "";
    options.shutdown_grace_ms = 1000;
    options.lease_check_interval_ms = 3600 * 1000;
    // A coordinator with tokens confines job paths to its data roots.
    options.data_roots = {dir_.path()};
    return options;
  }

  void Start(const CoordinatorOptions& options) {
    absl::StatusOr<std::unique_ptr<Coordinator>> c =
        Coordinator::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = *std::move(c);
  }

  std::string Target() const {
    return absl::StrCat("127.0.0.1:", coordinator_->port());
  }

  // A plaintext channel that sends `token` (empty: none).
  std::shared_ptr<grpc::Channel> Channel(const std::string& token) {
    LoadedChannelSecurity security;
    security.token = token;
    return NewSecureChannel(Target(), security);
  }

  TempDir dir_;
  std::string token_file_;
  std::map<Role, std::string> tokens_;
  std::string other_submitter_token_;
  std::string other_worker_token_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(SecurityTest, EveryRpcTimesEveryCaller) {
  CoordinatorOptions options = Options();
  options.token_file = token_file_;
  Start(options);
  const std::vector<ApiMethod> methods = AllApiMethods();
  ASSERT_EQ(methods.size(), 22u);
  std::shared_ptr<grpc::Channel> anonymous = Channel("");
  std::shared_ptr<grpc::Channel> bad = Channel(std::string(64, 'f'));
  std::map<Role, std::shared_ptr<grpc::Channel>> by_role;
  for (Role role : kRoles) by_role[role] = Channel(tokens_[role]);

  int passed = 0;
  for (const ApiMethod& method : methods) {
    grpc::Status none = CallWithEmptyRequest(anonymous.get(), method);
    EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << method.path << ": " << none.error_message();
    EXPECT_THAT(none.error_message(), HasSubstr("no bearer token"));
    grpc::Status unknown = CallWithEmptyRequest(bad.get(), method);
    EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << method.path;
    EXPECT_THAT(unknown.error_message(), HasSubstr("not known"));
    for (Role role : kRoles) {
      grpc::Status s = CallWithEmptyRequest(by_role[role].get(), method);
      if (Allowed(method.path, role)) {
        EXPECT_TRUE(PassedAuth(s))
            << method.path << " as " << RoleName(role) << ": " << s.error_code()
            << " " << s.error_message();
        ++passed;
      } else {
        EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
            << method.path << " as " << RoleName(role);
        EXPECT_THAT(s.error_message(),
                    HasSubstr(absl::StrCat("role '", RoleName(role),
                                           "' may not call ", method.path)));
      }
    }
  }
  // reader 9, submitter 14, worker 7, admin 22.
  EXPECT_EQ(passed, 52);
}

TEST_F(SecurityTest, HealthIsOpenWithoutAToken) {
  CoordinatorOptions options = Options();
  options.token_file = token_file_;
  Start(options);
  std::shared_ptr<grpc::Channel> anonymous = Channel("");
  for (const char* service : {"", "saetrack.v1.JobService"}) {
    grpc::ClientContext context;
    WithDeadline(&context);
    // grpc.health.v1.HealthCheckRequest{service}: field 1, a string.
    const std::string name(service);
    std::string bytes;
    if (!name.empty()) {
      bytes =
          absl::StrCat(std::string(1, '\x0a'),
                       std::string(1, static_cast<char>(name.size())), name);
    }
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    const grpc::internal::RpcMethod rpc("/grpc.health.v1.Health/Check",
                                        grpc::internal::RpcMethod::NORMAL_RPC);
    grpc::Status s =
        grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
            anonymous.get(), rpc, &context, request, &response);
    EXPECT_TRUE(s.ok()) << "'" << name << "': " << s.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string answer;
    for (const grpc::Slice& s : slices) {
      answer.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    EXPECT_EQ(answer, std::string("\x08\x01", 2));  // status: SERVING
  }
}

TEST_F(SecurityTest, SubmitterCancelsOnlyItsOwnJobsAdminAny) {
  CoordinatorOptions options = Options();
  options.token_file = token_file_;
  Start(options);
  const std::string files = dir_.path() + "/files";
  const v1::JobSpec spec = server::testing::MakeSpec(files, {100, 200});
  auto submitter = v1::JobService::NewStub(Channel(tokens_[Role::kSubmitter]));
  auto other = v1::JobService::NewStub(Channel(other_submitter_token_));
  auto admin = v1::JobService::NewStub(Channel(tokens_[Role::kAdmin]));
  auto reader = v1::JobService::NewStub(Channel(tokens_[Role::kReader]));

  std::vector<std::string> job_ids;
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    v1::SubmitJobResponse response;
    grpc::Status s =
        submitter->SubmitJob(WithDeadline(&context), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(response.job().submitter(), "submitter");
    job_ids.push_back(response.job().job_id());
  }
  // Recorded: a reader sees who submitted the job.
  {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id(job_ids[0]);
    v1::Job job;
    ASSERT_TRUE(reader->GetJob(WithDeadline(&context), request, &job).ok());
    EXPECT_EQ(job.submitter(), "submitter");
  }
  const auto cancel = [](v1::JobService::Stub& stub, const std::string& id,
                         v1::CancelJobResponse* response) {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_job_id(id);
    return stub.CancelJob(WithDeadline(&context), request, response);
  };
  v1::CancelJobResponse response;
  // Another submitter: denied, and told the same for a job that does not
  // exist.
  grpc::Status foreign = cancel(*other, job_ids[0], &response);
  EXPECT_EQ(foreign.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(foreign.error_message(),
              HasSubstr("is not a job submitted by 'other-submitter'"));
  grpc::Status missing = cancel(*other, "j-nonexistent", &response);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(missing.error_message(),
              HasSubstr("is not a job submitted by 'other-submitter'"));
  // A reader may not cancel at all.
  EXPECT_EQ(cancel(*reader, job_ids[0], &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Follow mode's calls: the same rule (checked before the job's kind).
  {
    grpc::ClientContext context;
    v1::CloseJobRequest request;
    request.set_job_id(job_ids[0]);
    v1::CloseJobResponse closed;
    grpc::Status s = other->CloseJob(WithDeadline(&context), request, &closed);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(s.error_message(),
                HasSubstr("is not a job submitted by 'other-submitter'"));
  }
  {
    grpc::ClientContext context;
    v1::AddCheckpointRequest request;
    request.set_job_id(job_ids[0]);
    request.set_step(300);
    request.set_path(files);
    v1::AddCheckpointResponse added;
    grpc::Status s =
        other->AddCheckpoint(WithDeadline(&context), request, &added);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    // The owner is told the job does not follow a run.
    grpc::ClientContext context;
    v1::RefreshAnalysisRequest request;
    request.set_job_id(job_ids[0]);
    v1::RefreshAnalysisResponse refreshed;
    grpc::Status s =
        submitter->RefreshAnalysis(WithDeadline(&context), request, &refreshed);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // The owner may; an admin may cancel anyone's.
  grpc::Status own = cancel(*submitter, job_ids[0], &response);
  ASSERT_TRUE(own.ok()) << own.error_message();
  EXPECT_EQ(response.job().state(), v1::JOB_STATE_CANCELLED);
  grpc::Status by_admin = cancel(*admin, job_ids[1], &response);
  ASSERT_TRUE(by_admin.ok()) << by_admin.error_message();
  EXPECT_EQ(response.job().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(response.job().submitter(), "submitter");
}

TEST_F(SecurityTest, WithoutTokenFileJobsHaveNoSubmitterAndAnyoneCancels) {
  Start(Options());
  auto jobs = v1::JobService::NewStub(Channel(""));
  grpc::ClientContext context;
  v1::SubmitJobRequest request;
  *request.mutable_spec() =
      server::testing::MakeSpec(dir_.path() + "/files", {100});
  v1::SubmitJobResponse submitted;
  ASSERT_TRUE(
      jobs->SubmitJob(WithDeadline(&context), request, &submitted).ok());
  EXPECT_EQ(submitted.job().submitter(), "");
  grpc::ClientContext cancel_context;
  v1::CancelJobRequest cancel;
  cancel.set_job_id(submitted.job().job_id());
  v1::CancelJobResponse cancelled;
  grpc::Status s =
      jobs->CancelJob(WithDeadline(&cancel_context), cancel, &cancelled);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(cancelled.job().state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(SecurityTest, MalformedTokenFileNamesFileAndLine) {
  const std::string path = dir_.path() + "/bad-tokens";
  {
    std::ofstream out(path);
    out << "# ok\nsha256:" << Sha256Hex("x") << " reader r\nbroken line\n";
  }
  CoordinatorOptions options = Options();
  options.token_file = path;
  absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Start(options);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(path + " line 3: expected"));
}

class TlsTest : public SecurityTest {
 protected:
  void SetUp() override {
    SecurityTest::SetUp();
    absl::StatusOr<server::testing::TestCertificates> certs =
        server::testing::MakeTestCertificates(dir_.path());
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *certs;
  }

  // GetJob of a job that does not exist: NOT_FOUND means the call got
  // through TLS and auth to the handler.
  grpc::Status Probe(const ChannelSecurity& security) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        NewSecureChannel(Target(), security);
    EXPECT_TRUE(channel.ok()) << channel.status();
    if (!channel.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "");
    auto stub = v1::JobService::NewStub(*channel);
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id("job-000001");
    v1::Job job;
    return stub->GetJob(WithDeadline(&context, 5), request, &job);
  }

  std::string WriteToken(Role role) {
    const std::string path =
        absl::StrCat(dir_.path(), "/", RoleName(role), ".token");
    std::ofstream(path) << tokens_[role] << "\n";
    return path;
  }

  server::testing::TestCertificates certs_;
};

TEST_F(TlsTest, ClientsMustTrustTheServersCa) {
  CoordinatorOptions options = Options();
  options.tls_cert_file = certs_.server_cert;
  options.tls_key_file = certs_.server_key;
  options.token_file = token_file_;
  Start(options);
  ChannelSecurity security;
  security.token_file = WriteToken(Role::kReader);
  // Plaintext to a TLS port: no connection.
  EXPECT_EQ(Probe(security).error_code(), grpc::StatusCode::UNAVAILABLE);
  // TLS with a CA that did not sign the server's certificate.
  security.tls_ca_file = certs_.other_ca_cert;
  EXPECT_EQ(Probe(security).error_code(), grpc::StatusCode::UNAVAILABLE);
  // The right CA: through to the handler.
  security.tls_ca_file = certs_.ca_cert;
  grpc::Status s = Probe(security);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  // The certificate names 127.0.0.1 and localhost.
  security.tls_server_name = "localhost";
  EXPECT_EQ(Probe(security).error_code(), grpc::StatusCode::NOT_FOUND);
  // TLS does not replace the token.
  security.token_file.clear();
  EXPECT_EQ(Probe(security).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(TlsTest, MutualTlsRefusesClientsWithoutACertificate) {
  CoordinatorOptions options = Options();
  options.tls_cert_file = certs_.server_cert;
  options.tls_key_file = certs_.server_key;
  options.tls_client_ca_file = certs_.ca_cert;
  Start(options);
  ChannelSecurity security;
  security.tls_ca_file = certs_.ca_cert;
  EXPECT_EQ(Probe(security).error_code(), grpc::StatusCode::UNAVAILABLE);
  security.tls_cert_file = certs_.client_cert;
  security.tls_key_file = certs_.client_key;
  grpc::Status s = Probe(security);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
}

TEST_F(TlsTest, ClientSideSecurityErrorsNameTheField) {
  ChannelSecurity security;
  security.tls_cert_file = certs_.client_cert;
  absl::StatusOr<LoadedChannelSecurity> no_key = LoadChannelSecurity(security);
  EXPECT_EQ(no_key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_key.status().message(), HasSubstr("tls_key"));
  security.tls_key_file = certs_.client_key;
  absl::StatusOr<LoadedChannelSecurity> no_ca = LoadChannelSecurity(security);
  EXPECT_EQ(no_ca.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_ca.status().message(), HasSubstr("needs tls_ca"));
  ChannelSecurity missing;
  missing.token_file = dir_.path() + "/no-such-token";
  absl::StatusOr<LoadedChannelSecurity> absent = LoadChannelSecurity(missing);
  EXPECT_EQ(absent.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(absent.status().message(),
              HasSubstr("token_file: cannot read " + missing.token_file));
}

TEST_F(SecurityTest, BeyondLoopbackNeedsTlsAndTokensOrInsecure) {
  CoordinatorOptions options = Options();
  options.listen_address = "0.0.0.0:0";
  absl::StatusOr<std::unique_ptr<Coordinator>> refused =
      Coordinator::Start(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("listen_address 0.0.0.0:0 is beyond loopback: "
                        "refusing to serve without --tls_cert and --tls_key "
                        "and --token_file (or pass --insecure"));
  // Tokens alone are not enough: they would travel in plaintext.
  options.token_file = token_file_;
  refused = Coordinator::Start(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("without --tls_cert and --tls_key (or pass"));
  options.insecure = true;
  refused = Coordinator::Start(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("token_file: bearer tokens travel beyond loopback "
                        "only over TLS"));
  // Nothing was stored by the refusals.
  EXPECT_FALSE(std::filesystem::exists(options.data_dir));
  // Loopback spellings need nothing.
  for (const char* address :
       {"127.0.0.1:0", "127.3.4.5:0", "[::1]:0", "localhost:0"}) {
    CoordinatorOptions loopback = Options();
    loopback.listen_address = address;
    absl::StatusOr<std::unique_ptr<Coordinator>> c =
        Coordinator::Start(loopback);
    // [::1] may be missing where IPv6 is off: then binding fails, not the
    // security check.
    if (!c.ok()) {
      EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable)
          << address << ": " << c.status();
      continue;
    }
    (*c)->Shutdown();
  }
}

TEST_F(SecurityTest, InsecureBeyondLoopbackStartsAndSaysSoInItsMetric) {
  CoordinatorOptions options = Options();
  options.listen_address = "0.0.0.0:0";
  options.metrics_listen_address = "127.0.0.1:0";
  options.insecure = true;
  ::testing::internal::CaptureStderr();
  Start(options);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, HasSubstr("WARNING: --insecure: serving 0.0.0.0:0 without "
                             "TLS and without bearer tokens"));
  const std::string metrics =
      server::testing::HttpGet(coordinator_->metrics_port(), "/metrics");
  EXPECT_THAT(metrics, HasSubstr("\nsaetrack_insecure_mode 1\n"));
}

TEST_F(SecurityTest, SecureModeMetricIsZero) {
  CoordinatorOptions options = Options();
  options.metrics_listen_address = "127.0.0.1:0";
  options.token_file = token_file_;
  Start(options);
  const std::string metrics =
      server::testing::HttpGet(coordinator_->metrics_port(), "/metrics");
  EXPECT_THAT(metrics, HasSubstr("\nsaetrack_insecure_mode 0\n"));
}

}  // namespace
}  // namespace saetrack

namespace saetrack {
namespace {

// A worker id is bound to the token that registered it: another worker
// token cannot lease for it nor heartbeat, complete or fail its lease, even
// knowing the worker id, task id and epoch; an admin can.
TEST_F(SecurityTest, LeasesAreBoundToTheTokenThatRegisteredTheWorker) {
  CoordinatorOptions options = Options();
  options.token_file = token_file_;
  Start(options);
  auto submitter = v1::JobService::NewStub(Channel(tokens_[Role::kSubmitter]));
  {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    *request.mutable_spec() =
        server::testing::MakeSpec(dir_.path() + "/files", {100, 200});
    v1::SubmitJobResponse response;
    grpc::Status s =
        submitter->SubmitJob(WithDeadline(&context), request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  auto owner = v1::WorkerService::NewStub(Channel(tokens_[Role::kWorker]));
  auto intruder = v1::WorkerService::NewStub(Channel(other_worker_token_));
  auto admin = v1::WorkerService::NewStub(Channel(tokens_[Role::kAdmin]));

  v1::RegisterWorkerResponse registered;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(owner
                    ->RegisterWorker(WithDeadline(&context),
                                     v1::RegisterWorkerRequest(), &registered)
                    .ok());
  }
  v1::LeaseTaskRequest lease;
  lease.set_worker_id(registered.worker_id());
  {
    grpc::ClientContext context;
    v1::LeaseTaskResponse response;
    grpc::Status s =
        intruder->LeaseTask(WithDeadline(&context), lease, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(s.error_message(), HasSubstr("worker_id"));
    EXPECT_FALSE(response.has_task());
  }
  v1::LeaseTaskResponse leased;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(owner->LeaseTask(WithDeadline(&context), lease, &leased).ok());
    ASSERT_TRUE(leased.has_task());
  }
  const v1::Task& task = leased.task();

  const auto heartbeat = [&](v1::WorkerService::Stub* stub) {
    grpc::ClientContext context;
    v1::HeartbeatRequest request;
    request.set_worker_id(registered.worker_id());
    request.set_task_id(task.task_id());
    request.set_lease_epoch(task.lease_epoch());
    v1::HeartbeatResponse response;
    return stub->Heartbeat(WithDeadline(&context), request, &response);
  };
  grpc::Status s = heartbeat(intruder.get());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
  {
    grpc::ClientContext context;
    v1::CompleteTaskRequest request;
    request.set_worker_id(registered.worker_id());
    request.set_task_id(task.task_id());
    request.set_lease_epoch(task.lease_epoch());
    v1::CompleteTaskResponse response;
    s = intruder->CompleteTask(WithDeadline(&context), request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
    EXPECT_THAT(s.error_message(), ::testing::Not(HasSubstr("current epoch")));
  }
  {
    grpc::ClientContext context;
    v1::FailTaskRequest request;
    request.set_worker_id(registered.worker_id());
    request.set_task_id(task.task_id());
    request.set_lease_epoch(task.lease_epoch());
    request.set_error("forged");
    v1::FailTaskResponse response;
    s = intruder->FailTask(WithDeadline(&context), request, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
  }
  // The lease is untouched: its holder and an admin still renew it.
  EXPECT_TRUE(heartbeat(owner.get()).ok());
  EXPECT_TRUE(heartbeat(admin.get()).ok());
  auto jobs = v1::JobService::NewStub(Channel(tokens_[Role::kAdmin]));
  grpc::ClientContext context;
  v1::GetJobRequest get;
  get.set_job_id(task.job_id());
  v1::Job job;
  ASSERT_TRUE(jobs->GetJob(WithDeadline(&context), get, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job.progress().tasks_done(), 0);
  EXPECT_TRUE(job.error().empty());
}

}  // namespace
}  // namespace saetrack
