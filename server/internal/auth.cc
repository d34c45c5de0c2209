#include "server/internal/auth.h"

#include <initializer_list>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace saetrack::server {
namespace {

constexpr unsigned Bit(Role role) { return 1u << static_cast<unsigned>(role); }

constexpr unsigned kReaders =
    Bit(Role::kReader) | Bit(Role::kSubmitter) | Bit(Role::kAdmin);
constexpr unsigned kSubmitters = Bit(Role::kSubmitter) | Bit(Role::kAdmin);
constexpr unsigned kWorkers = Bit(Role::kWorker) | Bit(Role::kAdmin);
constexpr unsigned kAdmins = Bit(Role::kAdmin);

struct MethodRoles {
  const char* method;
  unsigned roles;  // Bit(role) for each role allowed.
};

// THE table: which roles may call which method. A method missing here is
// denied to every role. CancelJob is further limited in JobService to the
// jobs a submitter submitted itself (admins cancel any).
constexpr MethodRoles kMethodRoles[] = {
    {"/saetrack.v1.JobService/SubmitJob", kSubmitters},
    {"/saetrack.v1.JobService/GetJob", kReaders},
    {"/saetrack.v1.JobService/ListJobs", kReaders},
    {"/saetrack.v1.JobService/CancelJob", kSubmitters},
    {"/saetrack.v1.JobService/WatchJob", kReaders},
    {"/saetrack.v1.JobService/AddCheckpoint", kSubmitters},
    {"/saetrack.v1.JobService/CloseJob", kSubmitters},
    {"/saetrack.v1.JobService/RefreshAnalysis", kSubmitters},
    {"/saetrack.v1.QueryService/GetFeatureHistory", kReaders},
    {"/saetrack.v1.QueryService/ListFeatures", kReaders},
    {"/saetrack.v1.QueryService/GetDriftSummary", kReaders},
    {"/saetrack.v1.QueryService/GetCheckpointMetrics", kReaders},
    {"/saetrack.v1.QueryService/GetQualityChecks", kReaders},
    {"/saetrack.v1.QueryService/ExportSae", kReaders},
    {"/saetrack.v1.WorkerService/RegisterWorker", kWorkers},
    {"/saetrack.v1.WorkerService/LeaseTask", kWorkers},
    {"/saetrack.v1.WorkerService/Heartbeat", kWorkers},
    {"/saetrack.v1.WorkerService/UploadArtifact", kWorkers},
    {"/saetrack.v1.WorkerService/DownloadSae", kWorkers},
    {"/saetrack.v1.WorkerService/CompleteTask", kWorkers},
    {"/saetrack.v1.WorkerService/FailTask", kWorkers},
    {"/saetrack.v1.AdminService/Backup", kAdmins},
};

constexpr const char* kOpenServicePrefixes[] = {
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
};

std::string_view ToView(const grpc::string_ref& s) {
  return std::string_view(s.data(), s.size());
}

absl::string_view Absl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

class TokenAuthProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenAuthProcessor(const Authenticator* authenticator)
      : authenticator_(authenticator) {}

  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* /*context*/,
                       OutputMetadata* /*consumed_auth_metadata*/,
                       OutputMetadata* /*response_metadata*/) override {
    const auto path = auth_metadata.find(":path");
    const std::string_view method =
        path == auth_metadata.end() ? std::string_view() : ToView(path->second);
    const auto header = auth_metadata.find("authorization");
    std::optional<std::string_view> value;
    if (header != auth_metadata.end()) value = ToView(header->second);
    // The token stays in the metadata: CallerOf reads it there.
    absl::StatusOr<std::optional<AccessTokenEntry>> entry =
        authenticator_->Authorize(method, value);
    if (!entry.ok()) {
      return grpc::Status(static_cast<grpc::StatusCode>(entry.status().code()),
                          std::string(entry.status().message()));
    }
    return grpc::Status::OK;
  }

 private:
  const Authenticator* const authenticator_;
};

// The token of "Bearer <token>" (scheme case-insensitive), or nullopt.
std::optional<std::string_view> BearerToken(std::string_view header) {
  constexpr std::string_view kScheme = "bearer ";
  if (header.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(Absl(header.substr(0, kScheme.size())),
                              Absl(kScheme))) {
    return std::nullopt;
  }
  const absl::string_view token =
      absl::StripAsciiWhitespace(Absl(header.substr(kScheme.size())));
  return std::string_view(token.data(), token.size());
}

}  // namespace

absl::StatusOr<std::optional<AccessTokenEntry>> Authenticator::Authorize(
    std::string_view method, std::optional<std::string_view> header) const {
  if (IsOpenMethod(method)) return std::nullopt;
  if (!header.has_value()) {
    return absl::UnauthenticatedError(
        "no bearer token: send the metadata 'authorization: Bearer <token>' "
        "(--token_file)");
  }
  const std::optional<std::string_view> token = BearerToken(*header);
  if (!token.has_value()) {
    return absl::UnauthenticatedError(
        "authorization: expected 'Bearer <token>'");
  }
  std::optional<AccessTokenEntry> entry = tokens_.Find(*token);
  if (!entry.has_value()) {
    return absl::UnauthenticatedError(
        "bearer token not known to this coordinator");
  }
  if (absl::Status s = CheckAccess(method, entry->role); !s.ok()) return s;
  return entry;
}

Caller Authenticator::CallerOf(const grpc::ServerContextBase& context) const {
  Caller caller;
  caller.authenticated = true;
  const auto& metadata = context.client_metadata();
  const auto header = metadata.find("authorization");
  if (header == metadata.end()) return caller;
  const std::optional<std::string_view> token =
      BearerToken(ToView(header->second));
  if (!token.has_value()) return caller;
  std::optional<AccessTokenEntry> entry = tokens_.Find(*token);
  if (!entry.has_value()) return caller;
  caller.name = std::move(entry->name);
  caller.role = entry->role;
  return caller;
}

std::shared_ptr<grpc::AuthMetadataProcessor> Authenticator::NewProcessor()
    const {
  return std::make_shared<TokenAuthProcessor>(this);
}

Caller CallerOf(const Authenticator* authenticator,
                const grpc::ServerContextBase& context) {
  if (authenticator == nullptr) return Caller();
  return authenticator->CallerOf(context);
}

bool IsOpenMethod(std::string_view method) {
  for (const char* prefix : kOpenServicePrefixes) {
    if (method.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

absl::Status CheckAccess(std::string_view method, std::optional<Role> role) {
  if (IsOpenMethod(method)) return absl::OkStatus();
  if (!role.has_value()) {
    return absl::UnauthenticatedError(
        absl::StrCat(Absl(method), ": needs a bearer token"));
  }
  for (const MethodRoles& entry : kMethodRoles) {
    if (method != entry.method) continue;
    if ((entry.roles & Bit(*role)) != 0) return absl::OkStatus();
    break;
  }
  return absl::PermissionDeniedError(
      absl::StrCat("role '", RoleName(*role), "' may not call ", Absl(method)));
}

std::vector<std::string> ProtectedMethods() {
  std::vector<std::string> methods;
  for (const MethodRoles& entry : kMethodRoles) {
    methods.emplace_back(entry.method);
  }
  return methods;
}

}  // namespace saetrack::server
