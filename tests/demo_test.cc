// The README's demo, shortened (`deploy/demo.sh --quick`: LM checkpoints up
// to step 64, smaller SAEs and budgets), run end to end with the built
// binaries: a real tiny LM trained, a real coordinator and worker, the
// report's sections and the invariants behind them, the processes stopped
// afterwards, and the data directory still queryable.
#include <google/protobuf/util/json_util.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "format/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/query.pb.h"
#include "tests/child_process.h"

namespace saetrack {
namespace {

using testing::ChildProcess;
using testing::CommandResult;
using ::testing::HasSubstr;
using ::testing::Not;

// The quick job (deploy/jobs/demo-job-quick.json).
const std::vector<int64_t> kSteps = {0, 1, 2, 4, 8, 16, 32, 64};
constexpr int kDSae = 512;  // expansion 4 x d_model 128
// The hooked layers: an early and a middle one of the 4-layer LM.
constexpr int kLayers[] = {1, 2};

template <typename Message>
Message FromJson(const std::string& json) {
  Message message;
  const auto status = google::protobuf::util::JsonStringToMessage(
      json, &message, google::protobuf::util::JsonParseOptions());
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  return message;
}

// The text of `out` between the section titled `title` ("\n== title") and
// the next one; empty when there is no such section.
std::string SectionOf(const std::string& out, const std::string& title) {
  const size_t begin = out.find("\n== " + title);
  if (begin == std::string::npos) return "";
  const size_t end = out.find("\n== ", begin + 1);
  return out.substr(begin,
                    end == std::string::npos ? std::string::npos : end - begin);
}

// Whether every title appears as a section of `out`, in this order; names
// the first that does not.
::testing::AssertionResult HasSectionsInOrder(
    const std::string& out, const std::vector<std::string>& titles) {
  size_t at = 0;
  for (const std::string& title : titles) {
    const size_t found = out.find("\n== " + title, at);
    if (found == std::string::npos) {
      return ::testing::AssertionFailure()
             << "missing or out of order: " << title << "\n"
             << out;
    }
    at = found + 1;
  }
  return ::testing::AssertionSuccess();
}

// The "step N held-out loss X" lines of `text`, as (step, loss).
std::vector<std::pair<int, double>> HeldOutLosses(const std::string& text) {
  std::vector<std::pair<int, double>> losses;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    int step = 0;
    double loss = 0;
    const std::string copy(line);
    if (std::sscanf(copy.c_str(), "step %d held-out loss %lf", &step, &loss) ==
        2) {
      losses.emplace_back(step, loss);
    }
  }
  return losses;
}

// The chain's steps in the "Per-checkpoint SAE metrics" section `section`.
std::vector<int64_t> MetricsSteps(const std::string& section) {
  const std::regex row(R"(\n\s+(\d+)\s+(\d+)\s+(\S+)\s+([0-9.]+)\s+([0-9.]+))");
  std::vector<int64_t> steps;
  for (auto it = std::sregex_iterator(section.begin(), section.end(), row);
       it != std::sregex_iterator(); ++it) {
    steps.push_back(std::stoll((*it)[2]));
  }
  return steps;
}

// Whether process `pid` has ended.
bool Ended(pid_t pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

// Runs the quick demo once for the whole suite.
class DemoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(testing::MakeTempDir("demo"));
    auto result = testing::RunCommand(
        {"/bin/bash", SAETRACK_DEMO_SCRIPT, "--quick", "--seeds", "2", "--bin",
         SAETRACK_BIN_DIR, "--data", *data_},
        // 3.5 min alone on 2 cores; ctest -j2 runs the slowest tests
        // beside it.
        *data_ + "/demo", absl::Minutes(20));
    ASSERT_TRUE(result.ok()) << result.status();
    run_ = new CommandResult(*result);
  }

  static void TearDownTestSuite() {
    delete run_;
    delete data_;
  }

  void SetUp() override {
    ASSERT_NE(run_, nullptr);
    ASSERT_EQ(run_->exit_code, 0) << run_->out << "\n" << run_->err;
  }

  // The report's text between the section titled `title` and the next one.
  static std::string Section(const std::string& title) {
    return SectionOf(run_->out, title);
  }

  static std::string* data_;
  static CommandResult* run_;
};

std::string* DemoTest::data_ = nullptr;
CommandResult* DemoTest::run_ = nullptr;

TEST_F(DemoTest, ReportHasEverySectionInOrder) {
  const std::vector<std::string> titles = {
      "Learning a BPE vocabulary on Tiny Shakespeare",
      "Training the small GPT-NeoX on Tiny Shakespeare",
      "Starting a coordinator and a worker",
      "Submitting deploy/jobs/demo-job-quick.json (SAE seed 1) and waiting",
      "Submitting deploy/jobs/demo-job-quick.json (SAE seed 11) and waiting",
      "Per-checkpoint SAE metrics (job-000001, layer 1)",
      "Trust checks (job-000001, layer 1)",
      "Decoder drift and phases (job-000001, layer 1)",
      "Per-checkpoint SAE metrics (job-000001, layer 2)",
      "Trust checks (job-000001, layer 2)",
      "Decoder drift and phases (job-000001, layer 2)",
      "Findings over 2 SAE seed(s) (layer 1)",
      "Findings over 2 SAE seed(s) (layer 2)",
      "Most frequent token-level and concept-level features (layer 1)",
      "Feature ",
      "Feature ",
      "Feature ",
      "Done",
  };
  ASSERT_TRUE(HasSectionsInOrder(run_->out, titles));
  EXPECT_THAT(
      Section("Submitting deploy/jobs/demo-job-quick.json (SAE seed 1)"),
      HasSubstr("job-000001 succeeded"));
  EXPECT_THAT(
      Section("Submitting deploy/jobs/demo-job-quick.json (SAE seed 11)"),
      HasSubstr("job-000002 succeeded"));
  EXPECT_THAT(Section("Done"),
              HasSubstr("saetrack drift job-000001 --layer 1"));
}

// The vocabulary is learnt on the corpus, and the LM's held-out loss per
// checkpoint starts at ln(4096) and falls.
TEST_F(DemoTest, LearnsAVocabularyAndReportsHeldOutLoss) {
  EXPECT_THAT(Section("Learning a BPE vocabulary"),
              HasSubstr("vocabulary 4096 ids; deploy/demo/tinyshakespeare.txt: "
                        "1115394 bytes -> 344096 tokens"));
  const std::string lm = Section("Training the small GPT-NeoX");
  const std::vector<std::pair<int, double>> losses = HeldOutLosses(lm);
  ASSERT_EQ(losses.size(), 8u) << lm;  // steps 0, 1, 2, 4, ..., 64
  EXPECT_EQ(losses.front().first, 0);
  EXPECT_NEAR(losses.front().second, std::log(4096.0), 0.1);
  EXPECT_EQ(losses.back().first, 64);
  EXPECT_LT(losses.back().second, losses.front().second - 2.0) << lm;
}

// The trust checks of the three reference checkpoints: both SAEs' rows and
// a verdict per check, each "ok" or "FAIL" with its numbers.
TEST_F(DemoTest, TrustChecksJudgeThreeReferenceCheckpoints) {
  for (int layer : kLayers) {
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    const std::string section =
        Section(absl::StrCat("Trust checks (job-000001, layer ", layer, ")"));
    ASSERT_FALSE(section.empty());
    const std::regex seed_row(R"(\n\s+seed 2\s)");
    EXPECT_EQ(std::distance(std::sregex_iterator(section.begin(), section.end(),
                                                 seed_row),
                            std::sregex_iterator()),
              3)
        << section;
    const std::regex verdict(
        R"(\n(ok  |FAIL)  (seed stability|distance from initialisation|chain vs )"
        R"(independent|recurrence speed-up) at step \d+: .+)");
    // Seed stability once, distance at all three, chain vs independent and the
    // speed-up at the later two.
    EXPECT_EQ(std::distance(
                  std::sregex_iterator(section.begin(), section.end(), verdict),
                  std::sregex_iterator()),
              8)
        << section;
    EXPECT_THAT(section, HasSubstr("random dictionaries"));

    // The speed-up table: one row per later reference checkpoint, each arm
    // "never" or its tokens, scratch_tokens / max(tokens, batch) and L0.
    EXPECT_THAT(section,
                HasSubstr("recurrence speed-up: tokens to within 2% of "
                          "the independent SAE's final loss"));
    const std::string arm = R"((never|(\d+)  ([0-9.]+)x  L0 [0-9.]+))";
    const std::regex row(R"(\n\s+(\d+)\s+(\d+)\s+([0-9.]+)  )" + arm +
                         R"(\s+)" + arm + R"((?= *\n))");
    std::vector<int64_t> steps;
    for (auto it = std::sregex_iterator(section.begin(), section.end(), row);
         it != std::sregex_iterator(); ++it) {
      const std::smatch& m = *it;
      steps.push_back(std::stoll(m[1]));
      const int64_t scratch = std::stoll(m[2]);
      EXPECT_GT(scratch, 0) << m.str();
      EXPECT_LE(scratch, 131072) << m.str();
      for (int group : {5, 8}) {
        if (!m[group].matched) continue;
        const int64_t tokens = std::stoll(m[group]);
        EXPECT_LE(tokens, 131072) << m.str();
        EXPECT_NEAR(
            std::stod(m[group + 1]),
            static_cast<double>(scratch) / std::max<int64_t>(tokens, 256),
            0.051)
            << m.str();
      }
    }
    ASSERT_EQ(steps.size(), 2u) << section;
    EXPECT_LT(steps[0], steps[1]);
    EXPECT_EQ(steps[1], kSteps.back());
  }
}

TEST_F(DemoTest, MetricsHaveOneRowPerCheckpointInChainOrder) {
  for (int layer : kLayers) {
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    const std::string section = Section(absl::StrCat(
        "Per-checkpoint SAE metrics (job-000001, layer ", layer, ")"));
    // chain step tokens FVU init-FVU ...
    const std::regex row(
        R"(\n\s+(\d+)\s+(\d+)\s+(\S+)\s+([0-9.]+)\s+([0-9.]+))");
    std::vector<int64_t> steps;
    for (auto it = std::sregex_iterator(section.begin(), section.end(), row);
         it != std::sregex_iterator(); ++it) {
      const int chain = std::stoi((*it)[1]);
      EXPECT_EQ(chain, static_cast<int>(steps.size()));
      steps.push_back(std::stoll((*it)[2]));
      // The first SAE trains the first-SAE budget, every later one far fewer.
      EXPECT_EQ((*it)[3], chain == 0 ? "131.1k" : "16.4k") << it->str();
      const double fvu = std::stod((*it)[4]);
      EXPECT_GT(fvu, 0);
      EXPECT_LT(fvu, 1) << it->str();
    }
    EXPECT_EQ(steps, kSteps) << section;
  }
}

TEST_F(DemoTest, DriftStatesEachFindingAndCountsEveryFeature) {
  for (int layer : kLayers) {
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    const std::string section = Section(absl::StrCat(
        "Decoder drift and phases (job-000001, layer ", layer, ")"));
    for (const std::string finding : {"drift", "phases", "formation"}) {
      EXPECT_TRUE(std::regex_search(
          section,
          std::regex("\n  " + finding +
                     ": (reproduces|does NOT reproduce|not measured)")))
          << finding << "\n"
          << section;
    }
    // Kinds: token-level + concept-level + dead = d_sae.
    const std::regex kind(
        R"(\n(token-level|concept-level|dead)\s+(\d+)\s+(\d+))");
    int total = 0;
    int kinds = 0;
    for (auto it = std::sregex_iterator(section.begin(), section.end(), kind);
         it != std::sregex_iterator(); ++it) {
      total += std::stoi((*it)[2]);
      EXPECT_LE(std::stoi((*it)[3]), std::stoi((*it)[2])) << it->str();
      ++kinds;
    }
    EXPECT_EQ(kinds, 3) << section;
    EXPECT_EQ(total, kDSae) << section;
    // The progress measure with the token-controlled baseline beside the
    // paper's: token identity explains less of a token-level feature's top
    // contexts once the baseline holds the same tokens.
    std::smatch progress;
    ASSERT_TRUE(std::regex_search(
        section, progress,
        std::regex(R"(progress at step 64 \(median P act\): random-position )"
                   R"(baseline / same-token baseline\ntoken-level\s+)"
                   R"((-?[0-9.]+) / (-?[0-9.]+)\n)")))
        << section;
    EXPECT_LT(std::stod(progress[2]), std::stod(progress[1])) << section;
    // One drift row per checkpoint, the last one at cos 1 to itself.
    EXPECT_TRUE(std::regex_search(
        section, std::regex(R"(\n\s+7\s+64\s+1\.000\s+1\.000\s+1\.000)")))
        << section;
  }
}

// Each finding over the two seeds' jobs, per layer: a column per job, the
// median and range, drift beside the level two SAEs of a checkpoint share,
// the token-controlled baseline, and the verdicts counted over the seeds.
TEST_F(DemoTest, FindingsOverTwoSeedsHaveRangesAndVerdicts) {
  for (int layer : kLayers) {
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    const std::string section = Section(
        absl::StrCat("Findings over 2 SAE seed(s) (layer ", layer, ")"));
    ASSERT_FALSE(section.empty());
    EXPECT_THAT(section,
                HasSubstr(absl::StrCat("findings over 2 runs at layer ", layer,
                                       ": job-000001 (seed 1) job-000002 "
                                       "(seed 11)\n")));
    // A number, its two values and their median and range, consistent.
    const std::string cos = R"((-?[0-9]\.[0-9]{3}))";
    const auto row = [&](const std::string& name) {
      return std::regex("\n" + name + R"(\s+)" + cos + R"(\s+)" + cos +
                        R"(\s+)" + cos + "  " + cos + " - " + cos + "\n");
    };
    for (const std::string name :
         {"drift: median cos to final at step 0",
          "  two SAEs of step 0 \\(matched cos\\)", "  two random dictionaries",
          "  final P, same-token baseline"}) {
      std::smatch m;
      ASSERT_TRUE(std::regex_search(section, m, row(name))) << name << "\n"
                                                            << section;
      const double a = std::stod(m[1]), b = std::stod(m[2]);
      EXPECT_NEAR(std::stod(m[3]), (a + b) / 2, 0.0011) << m.str();
      EXPECT_NEAR(std::stod(m[4]), std::min(a, b), 0.0005) << m.str();
      EXPECT_NEAR(std::stod(m[5]), std::max(a, b), 0.0005) << m.str();
    }
    for (const std::string finding : {"drift", "phases", "formation"}) {
      EXPECT_TRUE(std::regex_search(
          section, std::regex("\n  " + finding +
                              ": (reproduces|reproduces only weakly|does NOT "
                              "reproduce|not measured) in [12] of 2 runs")))
          << finding << "\n"
          << section;
    }
    // Drift vs noise at the first and middle reference checkpoints (not at
    // the final one, its own final direction).
    for (const std::string step : {"0", "[1-9][0-9]*"}) {
      EXPECT_TRUE(std::regex_search(
          section, std::regex("\n  drift vs noise at step " + step +
                              ": (signal|barely above the noise|within the "
                              "noise|not measured) in [12] of 2 runs")))
          << step << "\n"
          << section;
    }
    EXPECT_THAT(section, Not(HasSubstr("drift vs noise at step 64")));
    // Two later reference checkpoints per job: four links.
    EXPECT_TRUE(std::regex_search(
        section,
        std::regex(R"(\n  speed-up, same lr: (median [0-9.]+x over the [1-4] )"
                   R"(of 4 links that reached the from-scratch loss \(range )"
                   R"([0-9.]+x - [0-9.]+x\)|never reached the from-scratch )"
                   R"(loss on any of 4 links))")))
        << section;
  }
}

// Both hooks of a checkpoint from one forward pass: the worker trained the
// second hook's SAE of every checkpoint on activations kept from the
// first's.
TEST_F(DemoTest, TheSecondHookReusesTheFirstHooksForwardPass) {
  std::ifstream log(*data_ + "/worker.log");
  ASSERT_TRUE(log.good());
  int shared = 0, trained = 0;
  for (std::string line; std::getline(log, line);) {
    if (line.find(": done in ") == std::string::npos) continue;
    ++trained;
    if (line.find("activations from another hook's forward pass") !=
        std::string::npos) {
      ++shared;
    }
  }
  // Two jobs, two hooks, eight checkpoints.
  EXPECT_EQ(trained, 2 * 2 * 8);
  EXPECT_EQ(shared, 2 * 8);
}

TEST_F(DemoTest, ExampleFeaturesShowContextsAtFirstMiddleAndFinal) {
  const std::regex title(R"(\n== Feature (\d+) across the checkpoints)");
  std::vector<std::string> ids;
  for (auto it =
           std::sregex_iterator(run_->out.begin(), run_->out.end(), title);
       it != std::sregex_iterator(); ++it) {
    ids.push_back((*it)[1]);
  }
  ASSERT_EQ(ids.size(), 3u);
  for (const std::string& id : ids) {
    const std::string section = Section("Feature " + id + " across");
    EXPECT_THAT(section, HasSubstr("feature " + id + ", layer 1"));
    EXPECT_THAT(section,
                HasSubstr("top contexts at step 0 (first checkpoint)"));
    EXPECT_THAT(section, HasSubstr("(middle checkpoint)"));
    EXPECT_THAT(section,
                HasSubstr("top contexts at step 64 (final checkpoint)"));
    // The byte-level tokenizer decodes contexts to text: the marked token
    // sits inside [[ ]].
    EXPECT_TRUE(std::regex_search(section, std::regex(R"(\[\[.+\]\])")))
        << section;
  }
  // The first is token-level, the other two concept-level.
  EXPECT_THAT(Section("Feature " + ids[0] + " across"),
              HasSubstr("kind token-level"));
  EXPECT_THAT(Section("Feature " + ids[1] + " across"),
              HasSubstr("kind concept-level"));
}

TEST_F(DemoTest, StopsItsProcessesAndLeavesTheDataQueryable) {
  std::smatch pids;
  ASSERT_TRUE(std::regex_search(
      run_->out, pids, std::regex(R"(pids: coordinator (\d+) worker (\d+))")));
  for (int i : {1, 2}) {
    const pid_t pid = std::stoi(pids[i]);
    EXPECT_TRUE(Ended(pid)) << "process " << pid << " still runs";
  }

  // A coordinator on the kept data directory serves the finished job.
  const std::string port_file = *data_ + "/ports-again";
  auto coordinator = ChildProcess::Start(
      {SAETRACK_BIN_DIR "/saetrack-coordinator", "--data_dir",
       *data_ + "/coordinator", "--listen", "127.0.0.1:0", "--metrics_listen",
       "", "--port_file", port_file},
      *data_ + "/coordinator-again");
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        return testing::ReadFileOrEmpty(port_file).find("grpc=") !=
               std::string::npos;
      },
      absl::Seconds(30)))
      << (*coordinator)->Stderr();
  std::string address;
  for (absl::string_view line :
       absl::StrSplit(testing::ReadFileOrEmpty(port_file), '\n')) {
    if (absl::ConsumePrefix(&line, "grpc=")) {
      address = absl::StrCat("127.0.0.1:", line);
    }
  }
  const auto run = [&](std::vector<std::string> args) {
    args.push_back("--coordinator");
    args.push_back(address);
    static int calls = 0;
    auto result = testing::RunCommand(
        args, absl::StrCat(*data_, "/query-", calls++), absl::Minutes(2));
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : CommandResult{};
  };
  CommandResult status =
      run({SAETRACK_BIN_DIR "/saetrack", "status", "job-000001", "--json"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_EQ(FromJson<v1::Job>(status.out).state(), v1::JOB_STATE_SUCCEEDED);

  CommandResult drift = run({SAETRACK_BIN_DIR "/saetrack", "drift",
                             "job-000001", "--layer", "1", "--json"});
  ASSERT_EQ(drift.exit_code, 0) << drift.err;
  const auto summary = FromJson<v1::DriftSummary>(drift.out);
  EXPECT_EQ(summary.checkpoints_size(), static_cast<int>(kSteps.size()));
  int total = 0;
  for (const v1::KindSummary& k : summary.kinds()) total += k.count();
  EXPECT_EQ(total, kDSae);

  // The stored speed-up measurements, as served: curves from 0 tokens, the
  // target 2% above the independent SAE's final loss, each arm stopped at
  // its crossing or at the independent SAE's budget.
  CommandResult quality = run({SAETRACK_BIN_DIR "/saetrack", "quality",
                               "job-000001", "--layer", "1", "--json"});
  ASSERT_EQ(quality.exit_code, 0) << quality.err;
  const auto checks = FromJson<v1::GetQualityChecksResponse>(quality.out);
  int measured = 0;
  for (const v1::CheckpointMetrics& m : checks.checkpoints()) {
    EXPECT_EQ(m.reference().has_speedup(), m.chain_index() > 0) << m.step();
    if (!m.reference().has_speedup()) continue;
    ++measured;
    const v1::RecurrenceSpeedup& s = m.reference().speedup();
    ASSERT_GE(s.scratch_curve_size(), 3);
    EXPECT_EQ(s.scratch_curve(0).tokens(), 0);
    EXPECT_EQ(s.scratch_curve().rbegin()->tokens(),
              m.reference().tokens_trained());
    EXPECT_DOUBLE_EQ(s.scratch_loss(), s.scratch_curve().rbegin()->loss());
    EXPECT_NEAR(s.target_loss(), s.scratch_loss() * 1.02,
                1e-12 * s.target_loss());
    EXPECT_NEAR(s.tolerance(), 0.02, 1e-12);
    for (const v1::SpeedupArm* a : {&s.same_lr(), &s.slow_lr()}) {
      ASSERT_GE(a->curve_size(), 1);
      EXPECT_EQ(a->curve(0).tokens(), 0);
      EXPECT_DOUBLE_EQ(a->init_loss(), a->curve(0).loss());
      const v1::LossPoint& last = *a->curve().rbegin();
      if (a->has_tokens()) {
        EXPECT_EQ(last.tokens(), a->tokens());
        EXPECT_LE(last.loss(), s.target_loss());
        EXPECT_GT(a->speedup(), 0);
      } else {
        EXPECT_EQ(last.tokens(), m.reference().tokens_trained());
        EXPECT_GT(last.loss(), s.target_loss());
        EXPECT_EQ(a->speedup(), 0);
      }
    }
    EXPECT_NEAR(s.slow_lr().lr(), s.same_lr().lr() / 10, 1e-12);
  }
  EXPECT_EQ(measured, 2);
}

// `deploy/demo.sh --live --quick`: the LM trains (a checkpoint every 20 s or
// slower) while a job follows its checkpoint directory, taking each
// checkpoint as it appears; the job ends on its own at until_step 64. The
// LM's checkpoints are those of the fixed-list quick job, kSteps.
class LiveDemoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(testing::MakeTempDir("live-demo"));
    auto result = testing::RunCommand(
        {"/bin/bash", SAETRACK_DEMO_SCRIPT, "--live", "--quick", "--bin",
         SAETRACK_BIN_DIR, "--data", *data_},
        *data_ + "/demo", absl::Minutes(20));
    ASSERT_TRUE(result.ok()) << result.status();
    run_ = new CommandResult(*result);
  }

  static void TearDownTestSuite() {
    delete run_;
    delete data_;
  }

  void SetUp() override {
    ASSERT_NE(run_, nullptr);
    ASSERT_EQ(run_->exit_code, 0) << run_->out << "\n" << run_->err;
  }

  static std::string Section(const std::string& title) {
    return SectionOf(run_->out, title);
  }

  static std::string* data_;
  static CommandResult* run_;
};

std::string* LiveDemoTest::data_ = nullptr;
CommandResult* LiveDemoTest::run_ = nullptr;

TEST_F(LiveDemoTest, ReportHasTheDemosSectionsThenLiveFollowing) {
  EXPECT_TRUE(HasSectionsInOrder(
      run_->out,
      {
          "Learning a BPE vocabulary on Tiny Shakespeare",
          "Starting a coordinator and a worker",
          "Following a live training run "
          "(deploy/jobs/demo-job-live-quick.json; the LM writes a checkpoint "
          "every 20 s or slower)",
          "Per-checkpoint SAE metrics (job-000001, layer 1)",
          "Trust checks (job-000001, layer 1)",
          "Decoder drift and phases (job-000001, layer 1)",
          "Per-checkpoint SAE metrics (job-000001, layer 2)",
          "Trust checks (job-000001, layer 2)",
          "Decoder drift and phases (job-000001, layer 2)",
          "Findings over 1 SAE seed(s) (layer 1)",
          "Findings over 1 SAE seed(s) (layer 2)",
          "Most frequent token-level and concept-level features (layer 1)",
          "Feature ",
          "Feature ",
          "Feature ",
          "Live following (job-000001)",
          "Done",
      }));
  // The LM is not trained before the job: it trains beside it.
  EXPECT_THAT(run_->out, Not(HasSubstr("\n== Training the small GPT-NeoX")));
  EXPECT_THAT(Section("Following a live training run"),
              HasSubstr("\njob-000001 succeeded\n"));
}

// The LM wrote every checkpoint of kSteps (its log lines, in the section
// that followed it), with a loss that starts at ln(4096) and falls.
TEST_F(LiveDemoTest, TheLmTrainedBesideTheJob) {
  const std::string section = Section("Following a live training run");
  const std::vector<std::pair<int, double>> losses = HeldOutLosses(section);
  ASSERT_EQ(losses.size(), kSteps.size()) << section;
  for (size_t i = 0; i < losses.size(); ++i) {
    EXPECT_EQ(losses[i].first, kSteps[i]);
  }
  EXPECT_NEAR(losses.front().second, std::log(4096.0), 0.1);
  EXPECT_LT(losses.back().second, losses.front().second - 2.0) << section;
}

// Every checkpoint was followed, none refused, each with its lag; the
// summary line's median and maximum agree with the table.
TEST_F(LiveDemoTest, LiveFollowingReportsEveryCheckpointsLag) {
  const std::string section = Section("Live following (job-000001)");
  ASSERT_FALSE(section.empty()) << run_->out;
  std::smatch header;
  ASSERT_TRUE(std::regex_search(
      section, header,
      std::regex(R"(\nfollowing closed \((.*)\): (\d+) checkpoints followed)")))
      << section;
  EXPECT_EQ(header[1].str(), "until_step 64 reached") << section;
  EXPECT_EQ(std::stoul(header[2]), kSteps.size()) << section;

  // step, seen, taken, lag: seconds after the checkpoint's last write.
  const std::string secs = R"((-?[0-9]+\.[0-9]) s)";
  const std::regex row("\n +(\\d+) +" + secs + " +" + secs + " +" + secs +
                       "(?=\n)");
  std::vector<int64_t> steps;
  std::vector<double> lags;
  for (auto it = std::sregex_iterator(section.begin(), section.end(), row);
       it != std::sregex_iterator(); ++it) {
    steps.push_back(std::stoll((*it)[1]));
    const double seen = std::stod((*it)[2]);
    const double taken = std::stod((*it)[3]);
    const double lag = std::stod((*it)[4]);
    // Taken once seen, stored once taken (to the printed 0.1 s).
    EXPECT_LE(seen, taken + 0.1) << it->str();
    EXPECT_LE(taken, lag + 0.1) << it->str();
    EXPECT_GT(lag, 0) << it->str();
    lags.push_back(lag);
  }
  EXPECT_EQ(steps, kSteps) << section;

  std::smatch summary;
  ASSERT_TRUE(std::regex_search(
      section, summary,
      std::regex(R"(\nlag from a checkpoint's last write to its SAEs stored: )"
                 R"(median ([0-9.]+) s, max ([0-9.]+) s over (\d+) )"
                 R"(checkpoints\n)")))
      << section;
  const double median = std::stod(summary[1]);
  const double max = std::stod(summary[2]);
  EXPECT_LE(median, max);
  EXPECT_EQ(std::stoul(summary[3]), kSteps.size());
  ASSERT_FALSE(lags.empty());
  EXPECT_NEAR(max, *std::max_element(lags.begin(), lags.end()), 0.051);
  std::sort(lags.begin(), lags.end());
  const size_t n = lags.size();
  EXPECT_NEAR(median,
              n % 2 == 1 ? lags[n / 2] : (lags[n / 2 - 1] + lags[n / 2]) / 2,
              0.11);
  EXPECT_THAT(section, HasSubstr("\nrefused checkpoints: 0\n"));
}

// The chain holds the followed checkpoints in step order, one SAE per hook
// each, as the fixed-list job's does.
TEST_F(LiveDemoTest, TheChainHoldsEveryFollowedCheckpointInOrder) {
  for (int layer : kLayers) {
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    const std::string section = Section(absl::StrCat(
        "Per-checkpoint SAE metrics (job-000001, layer ", layer, ")"));
    EXPECT_EQ(MetricsSteps(section), kSteps) << section;
  }
}

TEST_F(LiveDemoTest, StopsTheTrainerAndItsServices) {
  std::smatch pids;
  ASSERT_TRUE(std::regex_search(
      run_->out, pids, std::regex(R"(pids: coordinator (\d+) worker (\d+))")));
  std::smatch trainer;
  ASSERT_TRUE(std::regex_search(run_->out, trainer,
                                std::regex(R"(saetrack-tinylm pid (\d+))")));
  for (const std::string& pid :
       {pids[1].str(), pids[2].str(), trainer[1].str()}) {
    EXPECT_TRUE(Ended(std::stoi(pid))) << "process " << pid << " still runs";
  }
}

// The README points users at each binary's --help: it must list that
// binary's own flags.
TEST(BinariesHelpTest, EveryBinaryListsItsFlags) {
  const std::string dir = testing::MakeTempDir("help");
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"saetrack-coordinator", {"--data_dir", "--listen", "--metrics_listen"}},
      {"saetrack-worker", {"--coordinator", "--device", "--state_dir"}},
      {"saetrack-tinylm",
       {"--corpus", "--steps", "--tokenizer", "--warmup_fraction", "--pace_s",
        "--marker"}},
      {"saetrack-tokenize", {"--tokenizer", "--learn_bpe", "--vocab_size"}},
      {"saetrack", {"drift JOB_ID", "--coordinator"}},
      {"saetrack-web",
       {"--coordinator", "--listen", "--static_dir", "--token_file",
        "--tls_ca"}},
  };
  int calls = 0;
  for (const auto& [binary, flags] : cases) {
    auto result = testing::RunCommand(
        {std::string(SAETRACK_BIN_DIR) + "/" + binary, "--help"},
        absl::StrCat(dir, "/help-", calls++), absl::Seconds(30));
    ASSERT_TRUE(result.ok()) << binary << ": " << result.status();
    const std::string text = result->out + result->err;
    EXPECT_THAT(text, ::testing::Not(HasSubstr("No flags matched"))) << binary;
    for (const std::string& flag : flags) {
      EXPECT_THAT(text, HasSubstr(flag)) << binary << "\n" << text;
    }
  }
}

}  // namespace
}  // namespace saetrack
