#include "proto/status_mapping.h"

#include <gtest/gtest.h>

namespace saetrack {
namespace {

TEST(StatusMappingTest, RoundTripsEveryCanonicalCode) {
  for (int c = 1; c <= 16; ++c) {
    absl::Status s(static_cast<absl::StatusCode>(c),
                   "msg " + std::to_string(c));
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    EXPECT_EQ(g.error_message(), "msg " + std::to_string(c));
    EXPECT_EQ(FromGrpcStatus(g), s);
  }
}

TEST(StatusMappingTest, OkMapsToOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(StatusMappingTest, NamedCodesMatch) {
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("x")).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcStatus(absl::AbortedError("x")).error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(
      FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "j")).code(),
      absl::StatusCode::kNotFound);
}

TEST(StatusMappingTest, OutOfRangeCodeBecomesUnknown) {
  grpc::Status g(static_cast<grpc::StatusCode>(99), "odd");
  EXPECT_EQ(FromGrpcStatus(g).code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(FromGrpcStatus(g).message(), "odd");
}

}  // namespace
}  // namespace saetrack
