#include "web/web_server.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "web/internal/http_mapping.h"

namespace saetrack::web {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// The layer above the coordinator's API: a loopback gRPC server whose
// JobService answers job-000001 (echoing the call's authorization metadata
// in Job.error) and NOT_FOUND otherwise, and whose QueryService answers
// ListFeatures with the request's own filter echoed in a feature.
class FakeJobService final : public v1::JobService::Service {
  grpc::Status GetJob(grpc::ServerContext* context,
                      const v1::GetJobRequest* request, v1::Job* job) override {
    if (request->job_id() == "job-000005") {
      // A following job, waiting after step 32.
      job->set_job_id(request->job_id());
      job->set_state(v1::JOB_STATE_RUNNING);
      job->mutable_spec()->mutable_model()->mutable_follow()->set_dir("/runs");
      v1::FollowStatus& follow = *job->mutable_follow();
      follow.set_state(v1::FOLLOW_STATE_WAITING);
      follow.set_last_step(32);
      follow.add_checkpoints()->set_step(32);
      return grpc::Status::OK;
    }
    if (request->job_id() != "job-000001") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "job " + request->job_id() + " not found");
    }
    job->set_job_id(request->job_id());
    job->set_state(v1::JOB_STATE_SUCCEEDED);
    job->set_create_time_ms(1700000000123);
    auto auth = context->client_metadata().find("authorization");
    if (auth != context->client_metadata().end()) {
      job->set_error(std::string(auth->second.data(), auth->second.size()));
    }
    return grpc::Status::OK;
  }

  // Two updates (running, then succeeded) and the end of the stream.
  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest*,
                        grpc::ServerWriter<v1::JobUpdate>* writer) override {
    v1::JobUpdate update;
    update.mutable_job()->set_job_id("job-000001");
    update.mutable_job()->set_state(v1::JOB_STATE_RUNNING);
    update.set_tokens_per_second(1500);
    writer->Write(update);
    update.mutable_job()->set_state(v1::JOB_STATE_SUCCEEDED);
    writer->Write(update);
    return grpc::Status::OK;
  }
};

class FakeQueryService final : public v1::QueryService::Service {
  // Provisional, as for a following job before its final analysis.
  grpc::Status GetFeatureHistory(grpc::ServerContext*,
                                 const v1::GetFeatureHistoryRequest* request,
                                 v1::FeatureHistory* history) override {
    history->set_job_id(request->job_id());
    history->set_feature_id(request->feature_id());
    history->set_provisional(true);
    return grpc::Status::OK;
  }

  grpc::Status ListFeatures(grpc::ServerContext*,
                            const v1::ListFeaturesRequest* request,
                            v1::ListFeaturesResponse* response) override {
    v1::FeatureSummary* f = response->add_features();
    f->set_feature_id(request->page_size());
    f->set_kind(request->kind());
    f->set_formation_step(request->min_formation_step());
    response->set_total(request->layer());
    response->set_next_page_token(request->page_token() + "+");
    return grpc::Status::OK;
  }
};

class WebServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(&jobs_);
    builder.RegisterService(&queries_);
    grpc_ = builder.BuildAndStart();
    ASSERT_NE(grpc_, nullptr);
    coordinator_ = absl::StrCat("127.0.0.1:", port);

    dist_ = std::filesystem::path(::testing::TempDir()) / "web_server_dist";
    std::filesystem::create_directories(dist_ / "assets");
    std::ofstream(dist_ / "index.html") << "<!doctype html><title>t</title>";
    std::ofstream(dist_ / "assets" / "app.js") << "console.log(1);";
  }

  std::unique_ptr<WebServer> Start(const std::string& coordinator,
                                   const std::string& token = "") {
    WebServerOptions options;
    options.coordinator = coordinator;
    options.listen = "127.0.0.1:0";
    options.static_dir = dist_.string();
    options.token = token;
    options.call_timeout = absl::Seconds(5);
    auto server = WebServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? std::move(*server) : nullptr;
  }

  FakeJobService jobs_;
  FakeQueryService queries_;
  std::unique_ptr<grpc::Server> grpc_;
  std::string coordinator_;
  std::filesystem::path dist_;
};

TEST(HttpMappingTest, GrpcCodesMapToHttpStatuses) {
  using internal::HttpStatusFor;
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kOk), 200);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kFailedPrecondition), 412);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
}

TEST(HttpMappingTest, ErrorJsonNamesCodeStatusAndEscapesTheMessage) {
  EXPECT_EQ(internal::ErrorJson(absl::NotFoundError("job \"x\" not found")),
            R"({"error":{"code":"NOT_FOUND","http_status":404,)"
            R"("message":"job \"x\" not found"}})");
  EXPECT_EQ(internal::JsonString("a\\b\n\x01é"), "\"a\\\\b\\n\\u0001é\"");
  EXPECT_THAT(internal::ErrorJson(absl::InvalidArgumentError("bad")),
              HasSubstr(R"("code":"INVALID_ARGUMENT")"));
}

TEST(HttpMappingTest, ListFeaturesParametersBecomeTheRequest) {
  auto request = internal::ParseListFeatures("job-000001", 3,
                                             {{"kind", "concept_level"},
                                              {"order", "drift"},
                                              {"min_formation", "16"},
                                              {"max_formation", "256"},
                                              {"min_frequency", "0.001"},
                                              {"max_frequency", "0.5"},
                                              {"page_size", "25"},
                                              {"page_token", "abc"}});
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->job_id(), "job-000001");
  EXPECT_EQ(request->layer(), 3);
  EXPECT_EQ(request->kind(), v1::FEATURE_KIND_CONCEPT_LEVEL);
  EXPECT_EQ(request->order_by(), v1::ListFeaturesRequest::FINAL_DRIFT);
  EXPECT_EQ(request->min_formation_step(), 16);
  EXPECT_EQ(request->max_formation_step(), 256);
  EXPECT_DOUBLE_EQ(request->min_frequency(), 0.001);
  EXPECT_DOUBLE_EQ(request->max_frequency(), 0.5);
  EXPECT_EQ(request->page_size(), 25);
  EXPECT_EQ(request->page_token(), "abc");

  // Empty values mean "no filter".
  auto plain = internal::ParseListFeatures("j", 0, {{"kind", ""}});
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->has_min_formation_step());
  EXPECT_EQ(plain->kind(), v1::FEATURE_KIND_UNSPECIFIED);
}

TEST(HttpMappingTest, BadParametersAreRefusedNamingTheParameter) {
  struct Case {
    internal::QueryParams params;
    std::string fragment;
  };
  for (const Case& c : std::vector<Case>{
           {{{"kind", "huge"}}, "'kind': 'huge' is not one of"},
           {{{"order", "random"}}, "'order': 'random' is not one of"},
           {{{"min_formation", "-1"}}, "'min_formation': '-1' is not an"},
           {{{"max_formation", "1e3"}}, "'max_formation': '1e3' is not an"},
           {{{"min_frequency", "2"}}, "'min_frequency': 2 is outside [0, 1]"},
           {{{"max_frequency", "nan"}}, "'max_frequency': 'nan' is not a"},
           {{{"page_size", "0"}}, "'page_size': 0 is outside [1, 10000]"},
           {{{"colour", "red"}}, "unknown query parameter 'colour'"},
       }) {
    auto request = internal::ParseListFeatures("j", 0, c.params);
    ASSERT_FALSE(request.ok()) << c.fragment;
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(request.status().message(), HasSubstr(c.fragment));
  }
  auto history =
      internal::ParseFeatureHistory("j", 0, 1, {{"contexts", "yes"}});
  EXPECT_THAT(history.status().message(),
              HasSubstr("'contexts': 'yes' is not 0 or 1"));
  history = internal::ParseFeatureHistory("j", 0, 1, {{"before", "65"}});
  EXPECT_THAT(history.status().message(),
              HasSubstr("'before': 65 is outside [0, 64]"));
  EXPECT_THAT(internal::ParseIndex("feature", "-3").status().message(),
              HasSubstr("feature: '-3' is not an integer"));
  EXPECT_THAT(internal::ParseIndex("layer", "2147483648").status().message(),
              HasSubstr("layer: '2147483648'"));
  EXPECT_EQ(*internal::ParseIndex("layer", "2147483647"), 2147483647);
  EXPECT_THAT(internal::CheckJobId("a b").message(), HasSubstr("job: 'a b'"));
  EXPECT_TRUE(internal::CheckJobId("job-000001").ok());
}

TEST_F(WebServerTest, AnswersAreTheProtoJsonMappingWithProtoFieldNames) {
  auto server = Start(coordinator_);
  ASSERT_NE(server, nullptr);
  httplib::Client http("127.0.0.1", server->port());
  auto res = http.Get("/api/jobs/job-000001");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"),
            "application/json; charset=utf-8");
  // int64 as a string, enum by name, proto field names, defaults printed.
  EXPECT_THAT(res->body, HasSubstr(R"("job_id":"job-000001")"));
  EXPECT_THAT(res->body, HasSubstr(R"("create_time_ms":"1700000000123")"));
  EXPECT_THAT(res->body, HasSubstr(R"("state":"JOB_STATE_SUCCEEDED")"));
  EXPECT_THAT(res->body, HasSubstr(R"("request_id":"")"));

  res = http.Get(
      "/api/jobs/job-000001/layers/7/features?kind=token_level&"
      "min_formation=64&page_size=9&page_token=p");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr(R"("feature_id":9)"));
  EXPECT_THAT(res->body, HasSubstr(R"("kind":"FEATURE_KIND_TOKEN_LEVEL")"));
  EXPECT_THAT(res->body, HasSubstr(R"("formation_step":"64")"));
  EXPECT_THAT(res->body, HasSubstr(R"("total":7)"));
  EXPECT_THAT(res->body, HasSubstr(R"("next_page_token":"p+")"));
}

// The fields the pages read for follow mode, under the names they use.
TEST_F(WebServerTest, FollowStatusAndProvisionalReachThePages) {
  auto server = Start(coordinator_);
  ASSERT_NE(server, nullptr);
  httplib::Client http("127.0.0.1", server->port());
  auto res = http.Get("/api/jobs/job-000005");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr(R"("follow":{"dir":"/runs")"));
  EXPECT_THAT(res->body, HasSubstr(R"("state":"FOLLOW_STATE_WAITING")"));
  EXPECT_THAT(res->body, HasSubstr(R"("last_step":"32")"));
  EXPECT_THAT(res->body, HasSubstr(R"("refresh_pending":false)"));

  res = http.Get("/api/jobs/job-000005/layers/0/features/12");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr(R"("provisional":true)"));

  // A fixed-list job carries no follow status.
  res = http.Get("/api/jobs/job-000001");
  ASSERT_TRUE(res);
  EXPECT_THAT(res->body, Not(HasSubstr(R"("follow")")));
}

TEST_F(WebServerTest, ErrorsCarryTheMappedStatusAndNameTheInput) {
  auto server = Start(coordinator_);
  ASSERT_NE(server, nullptr);
  httplib::Client http("127.0.0.1", server->port());
  auto res = http.Get("/api/jobs/job-424242");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_EQ(res->body, R"({"error":{"code":"NOT_FOUND","http_status":404,)"
                       R"("message":"job job-424242 not found"}})");

  res = http.Get("/api/jobs/job-000001/layers/one/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("layer: 'one' is not an integer"));

  res = http.Get("/api/jobs/job-000001/layers/0/features/x1");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("feature: 'x1' is not an integer"));

  res = http.Get("/api/jobs/job%24%24/layers/0/drift");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("is not a job id"));

  res = http.Get("/api/jobs/job-000001/layers/0/features?order=sideways");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("'order': 'sideways'"));

  res = http.Get("/api/jobs/job-000001/layers/0/metrics?x=1");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("unknown query parameter 'x'"));

  res = http.Get("/api/jobs?page_size=0");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("'page_size': 0 is outside [1, 1000]"));

  res = http.Get("/api/nothing/here");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_THAT(res->body, HasSubstr("no API call at /api/nothing/here"));

  // QueryService.GetDriftSummary is not implemented by the fake.
  res = http.Get("/api/jobs/job-000001/layers/0/drift");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 501);
  EXPECT_THAT(res->body, HasSubstr(R"("code":"UNIMPLEMENTED")"));
}

TEST_F(WebServerTest, WatchStreamsEachUpdateAsAServerSentEvent) {
  auto server = Start(coordinator_);
  ASSERT_NE(server, nullptr);
  httplib::Client http("127.0.0.1", server->port());
  auto res = http.Get("/api/jobs/job-000001/watch");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<std::string> events =
      absl::StrSplit(res->body, "\n\n", absl::SkipEmpty());
  ASSERT_EQ(events.size(), 2u) << res->body;
  EXPECT_THAT(events[0], StartsWith("data: {"));
  EXPECT_THAT(events[0], HasSubstr(R"("state":"JOB_STATE_RUNNING")"));
  EXPECT_THAT(events[0], HasSubstr(R"("tokens_per_second":1500)"));
  EXPECT_THAT(events[1], HasSubstr(R"("state":"JOB_STATE_SUCCEEDED")"));

  res = http.Get("/api/jobs/job-000002/watch");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_THAT(res->body, HasSubstr("job job-000002 not found"));
}

TEST_F(WebServerTest, UnreachableCoordinatorIsServiceUnavailable) {
  // Port 1 on loopback: nothing listens there.
  auto server = Start("127.0.0.1:1");
  ASSERT_NE(server, nullptr);
  httplib::Client http("127.0.0.1", server->port());
  auto res = http.Get("/api/jobs");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_THAT(res->body, HasSubstr(R"("code":"UNAVAILABLE")"));
}

TEST_F(WebServerTest, BrowserTokenIsPassedThroughElseTheServersOwn) {
  auto server = Start(coordinator_, "server-token");
  ASSERT_NE(server, nullptr);
  httplib::Client http("127.0.0.1", server->port());
  auto res = http.Get("/api/jobs/job-000001");
  ASSERT_TRUE(res);
  EXPECT_THAT(res->body, HasSubstr(R"("error":"Bearer server-token")"));
  res = http.Get("/api/jobs/job-000001",
                 {{"Authorization", "Bearer browser-token"}});
  ASSERT_TRUE(res);
  EXPECT_THAT(res->body, HasSubstr(R"("error":"Bearer browser-token")"));
  res = http.Get("/api/jobs/job-000001", {{"Authorization", "Basic abc"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_THAT(res->body, HasSubstr("expected 'Bearer <token>'"));
}

TEST_F(WebServerTest, PagesServeIndexAndAssetsServeFiles) {
  auto server = Start(coordinator_);
  ASSERT_NE(server, nullptr);
  httplib::Client http("127.0.0.1", server->port());
  for (const char* page : {"/", "/jobs", "/jobs/job-000001/layers/0/drift",
                           "/jobs/job-000001/layers/0/features/12"}) {
    auto res = http.Get(page);
    ASSERT_TRUE(res) << page;
    EXPECT_EQ(res->status, 200) << page;
    EXPECT_THAT(res->body, StartsWith("<!doctype html>")) << page;
  }
  // Not compressed even when the browser accepts brotli (slow at the
  // library's quality; see kJson in web_server.cc).
  auto res = http.Get("/assets/app.js", {{"Accept-Encoding", "gzip, br"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Encoding"), "");
  EXPECT_EQ(res->body, "console.log(1);");
  res = http.Get("/api/jobs/job-000001", {{"Accept-Encoding", "gzip, br"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->get_header_value("Content-Encoding"), "");
  EXPECT_THAT(res->body, HasSubstr(R"("job_id":"job-000001")"));
  res = http.Get("/assets/../../etc/passwd");
  ASSERT_TRUE(res);
  EXPECT_NE(res->status, 200);
  res = http.Get("/nothing.js");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
}

TEST_F(WebServerTest, StaticDirWithoutIndexIsRefused) {
  WebServerOptions options;
  options.coordinator = coordinator_;
  options.listen = "127.0.0.1:0";
  options.static_dir = (dist_ / "assets").string();
  auto server = WebServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(server.status().message(), HasSubstr("holds no index.html"));
  options.static_dir = dist_.string();
  options.listen = "127.0.0.1";
  server = WebServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(server.status().message(), HasSubstr("listen: '127.0.0.1'"));
}

}  // namespace
}  // namespace saetrack::web
