#include "format/confined_path.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "format/token_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::format {
namespace {

using ::testing::HasSubstr;

class ConfinedPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/confined_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    root_ = dir_ + "/root";
    std::filesystem::create_directories(root_);
    Write(root_ + "/tokens.u16", "ABCD");
    Write(dir_ + "/secret", "SECRET!!");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  static void Write(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
  }
  std::string dir_;
  std::string root_;
};

TEST(IsUnderRootTest, ComparesWholeComponents) {
  EXPECT_TRUE(IsUnderRoot("/data", "/data"));
  EXPECT_TRUE(IsUnderRoot("/data/x/y", "/data"));
  EXPECT_FALSE(IsUnderRoot("/data2/x", "/data"));
  EXPECT_FALSE(IsUnderRoot("/dat", "/data"));
  EXPECT_TRUE(IsUnderRoot("/anything", "/"));
  EXPECT_TRUE(HasDotDotComponent("/data/../etc"));
  EXPECT_FALSE(HasDotDotComponent("/data/..x/y"));
}

TEST_F(ConfinedPathTest, OpensAFileUnderARoot) {
  const DataRoots roots({root_});
  absl::StatusOr<ReadOnlyFile> file =
      ReadOnlyFile::Open(root_ + "/tokens.u16", roots);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 4);
}

TEST_F(ConfinedPathTest, RefusesAFileOutsideTheRoots) {
  const DataRoots roots({root_});
  absl::StatusOr<ReadOnlyFile> file =
      ReadOnlyFile::Open(dir_ + "/secret", roots);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(file.status().message(), HasSubstr("outside the data roots"));
  absl::StatusOr<std::string> resolved = roots.Resolve(dir_ + "/secret");
  EXPECT_EQ(resolved.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ConfinedPathTest, RefusesDotDot) {
  const DataRoots roots({root_});
  const std::string path = root_ + "/../secret";
  EXPECT_EQ(roots.Resolve(path).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadOnlyFile::Open(path, roots).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ConfinedPathTest, ASymlinkSwappedInIsRefusedNotFollowed) {
  const DataRoots roots({root_});
  const std::string path = root_ + "/tokens.u16";
  ASSERT_EQ(::unlink(path.c_str()), 0);
  ASSERT_EQ(::symlink((dir_ + "/secret").c_str(), path.c_str()), 0);
  absl::StatusOr<TokenFile> tokens =
      TokenFile::Open(path, TokenDtype::kUint16, roots);
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(tokens.status().message(), HasSubstr("symbolic link"));
  EXPECT_EQ(roots.Resolve(path).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Without roots (a loopback development setup) links are followed.
  absl::StatusOr<TokenFile> open = TokenFile::Open(path, TokenDtype::kUint16);
  ASSERT_TRUE(open.ok()) << open.status();
  EXPECT_EQ(open->size(), 4);
}

TEST_F(ConfinedPathTest, ADirectorySymlinkLeadingOutIsRefused) {
  const DataRoots roots({root_});
  ASSERT_EQ(::symlink(dir_.c_str(), (root_ + "/up").c_str()), 0);
  absl::StatusOr<ReadOnlyFile> file =
      ReadOnlyFile::Open(root_ + "/up/secret", roots);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(file.status().message(), HasSubstr("outside the data roots"));
}

}  // namespace
}  // namespace saetrack::format
