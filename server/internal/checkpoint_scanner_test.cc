#include "server/internal/checkpoint_scanner.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/internal/test_fixtures.h"

namespace saetrack::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using testing::TempDir;

std::vector<int64_t> Steps(const std::vector<FoundCheckpoint>& found) {
  std::vector<int64_t> steps;
  for (const FoundCheckpoint& c : found) steps.push_back(c.step);
  return steps;
}

std::vector<int64_t> Steps(const std::vector<PendingCheckpoint>& pending) {
  std::vector<int64_t> steps;
  for (const PendingCheckpoint& c : pending) steps.push_back(c.step);
  return steps;
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

// A valid safetensors file of 64 + 16 bytes of data (two F32 tensors).
std::string SafetensorsBytes() {
  format::SafetensorsWriter writer;
  const std::vector<float> a(16, 1.0f);
  const std::vector<float> b(4, 2.0f);
  EXPECT_TRUE(writer.AddF32("a", {4, 4}, a.data()).ok());
  EXPECT_TRUE(writer.AddF32("b", {4}, b.data()).ok());
  return writer.Serialize();
}

// config.json and a whole model.safetensors in `dir`.
void WriteComplete(const std::string& dir) {
  testing::WriteCheckpoint(dir);
  WriteFile(dir + "/model.safetensors", SafetensorsBytes());
}

// Sets the mtime of `path` to `ms` Unix milliseconds.
void SetMtimeMs(const std::string& path, int64_t ms) {
  const timespec times[2] = {
      {ms / 1000, (ms % 1000) * 1'000'000},
      {ms / 1000, (ms % 1000) * 1'000'000},
  };
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

CheckpointScanner MakeScanner(const std::string& dir,
                              std::string marker_file = "") {
  absl::StatusOr<CheckpointPattern> pattern =
      ParseCheckpointPattern("step-{step}");
  EXPECT_TRUE(pattern.ok()) << pattern.status();
  return CheckpointScanner(dir, *pattern, std::move(marker_file));
}

CheckpointScanner::Result ScanOk(CheckpointScanner& scanner,
                                 const std::set<int64_t>& skip = {}) {
  absl::StatusOr<CheckpointScanner::Result> result = scanner.Scan(skip);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *std::move(result) : CheckpointScanner::Result();
}

TEST(ParseCheckpointPatternTest, SplitsAroundStep) {
  struct Case {
    std::string pattern, prefix, suffix;
  };
  for (const Case& c :
       std::vector<Case>{{"step-{step}", "step-", ""},
                         {"checkpoint-{step}", "checkpoint-", ""},
                         {"{step}", "", ""},
                         {"ckpt_{step}_done", "ckpt_", "_done"}}) {
    absl::StatusOr<CheckpointPattern> parsed =
        ParseCheckpointPattern(c.pattern);
    ASSERT_TRUE(parsed.ok()) << c.pattern << ": " << parsed.status();
    EXPECT_EQ(parsed->prefix, c.prefix) << c.pattern;
    EXPECT_EQ(parsed->suffix, c.suffix) << c.pattern;
  }
}

TEST(ParseCheckpointPatternTest, RefusesMalformedPatterns) {
  for (const std::string& pattern : std::vector<std::string>{
           "", "step", "a/{step}", "{step}/a", "{step}{step}", "{stp}", "{",
           "}{step}", "step-{step}}", std::string("a\0{step}", 8),
           "step-{step}\n", "\x1b[31m{step}", std::string(237, 'a') + "{step}",
           "{step}" + std::string(300, 'b')}) {
    absl::StatusOr<CheckpointPattern> parsed = ParseCheckpointPattern(pattern);
    ASSERT_FALSE(parsed.ok()) << "accepted \"" << pattern << "\"";
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(),
                HasSubstr("spec.model.follow.pattern"));
  }
}

TEST(ParseCheckpointPatternTest, TakesTheLongestPatternAFileNameCanHold) {
  EXPECT_TRUE(ParseCheckpointPattern(std::string(236, 'a') + "{step}").ok());
  absl::StatusOr<CheckpointPattern> newline =
      ParseCheckpointPattern("step-{step}\n");
  EXPECT_THAT(newline.status().message(),
              HasSubstr("control character (byte 11)"));
}

TEST(MatchCheckpointNameTest, ReadsDecimalSteps) {
  const CheckpointPattern step{"step-", ""};
  EXPECT_EQ(MatchCheckpointName(step, "step-12"), 12);
  EXPECT_EQ(MatchCheckpointName(step, "step-0012"), 12);
  EXPECT_EQ(MatchCheckpointName(step, "step-0"), 0);
  EXPECT_EQ(MatchCheckpointName(step, "step-9223372036854775807"),
            int64_t{9223372036854775807});
  const CheckpointPattern done{"ckpt_", "_done"};
  EXPECT_EQ(MatchCheckpointName(done, "ckpt_5_done"), 5);
  EXPECT_EQ(MatchCheckpointName(CheckpointPattern{}, "300"), 300);
}

TEST(MatchCheckpointNameTest, RefusesOtherNames) {
  const CheckpointPattern step{"step-", ""};
  for (const char* name : {"step-", "step-1a", "step--1", "step-+1", "step- 1",
                           "step-99999999999999999999",
                           "step-9223372036854775808", "xstep-1", "step", ""}) {
    EXPECT_EQ(MatchCheckpointName(step, name), std::nullopt) << name;
  }
  const CheckpointPattern done{"ckpt_", "_done"};
  EXPECT_EQ(MatchCheckpointName(done, "ckpt_5"), std::nullopt);
  EXPECT_EQ(MatchCheckpointName(done, "ckpt__done"), std::nullopt);
  EXPECT_EQ(MatchCheckpointName(done, "ckpt_5_done.tmp"), std::nullopt);
}

TEST(CheckpointScannerTest, CompleteOnTheSecondScanWithNewestMtime) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-100";
  WriteComplete(ckpt);
  SetMtimeMs(ckpt + "/config.json", 1'700'000'000'123);
  SetMtimeMs(ckpt + "/model.safetensors", 1'700'000'005'456);
  CheckpointScanner scanner = MakeScanner(tmp.path());

  CheckpointScanner::Result first = ScanOk(scanner);
  EXPECT_THAT(first.complete, IsEmpty());
  ASSERT_EQ(first.pending.size(), 1u);
  EXPECT_EQ(first.pending[0].step, 100);
  EXPECT_EQ(first.pending[0].path, ckpt);
  EXPECT_THAT(first.pending[0].reason, HasSubstr("first time"));

  CheckpointScanner::Result second = ScanOk(scanner);
  EXPECT_THAT(second.pending, IsEmpty());
  ASSERT_EQ(second.complete.size(), 1u);
  EXPECT_EQ(second.complete[0].step, 100);
  EXPECT_EQ(second.complete[0].path, ckpt);
  EXPECT_EQ(second.complete[0].last_write_ms, 1'700'000'005'456);
}

TEST(CheckpointScannerTest, JoinsPathsWithoutDoubleSlash) {
  TempDir tmp;
  WriteComplete(tmp.path() + "/step-1");
  CheckpointScanner scanner = MakeScanner(tmp.path() + "/");
  ScanOk(scanner);
  CheckpointScanner::Result result = ScanOk(scanner);
  ASSERT_EQ(result.complete.size(), 1u);
  EXPECT_EQ(result.complete[0].path, tmp.path() + "/step-1");
}

TEST(CheckpointScannerTest, TruncatedWeightsStayPendingUntilWhole) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-5";
  testing::WriteCheckpoint(ckpt);
  const std::string whole = SafetensorsBytes();
  WriteFile(ckpt + "/model.safetensors", whole.substr(0, whole.size() - 4));
  CheckpointScanner scanner = MakeScanner(tmp.path());
  for (int scan = 0; scan < 3; ++scan) {
    CheckpointScanner::Result result = ScanOk(scanner);
    EXPECT_THAT(result.complete, IsEmpty()) << "scan " << scan;
    ASSERT_EQ(result.pending.size(), 1u);
    EXPECT_THAT(result.pending[0].reason, HasSubstr("model.safetensors"));
    EXPECT_THAT(result.pending[0].reason,
                HasSubstr(absl::StrCat("data incomplete (", whole.size() - 4,
                                       " of ", whole.size(), " bytes)")));
  }
  WriteFile(ckpt + "/model.safetensors", whole);
  CheckpointScanner::Result seen_whole = ScanOk(scanner);
  EXPECT_THAT(seen_whole.complete, IsEmpty());
  ASSERT_EQ(seen_whole.pending.size(), 1u);
  EXPECT_THAT(seen_whole.pending[0].reason,
              HasSubstr("sizes still changing (model.safetensors)"));
  EXPECT_THAT(Steps(ScanOk(scanner).complete), ElementsAre(5));
}

TEST(CheckpointScannerTest, IncompleteHeadersNameTheFile) {
  TempDir tmp;
  const std::string whole = SafetensorsBytes();
  testing::WriteCheckpoint(tmp.path() + "/step-1");
  WriteFile(tmp.path() + "/step-1/model.safetensors", whole.substr(0, 5));
  testing::WriteCheckpoint(tmp.path() + "/step-2");
  WriteFile(tmp.path() + "/step-2/model.safetensors", whole.substr(0, 20));
  testing::WriteCheckpoint(tmp.path() + "/step-3");
  // A length of 2^40: an invalid header, not 1 TB to wait for.
  WriteFile(tmp.path() + "/step-3/model.safetensors",
            std::string("\0\0\0\0\0\1\0\0{}", 10));
  testing::WriteCheckpoint(tmp.path() + "/step-4");
  std::string garbled = whole;
  garbled[8] = '[';
  WriteFile(tmp.path() + "/step-4/model.safetensors", garbled);
  CheckpointScanner scanner = MakeScanner(tmp.path());
  ScanOk(scanner);
  CheckpointScanner::Result result = ScanOk(scanner);
  EXPECT_THAT(result.complete, IsEmpty());
  ASSERT_EQ(result.pending.size(), 4u);
  EXPECT_EQ(result.pending[0].reason,
            "model.safetensors: header incomplete (5 of 8 length bytes)");
  EXPECT_THAT(result.pending[1].reason,
              HasSubstr("model.safetensors: header incomplete (12 of "));
  EXPECT_THAT(result.pending[2].reason,
              HasSubstr("model.safetensors: invalid header (length "
                        "1099511627776 exceeds"));
  EXPECT_THAT(result.pending[3].reason,
              HasSubstr("model.safetensors: invalid header"));
}

TEST(CheckpointScannerTest, ChangingSizeKeepsItPending) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-7";
  WriteComplete(ckpt);
  CheckpointScanner scanner = MakeScanner(tmp.path());
  EXPECT_THAT(ScanOk(scanner).complete, IsEmpty());
  // Trailing whitespace keeps it valid JSON, so only the size tells.
  std::ofstream(ckpt + "/config.json", std::ios::app) << "\n";
  CheckpointScanner::Result changed = ScanOk(scanner);
  EXPECT_THAT(changed.complete, IsEmpty());
  ASSERT_EQ(changed.pending.size(), 1u);
  EXPECT_EQ(changed.pending[0].reason, "sizes still changing (config.json)");
  EXPECT_THAT(Steps(ScanOk(scanner).complete), ElementsAre(7));
}

TEST(CheckpointScannerTest, MissingConfigKeepsItPending) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-3";
  std::filesystem::create_directories(ckpt);
  WriteFile(ckpt + "/model.safetensors", SafetensorsBytes());
  CheckpointScanner scanner = MakeScanner(tmp.path());
  for (int scan = 0; scan < 3; ++scan) {
    CheckpointScanner::Result result = ScanOk(scanner);
    EXPECT_THAT(result.complete, IsEmpty());
    ASSERT_EQ(result.pending.size(), 1u);
    EXPECT_EQ(result.pending[0].reason, "config.json: missing");
  }
  WriteFile(ckpt + "/config.json", "{\"model_type\": ");
  CheckpointScanner::Result partial = ScanOk(scanner);
  ASSERT_EQ(partial.pending.size(), 1u);
  EXPECT_THAT(partial.pending[0].reason, HasSubstr("config.json"));
  EXPECT_THAT(partial.pending[0].reason, HasSubstr("invalid JSON"));
}

TEST(CheckpointScannerTest, MissingWeightsKeepItPending) {
  TempDir tmp;
  std::filesystem::create_directories(tmp.path() + "/step-3");
  WriteFile(tmp.path() + "/step-3/config.json", "{}");
  CheckpointScanner scanner = MakeScanner(tmp.path());
  ScanOk(scanner);
  CheckpointScanner::Result result = ScanOk(scanner);
  ASSERT_EQ(result.pending.size(), 1u);
  EXPECT_THAT(result.pending[0].reason, HasSubstr("no weights yet"));
}

TEST(CheckpointScannerTest, ShardedWeightsNeedEveryShard) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-9";
  testing::WriteCheckpoint(ckpt);
  std::filesystem::remove(ckpt + "/model.safetensors");
  WriteFile(ckpt + "/model.safetensors.index.json",
            R"({"metadata": {"total_size": 160}, "weight_map": {)"
            R"("a": "model-00001-of-00002.safetensors",)"
            R"("b": "model-00001-of-00002.safetensors",)"
            R"("c": "model-00002-of-00002.safetensors"}})");
  WriteFile(ckpt + "/model-00001-of-00002.safetensors", SafetensorsBytes());
  CheckpointScanner scanner = MakeScanner(tmp.path());
  for (int scan = 0; scan < 2; ++scan) {
    CheckpointScanner::Result result = ScanOk(scanner);
    EXPECT_THAT(result.complete, IsEmpty());
    ASSERT_EQ(result.pending.size(), 1u);
    EXPECT_EQ(result.pending[0].reason,
              "model-00002-of-00002.safetensors: missing");
  }
  WriteFile(ckpt + "/model-00002-of-00002.safetensors", SafetensorsBytes());
  CheckpointScanner::Result new_shard = ScanOk(scanner);
  EXPECT_THAT(new_shard.complete, IsEmpty());
  ASSERT_EQ(new_shard.pending.size(), 1u);
  EXPECT_EQ(new_shard.pending[0].reason,
            "sizes still changing (model-00002-of-00002.safetensors)");
  EXPECT_THAT(Steps(ScanOk(scanner).complete), ElementsAre(9));
}

TEST(CheckpointScannerTest, IndexThatIsNotAWeightMapKeepsItPending) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-9";
  testing::WriteCheckpoint(ckpt);
  std::filesystem::remove(ckpt + "/model.safetensors");
  WriteFile(ckpt + "/model.safetensors.index.json",
            R"({"weight_map": {"a": "../elsewhere.safetensors"}})");
  CheckpointScanner scanner = MakeScanner(tmp.path());
  ScanOk(scanner);
  CheckpointScanner::Result result = ScanOk(scanner);
  ASSERT_EQ(result.pending.size(), 1u);
  EXPECT_THAT(result.pending[0].reason,
              HasSubstr("model.safetensors.index.json: weight_map entry"));
}

TEST(CheckpointScannerTest, MarkerModeCompletesOnTheScanThatSeesTheMarker) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-40";
  std::filesystem::create_directories(ckpt);
  CheckpointScanner scanner = MakeScanner(tmp.path(), "DONE");
  for (int scan = 0; scan < 2; ++scan) {
    CheckpointScanner::Result result = ScanOk(scanner);
    EXPECT_THAT(result.complete, IsEmpty());
    ASSERT_EQ(result.pending.size(), 1u);
    EXPECT_EQ(result.pending[0].step, 40);
    EXPECT_EQ(result.pending[0].reason, "waiting for marker file DONE");
  }
  WriteFile(ckpt + "/DONE", "");
  SetMtimeMs(ckpt + "/DONE", 1'650'000'000'250);
  CheckpointScanner::Result result = ScanOk(scanner);
  EXPECT_THAT(result.pending, IsEmpty());
  ASSERT_EQ(result.complete.size(), 1u);
  EXPECT_EQ(result.complete[0].step, 40);
  EXPECT_EQ(result.complete[0].path, ckpt);
  EXPECT_EQ(result.complete[0].last_write_ms, 1'650'000'000'250);
}

TEST(CheckpointScannerTest, MarkerMustBeARegularFile) {
  TempDir tmp;
  std::filesystem::create_directories(tmp.path() + "/step-1/DONE");
  std::filesystem::create_directories(tmp.path() + "/step-2");
  ASSERT_EQ(::mkfifo((tmp.path() + "/step-2/DONE").c_str(), 0600), 0);
  CheckpointScanner scanner = MakeScanner(tmp.path(), "DONE");
  CheckpointScanner::Result result = ScanOk(scanner);
  EXPECT_THAT(result.complete, IsEmpty());
  ASSERT_EQ(result.pending.size(), 2u);
  EXPECT_EQ(result.pending[0].reason,
            "marker file DONE is a directory, expected a regular file");
  EXPECT_EQ(result.pending[1].reason,
            "marker file DONE is a FIFO, expected a regular file");
}

TEST(CheckpointScannerTest, SkippedStepsAreNotReportedAndResultsAreSorted) {
  TempDir tmp;
  for (int step : {200, 30, 4, 1000, 5}) {
    WriteComplete(absl::StrCat(tmp.path(), "/step-", step));
  }
  // Incomplete, to show pending results are sorted too.
  for (int step : {70, 6}) {
    std::filesystem::create_directories(
        absl::StrCat(tmp.path(), "/step-", step));
  }
  CheckpointScanner scanner = MakeScanner(tmp.path());
  const std::set<int64_t> skip = {5, 1000};
  CheckpointScanner::Result first = ScanOk(scanner, skip);
  EXPECT_THAT(first.complete, IsEmpty());
  EXPECT_THAT(Steps(first.pending), ElementsAre(4, 6, 30, 70, 200));
  CheckpointScanner::Result second = ScanOk(scanner, skip);
  EXPECT_THAT(Steps(second.complete), ElementsAre(4, 30, 200));
  EXPECT_THAT(Steps(second.pending), ElementsAre(6, 70));
}

TEST(CheckpointScannerTest, FifoWeightsDoNotBlockTheScan) {
  TempDir tmp;
  const std::string ckpt = tmp.path() + "/step-2";
  testing::WriteCheckpoint(ckpt);
  std::filesystem::remove(ckpt + "/model.safetensors");
  ASSERT_EQ(::mkfifo((ckpt + "/model.safetensors").c_str(), 0600), 0);
  CheckpointScanner scanner = MakeScanner(tmp.path());
  for (int scan = 0; scan < 2; ++scan) {
    CheckpointScanner::Result result = ScanOk(scanner);
    EXPECT_THAT(result.complete, IsEmpty());
    ASSERT_EQ(result.pending.size(), 1u);
    EXPECT_EQ(result.pending[0].reason,
              "model.safetensors is a FIFO, expected a regular file");
  }
}

TEST(CheckpointScannerTest, SymlinkedFilesAreNotFollowed) {
  TempDir tmp;
  WriteComplete(tmp.path() + "/real");
  const std::string ckpt = tmp.path() + "/step-3";
  std::filesystem::create_directories(ckpt);
  std::filesystem::create_symlink(tmp.path() + "/real/config.json",
                                  ckpt + "/config.json");
  WriteFile(ckpt + "/model.safetensors", SafetensorsBytes());
  CheckpointScanner scanner = MakeScanner(tmp.path());
  ScanOk(scanner);
  CheckpointScanner::Result result = ScanOk(scanner);
  EXPECT_THAT(result.complete, IsEmpty());
  ASSERT_EQ(result.pending.size(), 1u);
  EXPECT_EQ(result.pending[0].reason,
            "config.json is a symlink, expected a regular file");
}

TEST(CheckpointScannerTest, IgnoresFilesSymlinksAndOtherNames) {
  TempDir tmp;
  WriteComplete(tmp.path() + "/real");
  WriteComplete(tmp.path() + "/step-x");
  WriteComplete(tmp.path() + "/checkpoint-8");
  WriteFile(tmp.path() + "/step-5", "not a directory");
  std::filesystem::create_directory_symlink(tmp.path() + "/real",
                                            tmp.path() + "/step-6");
  CheckpointScanner scanner = MakeScanner(tmp.path());
  for (int scan = 0; scan < 2; ++scan) {
    CheckpointScanner::Result result = ScanOk(scanner);
    EXPECT_THAT(result.complete, IsEmpty());
    EXPECT_THAT(result.pending, IsEmpty());
  }
}

TEST(CheckpointScannerTest, TwoNamesForOneStepStayPending) {
  TempDir tmp;
  WriteComplete(tmp.path() + "/step-7");
  WriteComplete(tmp.path() + "/step-07");
  CheckpointScanner scanner = MakeScanner(tmp.path());
  ScanOk(scanner);
  CheckpointScanner::Result result = ScanOk(scanner);
  EXPECT_THAT(result.complete, IsEmpty());
  ASSERT_EQ(result.pending.size(), 1u);
  EXPECT_EQ(result.pending[0].step, 7);
  EXPECT_EQ(result.pending[0].reason,
            "step 7 is named by more than one directory: step-07, step-7");
}

TEST(CheckpointScannerTest, ExaminesAtMostTheCapLowestStepsFirst) {
  TempDir tmp;
  const int extra = 5;
  for (int step = 0; step < CheckpointScanner::kMaxEntriesPerScan + extra;
       ++step) {
    ASSERT_TRUE(std::filesystem::create_directory(
        absl::StrCat(tmp.path(), "/step-", step)));
  }
  CheckpointScanner scanner = MakeScanner(tmp.path());
  CheckpointScanner::Result result = ScanOk(scanner);
  ASSERT_EQ(result.pending.size(),
            static_cast<size_t>(CheckpointScanner::kMaxEntriesPerScan));
  EXPECT_EQ(result.pending.front().step, 0);
  EXPECT_EQ(result.pending.back().step,
            CheckpointScanner::kMaxEntriesPerScan - 1);
  // Once the lowest are skipped, the rest come into view.
  const std::set<int64_t> skip = {0, 1, 2, 3, 4};
  result = ScanOk(scanner, skip);
  ASSERT_EQ(result.pending.size(),
            static_cast<size_t>(CheckpointScanner::kMaxEntriesPerScan));
  EXPECT_EQ(result.pending.front().step, extra);
  EXPECT_EQ(result.pending.back().step,
            CheckpointScanner::kMaxEntriesPerScan + extra - 1);
}

TEST(CheckpointScannerTest, MissingDirectoryIsNotFound) {
  TempDir tmp;
  const std::string missing = tmp.path() + "/no-such-run";
  CheckpointScanner scanner = MakeScanner(missing);
  absl::StatusOr<CheckpointScanner::Result> result = scanner.Scan({});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(result.status().message(), HasSubstr(missing));
}

// A follow directory swapped for a link that leads out of the data roots is
// not listed: the scan fails, naming neither what lies there nor whether it
// exists. A link that stays under the roots is followed.
TEST(CheckpointScannerTest, ADirectoryLeadingOutOfTheRootsIsNotListed) {
  TempDir tmp;
  const std::string root = tmp.path() + "/root";
  const std::string outside = tmp.path() + "/outside";
  WriteComplete(outside + "/step-30");
  WriteComplete(root + "/elsewhere/step-7");
  const std::string run = root + "/run";
  std::filesystem::create_symlink(root + "/elsewhere", run);
  const format::DataRoots roots({root});
  CheckpointScanner inside(run, CheckpointPattern{"step-", ""}, "", roots);
  ScanOk(inside);
  ASSERT_EQ(ScanOk(inside).complete.size(), 1u);

  std::filesystem::remove(run);
  std::filesystem::create_symlink(outside, run);
  CheckpointScanner swapped(run, CheckpointPattern{"step-", ""}, "", roots);
  absl::StatusOr<CheckpointScanner::Result> result = swapped.Scan({});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(result.status().message(),
            "follow directory " + run +
                " no longer lies under the data roots; it is not listed");
}

TEST(CheckpointScannerTest, FileAsDirectoryIsFailedPrecondition) {
  TempDir tmp;
  const std::string file = tmp.path() + "/run";
  WriteFile(file, "");
  CheckpointScanner scanner = MakeScanner(file);
  absl::StatusOr<CheckpointScanner::Result> result = scanner.Scan({});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(result.status().message(), HasSubstr(file));
}

}  // namespace
}  // namespace saetrack::server
