// The demo flow over real processes with TLS and bearer tokens, as
// README "Securing a fleet" sets it up: certificates made by openssl, one
// token per role made by `saetrack admin token create`, a coordinator
// serving TLS with the token file, a worker with a worker token and the CA,
// `saetrack submit --wait` as a submitter and a query as a reader. Callers
// without the CA or with the wrong role are refused.
#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"
#include "server/testing/test_certificates.h"
#include "tests/child_process.h"

namespace saetrack {
namespace {

using ::saetrack::testing::ChildProcess;
using ::saetrack::testing::CommandResult;
using ::testing::HasSubstr;

constexpr int kLayer = 1;

template <typename T>
T FromJson(const std::string& json) {
  T message;
  auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  return message;
}

class SecureEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("secure_e2e");
    ASSERT_FALSE(dir_.empty());
    absl::StatusOr<server::testing::TestCertificates> certs =
        server::testing::MakeTestCertificates(dir_);
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *certs;
  }

  CommandResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), SAETRACK_CLI_BIN);
    auto result = testing::RunCommand(
        args, absl::StrCat(dir_, "/cli-", calls_++), absl::Minutes(10));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  }

  // `saetrack admin token create`; returns the file holding the token.
  std::string CreateToken(const std::string& role, const std::string& name) {
    CommandResult r = Run({"admin", "token", "create", "--role", role, "--name",
                           name, "--token_file", dir_ + "/tokens", "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    google::protobuf::Struct created;
    EXPECT_TRUE(
        google::protobuf::util::JsonStringToMessage(r.out, &created).ok())
        << r.out;
    const std::string token = created.fields().at("token").string_value();
    EXPECT_EQ(token.size(), 64u);
    const std::string path = absl::StrCat(dir_, "/", name, ".token");
    std::ofstream(path) << token << "\n";
    return path;
  }

  // CLI flags of a caller holding `token_file`, trusting the test CA.
  std::vector<std::string> As(const std::string& token_file) {
    return {"--coordinator", address_,       "--tls_ca",
            certs_.ca_cert,  "--token_file", token_file};
  }

  std::vector<std::string> With(std::vector<std::string> args,
                                const std::vector<std::string>& more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
  }

  std::string dir_;
  server::testing::TestCertificates certs_;
  std::string address_;
  int calls_ = 0;
};

TEST_F(SecureEndToEndTest, DemoFlowWithTlsAndTokens) {
  const std::string submitter = CreateToken("submitter", "alice");
  const std::string reader = CreateToken("reader", "dashboard");
  const std::string worker_token = CreateToken("worker", "gpu-1");
  // The token file keeps hashes only.
  const std::string token_file = testing::ReadFileOrEmpty(dir_ + "/tokens");
  EXPECT_THAT(token_file, HasSubstr(" submitter alice\n"));
  EXPECT_EQ(token_file.find(testing::ReadFileOrEmpty(submitter).substr(0, 64)),
            std::string::npos);

  auto lm = testing::RunCommand({SAETRACK_TINYLM_BIN,
                                 "--corpus",
                                 SAETRACK_CORPUS,
                                 "--out",
                                 dir_ + "/lm",
                                 "--steps",
                                 "0,16",
                                 "--d_model",
                                 "32",
                                 "--layers",
                                 "2",
                                 "--heads",
                                 "4",
                                 "--ctx",
                                 "32",
                                 "--batch",
                                 "16",
                                 "--seed",
                                 "1",
                                 "--threads",
                                 "1"},
                                dir_ + "/tinylm", absl::Minutes(5));
  ASSERT_TRUE(lm.ok()) << lm.status();
  ASSERT_EQ(lm->exit_code, 0) << lm->err;

  const std::string port_file = dir_ + "/ports";
  auto coordinator = ChildProcess::Start(
      {SAETRACK_COORDINATOR_BIN, "--data_dir", dir_ + "/data", "--listen",
       "127.0.0.1:0", "--metrics_listen", "127.0.0.1:0", "--port_file",
       port_file, "--tls_cert", certs_.server_cert, "--tls_key",
       certs_.server_key, "--token_file", dir_ + "/tokens", "--data_roots",
       dir_},
      dir_ + "/coordinator");
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        return testing::ReadFileOrEmpty(port_file).find("metrics=") !=
                   std::string::npos ||
               (*coordinator)->Wait(absl::ZeroDuration()).ok();
      },
      absl::Seconds(30)));
  int port = 0;
  for (absl::string_view line :
       absl::StrSplit(testing::ReadFileOrEmpty(port_file), '\n')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, '=');
    if (kv.first == "grpc") ASSERT_TRUE(absl::SimpleAtoi(kv.second, &port));
  }
  ASSERT_GT(port, 0) << (*coordinator)->Stderr();
  EXPECT_THAT((*coordinator)->Stderr(), HasSubstr("(TLS, bearer tokens)"));
  address_ = absl::StrCat("127.0.0.1:", port);

  auto worker = ChildProcess::Start(
      {SAETRACK_WORKER_BIN, "--coordinator", address_, "--tls_ca",
       certs_.ca_cert, "--token_file", worker_token, "--threads", "1",
       "--metrics_listen", "", "--lease_wait", "1s"},
      dir_ + "/worker");
  ASSERT_TRUE(worker.ok()) << worker.status();

  std::ofstream(dir_ + "/job.json") << R"({
  "name": "secure-e2e",
  "model": {"architecture": "gpt_neox", "checkpoints": [
    {"step": 0, "path": "lm/checkpoints/step-0"},
    {"step": 16, "path": "lm/checkpoints/step-16"}]},
  "data": {"tokens_path": "lm/tokens.u16", "context_length": 32},
  "hooks": [{"layer": 1}],
  "sae": {"expansion_factor": 4, "l1_coefficient": 1e-3, "lr_first": 1e-3,
          "lr_later": 3e-4, "warmup_steps_first": 20, "warmup_steps_later": 5,
          "batch_size": 512, "seed": 7},
  "schedule": {"tokens_first": 40000, "tokens_later": 20000,
               "eval_tokens": 4096}
})";
  const std::string job_file = dir_ + "/job.json";

  // Refused: no CA (plaintext to a TLS port), a reader submitting.
  CommandResult plaintext =
      Run({"list", "--coordinator", address_, "--token_file", reader});
  EXPECT_EQ(plaintext.exit_code, 1);
  EXPECT_THAT(plaintext.err, HasSubstr("UNAVAILABLE"));
  CommandResult wrong_role = Run(With({"submit", job_file}, As(reader)));
  EXPECT_EQ(wrong_role.exit_code, 1);
  EXPECT_THAT(wrong_role.err,
              HasSubstr("PERMISSION_DENIED: role 'reader' may not call "
                        "/saetrack.v1.JobService/SubmitJob"));

  CommandResult submitted =
      Run(With({"submit", job_file, "--wait", "--json"}, As(submitter)));
  ASSERT_EQ(submitted.exit_code, 0)
      << submitted.err << "\nworker log:\n"
      << (*worker)->Stderr() << "\ncoordinator log:\n"
      << (*coordinator)->Stderr();
  v1::Job job = FromJson<v1::Job>(submitted.out);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.submitter(), "alice");

  CommandResult status = Run(With({"status", job.job_id()}, As(reader)));
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("submitted by alice"));
  CommandResult feature =
      Run(With({"feature", job.job_id(), "--layer", std::to_string(kLayer),
                "--id", "0", "--json"},
               As(reader)));
  ASSERT_EQ(feature.exit_code, 0) << feature.err;
  v1::FeatureHistory history = FromJson<v1::FeatureHistory>(feature.out);
  EXPECT_EQ(history.points_size(), 2);
  // A reader may not cancel; the worker's token may not query.
  CommandResult cancel = Run(With({"cancel", job.job_id()}, As(reader)));
  EXPECT_EQ(cancel.exit_code, 1);
  EXPECT_THAT(cancel.err, HasSubstr("PERMISSION_DENIED"));
  CommandResult as_worker = Run(With({"list"}, As(worker_token)));
  EXPECT_EQ(as_worker.exit_code, 1);
  EXPECT_THAT(as_worker.err, HasSubstr("role 'worker' may not call"));

  (*worker)->Signal(SIGTERM);
  EXPECT_TRUE((*worker)->Wait(absl::Seconds(30)).ok());
  (*coordinator)->Signal(SIGTERM);
  absl::StatusOr<int> code = (*coordinator)->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

}  // namespace
}  // namespace saetrack
