#include "client/job_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace saetrack::client {
namespace {

using ::testing::HasSubstr;

constexpr char kValidJob[] = R"({
  "name": "tiny",
  "model": {"architecture": "gpt_neox",
            "checkpoints": [{"step": 0, "path": "ckpt/step-0"},
                            {"step": "8", "path": "/abs/step-8"}]},
  "data": {"tokens_path": "../tokens.u16", "context_length": 32},
  "hooks": [{"layer": 1}],
  "sae": {"expansion_factor": 4, "l1_coefficient": 1e-3},
  "schedule": {"direction": "FORWARD", "tokens_first": 40000}
})";

TEST(JobFileTest, ParsesFieldsAndResolvesRelativePaths) {
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec(kValidJob, "job.json", "/jobs/demo");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "tiny");
  ASSERT_EQ(spec->model().checkpoints_size(), 2);
  EXPECT_EQ(spec->model().checkpoints(0).path(), "/jobs/demo/ckpt/step-0");
  EXPECT_EQ(spec->model().checkpoints(1).step(), 8);
  EXPECT_EQ(spec->model().checkpoints(1).path(), "/abs/step-8");
  EXPECT_EQ(spec->data().tokens_path(), "/jobs/tokens.u16");
  EXPECT_EQ(spec->data().tokenizer_path(), "");
  EXPECT_EQ(spec->hooks(0).layer(), 1);
  EXPECT_DOUBLE_EQ(spec->sae().l1_coefficient(), 1e-3);
  EXPECT_EQ(spec->schedule().direction(), v1::Schedule::FORWARD);
  EXPECT_EQ(spec->schedule().tokens_first(), 40000);
}

TEST(JobFileTest, ResolvesARelativeFollowedDirectory) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(
      R"({"model": {"follow": {"dir": "../run/checkpoints",
                               "pattern": "step-{step}",
                               "poll_interval_s": 0.5, "until_step": 64,
                               "analyse_every": 3}}})",
      "job.json", "/jobs/demo");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(spec->model().has_follow());
  const v1::FollowSpec& follow = spec->model().follow();
  EXPECT_EQ(follow.dir(), "/jobs/run/checkpoints");
  EXPECT_EQ(follow.pattern(), "step-{step}");
  EXPECT_DOUBLE_EQ(follow.poll_interval_s(), 0.5);
  ASSERT_TRUE(follow.has_until_step());
  EXPECT_EQ(follow.until_step(), 64);
  EXPECT_EQ(follow.analyse_every(), 3);
  EXPECT_EQ(spec->model().checkpoints_size(), 0);

  spec = ParseJobSpec(R"({"model": {"follow": {"dir": "/runs/a/"}}})",
                      "job.json", "/jobs/demo");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model().follow().dir(), "/runs/a/");

  // Checkpoints by AddCheckpoint only: no directory to resolve.
  spec = ParseJobSpec(R"({"model": {"follow": {"until_step": 8}}})", "job.json",
                      "/jobs/demo");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(spec->model().has_follow());
  EXPECT_EQ(spec->model().follow().dir(), "");

  // Without "follow" the job does not follow.
  spec = ParseJobSpec(kValidJob, "job.json", "/jobs/demo");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(spec->model().has_follow());
}

TEST(JobFileTest, ParsesTopkAndTrainingOptions) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(R"({
    "sae": {"architecture": "topk", "k": 16, "aux_k": 64,
            "aux_coefficient": 0.03125, "ghost_grads": false,
            "dead_window_tokens": "1000000"},
    "schedule": {"adaptive_window_tokens": 2000000,
                 "adaptive_tolerance": 1e-4, "lm_eval_tokens": 0}
  })",
                                                  "job.json", "/");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->sae().architecture(), "topk");
  EXPECT_EQ(spec->sae().k(), 16);
  EXPECT_EQ(spec->sae().aux_k(), 64);
  EXPECT_DOUBLE_EQ(spec->sae().aux_coefficient(), 1.0 / 32);
  ASSERT_TRUE(spec->sae().has_ghost_grads());
  EXPECT_FALSE(spec->sae().ghost_grads());
  EXPECT_EQ(spec->sae().dead_window_tokens(), 1'000'000);
  EXPECT_EQ(spec->schedule().adaptive_window_tokens(), 2'000'000);
  EXPECT_DOUBLE_EQ(spec->schedule().adaptive_tolerance(), 1e-4);
  // An explicit 0 is kept apart from "unset" (it skips the LM evaluation).
  ASSERT_TRUE(spec->schedule().has_lm_eval_tokens());
  EXPECT_EQ(spec->schedule().lm_eval_tokens(), 0);

  // lowerCamelCase names work too; absent optional fields stay unset.
  spec =
      ParseJobSpec(R"({"sae": {"auxK": 8}, "schedule": {"lmEvalTokens": 5}})",
                   "job.json", "/");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->sae().aux_k(), 8);
  EXPECT_FALSE(spec->sae().has_ghost_grads());
  EXPECT_EQ(spec->schedule().lm_eval_tokens(), 5);

  spec = ParseJobSpec(R"({"sae": {"ghost_grads": null}})", "job.json", "/");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(spec->sae().has_ghost_grads());
  EXPECT_FALSE(spec->schedule().has_lm_eval_tokens());
}

TEST(JobFileTest, NewFieldsAreTypeChecked) {
  struct Case {
    const char* json;
    const char* message;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"sae": {"ghost_grads": 1}})",
            "sae.ghost_grads: expected true or false (value at byte 24)"},
           {R"({"sae": {"k": 2.5}})", "sae.k: expected an integer"},
           {R"({"sae": {"aux_coefficient": "x"}})",
            "sae.aux_coefficient: expected a number"},
           {R"({"schedule": {"lm_eval_tokens": true}})",
            "schedule.lm_eval_tokens: expected an integer"},
           {R"({"schedule": {"adaptive_window": 5}})",
            "schedule.adaptive_window: unknown field (value at byte 33)"}}) {
    absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(c.json, "job.json", "/");
    ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument)
        << c.json;
    EXPECT_THAT(spec.status().message(), HasSubstr(c.message));
  }
}

TEST(JobFileTest, SyntaxErrorNamesByteOffset) {
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec(R"({"name": "x",, })", "bad.json", "/");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(), HasSubstr("bad.json"));
  EXPECT_THAT(spec.status().message(), HasSubstr("byte 13"));
}

TEST(JobFileTest, UnknownFieldNamesItsPath) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(
      R"({"model": {"checkpoints": [{"step": 0, "path": "a"}, {"stp": 1}]}})",
      "job.json", "/");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(),
              HasSubstr("model.checkpoints[1].stp: unknown field (value at "
                        "byte 61)"));
}

TEST(JobFileTest, WrongTypeNamesItsPath) {
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec(R"({"hooks": [{"layer": 1.5}]})", "job.json", "/");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(),
              HasSubstr("hooks[0].layer: expected an integer"));

  spec = ParseJobSpec(R"({"schedule": {"direction": "SIDEWAYS"}})", "job.json",
                      "/");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(),
              HasSubstr("schedule.direction: expected one of"));
}

TEST(JobFileTest, TopLevelMustBeAnObject) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec("[1, 2]", "job.json", "/");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(spec.status().message(), HasSubstr("JSON object"));
}

// The job files deploy/demo.sh submits, with their relative paths resolved
// against deploy/jobs as `saetrack submit` resolves them.
TEST(JobFileTest, DemoJobFilesLoad) {
  const std::string jobs = SAETRACK_SOURCE_DIR "/deploy/jobs";
  for (const char* name : {"demo-job.json", "demo-job-quick.json",
                           "demo-job-live.json", "demo-job-live-quick.json"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<v1::JobSpec> spec = LoadJobFile(jobs + "/" + name);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->hooks_size(), 2);
    EXPECT_EQ(spec->data().tokens_path().rfind(SAETRACK_SOURCE_DIR "/", 0), 0u)
        << spec->data().tokens_path();
  }
  for (const char* name : {"demo-job-live.json", "demo-job-live-quick.json"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<v1::JobSpec> spec = LoadJobFile(jobs + "/" + name);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->model().checkpoints_size(), 0);
    ASSERT_TRUE(spec->model().has_follow());
    EXPECT_EQ(spec->model().follow().dir(),
              SAETRACK_SOURCE_DIR "/demo-data/live-lm/checkpoints");
    EXPECT_EQ(spec->data().tokens_path(),
              SAETRACK_SOURCE_DIR "/demo-data/live-lm/tokens.u16");
    EXPECT_TRUE(spec->model().follow().has_until_step());
    EXPECT_GE(spec->model().follow().analyse_every(), 2);
  }
}

TEST(JobFileTest, MissingFileIsNotFound) {
  absl::StatusOr<v1::JobSpec> spec = LoadJobFile("/nonexistent/job.json");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(spec.status().message(), HasSubstr("/nonexistent/job.json"));
}

}  // namespace
}  // namespace saetrack::client
