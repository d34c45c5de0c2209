#include "server/internal/auth.h"

#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "saetrack/v1/admin.pb.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"
#include "saetrack/v1/worker.pb.h"

namespace saetrack::server {
namespace {

using ::testing::HasSubstr;

constexpr Role kRoles[] = {Role::kReader, Role::kSubmitter, Role::kWorker,
                           Role::kAdmin};

// Every RPC of the four saetrack.v1 services, as full method names, from the
// generated descriptors (so a new RPC shows up here by itself).
std::vector<std::string> AllApiMethods() {
  const google::protobuf::ServiceDescriptor* services[] = {
      v1::Job::descriptor()->file()->FindServiceByName("JobService"),
      v1::FeatureHistory::descriptor()->file()->FindServiceByName(
          "QueryService"),
      v1::LeaseTaskRequest::descriptor()->file()->FindServiceByName(
          "WorkerService"),
      v1::BackupRequest::descriptor()->file()->FindServiceByName(
          "AdminService")};
  std::vector<std::string> methods;
  for (const google::protobuf::ServiceDescriptor* service : services) {
    EXPECT_NE(service, nullptr);
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      methods.push_back(absl::StrCat("/", service->full_name(), "/",
                                     service->method(i)->name()));
    }
  }
  return methods;
}

// The role definitions, written independently of auth.cc's table.
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

TEST(AuthTableTest, CoversEveryApiMethodExactly) {
  const std::vector<std::string> api = AllApiMethods();
  EXPECT_EQ(api.size(), 22u);
  const std::vector<std::string> table = ProtectedMethods();
  EXPECT_EQ(std::set<std::string>(api.begin(), api.end()),
            std::set<std::string>(table.begin(), table.end()));
}

TEST(AuthTableTest, EveryMethodTimesEveryRole) {
  for (const std::string& method : AllApiMethods()) {
    for (Role role : kRoles) {
      const absl::Status s = CheckAccess(method, role);
      if (Allowed(method, role)) {
        EXPECT_TRUE(s.ok()) << method << " " << RoleName(role) << ": " << s;
      } else {
        EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied)
            << method << " " << RoleName(role);
        EXPECT_THAT(s.message(),
                    HasSubstr(absl::StrCat("role '", RoleName(role),
                                           "' may not call ", method)));
      }
    }
    const absl::Status anonymous = CheckAccess(method, std::nullopt);
    EXPECT_EQ(anonymous.code(), absl::StatusCode::kUnauthenticated) << method;
  }
}

TEST(AuthTableTest, HealthAndReflectionAreOpenUnknownMethodsDenied) {
  EXPECT_TRUE(CheckAccess("/grpc.health.v1.Health/Check", std::nullopt).ok());
  EXPECT_TRUE(CheckAccess("/grpc.health.v1.Health/Watch", std::nullopt).ok());
  EXPECT_TRUE(CheckAccess("/grpc.reflection.v1alpha.ServerReflection/"
                          "ServerReflectionInfo",
                          std::nullopt)
                  .ok());
  EXPECT_EQ(CheckAccess("/saetrack.v1.JobService/Nope", Role::kAdmin).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckAccess("/grpc.health.v1.HealthX/Check", std::nullopt).code(),
            absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace saetrack::server
