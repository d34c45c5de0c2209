// The feature browser end to end, over real processes: saetrack-tinylm
// trains a tiny model, a real coordinator and worker run a short job over its
// checkpoints (training and the analysis pass), saetrack-web serves it, and
// web/test/browser_test.mjs drives Debian's Chromium through every page
// (playwright-core): no console errors, charts drawn with the expected
// number of points, numbers equal to the API's, filters and paging,
// a feature URL opened directly. Screenshots go to build/web-screenshots/.
// Skips when the front end was not built (no npm) or /usr/bin/chromium is
// missing.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "saetrack/v1/job.pb.h"
#include "tests/child_process.h"

namespace saetrack {
namespace {

using testing::ChildProcess;
using testing::CommandResult;

constexpr int kLayer = 1;
const std::vector<int> kSteps = {0, 16, 64, 256};

// Reads KEY=<port> from a port file written by a server.
int PortFrom(const std::string& path, const std::string& key) {
  for (absl::string_view line :
       absl::StrSplit(testing::ReadFileOrEmpty(path), '\n')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, '=');
    int port = 0;
    if (kv.first == key && absl::SimpleAtoi(kv.second, &port)) return port;
  }
  return 0;
}

TEST(WebBrowserTest, EveryPageInChromium) {
  if (!std::filesystem::exists(SAETRACK_WEB_DIST "/index.html")) {
    GTEST_SKIP() << "front end not built (npm missing at configure time)";
  }
  if (!std::filesystem::exists("/usr/bin/chromium")) {
    GTEST_SKIP() << "/usr/bin/chromium missing (deploy/install-deps.sh)";
  }
  const std::string dir = testing::MakeTempDir("web_browser");
  ASSERT_FALSE(dir.empty());

  std::string steps;
  for (int s : kSteps) absl::StrAppend(&steps, steps.empty() ? "" : ",", s);
  auto lm = testing::RunCommand({SAETRACK_TINYLM_BIN,
                                 "--corpus",
                                 SAETRACK_CORPUS,
                                 "--out",
                                 dir + "/lm",
                                 "--steps",
                                 steps,
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
                                dir + "/tinylm", absl::Minutes(5));
  ASSERT_TRUE(lm.ok()) << lm.status();
  ASSERT_EQ(lm->exit_code, 0) << lm->err;

  const std::string ports = dir + "/ports";
  auto coordinator = ChildProcess::Start(
      {SAETRACK_COORDINATOR_BIN, "--data_dir", dir + "/data", "--listen",
       "127.0.0.1:0", "--metrics_listen", "", "--port_file", ports},
      dir + "/coordinator");
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  ASSERT_TRUE(testing::WaitFor([&] { return PortFrom(ports, "grpc") > 0; },
                               absl::Seconds(30)))
      << (*coordinator)->Stderr();
  const std::string address =
      absl::StrCat("127.0.0.1:", PortFrom(ports, "grpc"));
  auto worker = ChildProcess::Start(
      {SAETRACK_WORKER_BIN, "--coordinator", address, "--threads", "1",
       "--metrics_listen", "", "--lease_wait", "1s"},
      dir + "/worker");
  ASSERT_TRUE(worker.ok()) << worker.status();

  std::string checkpoints;
  for (int s : kSteps) {
    absl::StrAppend(&checkpoints, checkpoints.empty() ? "" : ", ",
                    "{\"step\": ", s, ", \"path\": \"lm/checkpoints/step-", s,
                    "\"}");
  }
  std::ofstream(dir + "/job.json") << absl::StrCat(
      R"({"name": "web",
  "model": {"architecture": "gpt_neox", "checkpoints": [)",
      checkpoints, R"(]},
  "data": {"tokens_path": "lm/tokens.u16", "context_length": 32,
           "tokenizer_path": "lm/tokenizer.json"},
  "hooks": [{"layer": )",
      kLayer, R"(}],
  "sae": {"expansion_factor": 4, "l1_coefficient": 1e-3, "lr_first": 1e-3,
          "lr_later": 3e-4, "warmup_steps_first": 20, "warmup_steps_later": 5,
          "batch_size": 512, "seed": 7},
  "schedule": {"tokens_first": 200000, "tokens_later": 40000,
               "eval_tokens": 8192}
})");
  auto submit =
      testing::RunCommand({SAETRACK_CLI_BIN, "submit", dir + "/job.json",
                           "--wait", "--json", "--coordinator", address},
                          dir + "/submit", absl::Minutes(10));
  ASSERT_TRUE(submit.ok()) << submit.status();
  ASSERT_EQ(submit->exit_code, 0) << submit->err << "\nworker log:\n"
                                  << (*worker)->Stderr();
  v1::Job job;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(submit->out, &job).ok())
      << submit->out;
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);

  const std::string web_ports = dir + "/web-ports";
  auto web = ChildProcess::Start(
      {SAETRACK_WEB_BIN, "--coordinator", address, "--listen", "127.0.0.1:0",
       "--static_dir", SAETRACK_WEB_DIST, "--port_file", web_ports},
      dir + "/web");
  ASSERT_TRUE(web.ok()) << web.status();
  ASSERT_TRUE(testing::WaitFor([&] { return PortFrom(web_ports, "http") > 0; },
                               absl::Seconds(30)))
      << (*web)->Stderr();
  const int web_port = PortFrom(web_ports, "http");

  // The API answers before the browser is started: a plain HTTP check.
  absl::StatusOr<std::string> body =
      testing::HttpGet(web_port, "/api/jobs/" + job.job_id());
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_THAT(*body, ::testing::HasSubstr("\"state\":\"JOB_STATE_SUCCEEDED\""));

  auto browser = testing::RunCommand(
      {SAETRACK_NODE, SAETRACK_BROWSER_SCRIPT, "--base",
       absl::StrCat("http://127.0.0.1:", web_port), "--job", job.job_id(),
       "--layer", std::to_string(kLayer), "--out", SAETRACK_SCREENSHOT_DIR},
      dir + "/browser", absl::Minutes(3));
  ASSERT_TRUE(browser.ok()) << browser.status();
  std::cout << browser->out;
  EXPECT_EQ(browser->exit_code, 0)
      << browser->out << browser->err << "\nsaetrack-web log:\n"
      << (*web)->Stderr();
  EXPECT_THAT(browser->out,
              ::testing::HasSubstr("browser_test: all checks passed"));
  for (const char* shot :
       {"jobs", "job", "layer", "drift", "features", "feature"}) {
    EXPECT_TRUE(std::filesystem::file_size(absl::StrCat(
                    SAETRACK_SCREENSHOT_DIR, "/", shot, ".png")) > 10000)
        << shot;
  }
}

}  // namespace
}  // namespace saetrack
