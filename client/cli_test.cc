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

}  // namespace
}  // namespace saetrack::client
