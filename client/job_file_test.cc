#include "client/job_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
              HasSubstr("model.checkpoints[1].stp: unknown field"));
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

TEST(JobFileTest, MissingFileIsNotFound) {
  absl::StatusOr<v1::JobSpec> spec = LoadJobFile("/nonexistent/job.json");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(spec.status().message(), HasSubstr("/nonexistent/job.json"));
}

}  // namespace
}  // namespace saetrack::client
