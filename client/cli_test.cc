#include "client/cli.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>

namespace saetrack::client {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result RunSaetrack(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  int code = RunCli(args, out, err, /*err_is_terminal=*/false);
  return {code, out.str(), err.str()};
}

TEST(CliTest, HelpListsEveryCommand) {
  Result r = RunSaetrack({"--help"});
  EXPECT_EQ(r.code, kExitOk);
  for (const char* command : {"submit", "status", "list", "metrics", "feature",
                              "--coordinator", "--json"}) {
    EXPECT_THAT(r.out, HasSubstr(command));
  }
}

TEST(CliTest, UsageErrorsExitTwoWithOneLine) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {},
           {"frobnicate"},
           {"status"},
           {"metrics", "job-1"},
           {"feature", "job-1", "--layer", "1"},
           {"feature", "job-1", "--layer", "x", "--id", "1"},
           {"status", "job-1", "--bogus"},
           {"status", "job-1", "--coordinator"}}) {
    Result r = RunSaetrack(args);
    EXPECT_EQ(r.code, kExitUsage) << r.err;
    EXPECT_THAT(r.err, StartsWith("saetrack: "));
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

TEST(CliTest, UnreadableJobFileFailsBeforeContactingCoordinator) {
  Result r = RunSaetrack(
      {"submit", "/nonexistent/job.json", "--coordinator", "127.0.0.1:1"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
  EXPECT_THAT(r.err, HasSubstr("/nonexistent/job.json"));
}

TEST(CliTest, UnreachableCoordinatorIsUnavailable) {
  // Port 1 on loopback refuses connections.
  Result r = RunSaetrack({"status", "job-000001", "--coordinator=127.0.0.1:1"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, StartsWith("saetrack: UNAVAILABLE: "));
}

TEST(CliTest, MetricsTableShowsLmEvaluationAndNotes) {
  v1::GetCheckpointMetricsResponse metrics;
  v1::CheckpointMetrics* first = metrics.add_checkpoints();
  first->set_chain_index(0);
  first->set_tokens_trained(1'000'000);
  first->mutable_lm()->set_loss_recovered(0.8766);
  first->mutable_lm()->set_kl_divergence(0.0123);
  v1::CheckpointMetrics* later = metrics.add_checkpoints();
  later->set_chain_index(1);
  later->set_step(8);
  later->set_stopped_early(true);
  later->set_resumed_from_tokens(20'000);
  later->set_median_decoder_cos_prev(0.99);

  const std::string table = FormatCheckpointMetrics(metrics);
  std::vector<std::string> lines;
  for (size_t start = 0, end; start < table.size(); start = end + 1) {
    end = table.find('\n', start);
    lines.push_back(table.substr(start, end - start));
  }
  // A header and one line per checkpoint, as scripts count them.
  ASSERT_EQ(lines.size(), 3u) << table;
  EXPECT_THAT(lines[0], HasSubstr("loss rec"));
  EXPECT_THAT(lines[0], HasSubstr("KL"));
  EXPECT_THAT(lines[1], HasSubstr("87.7%"));
  EXPECT_THAT(lines[1], HasSubstr("0.0123"));
  EXPECT_THAT(lines[1], ::testing::Not(HasSubstr("stopped early")));
  // Without an LM evaluation both columns read "-".
  EXPECT_THAT(lines[2], HasSubstr("       -        -"));
  EXPECT_THAT(lines[2], HasSubstr("stopped early, resumed at 20.0k"));
}

}  // namespace
}  // namespace saetrack::client
