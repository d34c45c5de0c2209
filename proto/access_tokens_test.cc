#include "proto/access_tokens.h"

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack {
namespace {

using ::testing::HasSubstr;

// SHA-256 of "abc" (FIPS 180-2, appendix B.1).
constexpr char kAbcSha256[] =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

std::string TempPath(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "access_tokens_test";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::filesystem::remove(path);
  return path;
}

TEST(Sha256HexTest, MatchesTheStandardVector) {
  EXPECT_EQ(Sha256Hex("abc"), kAbcSha256);
}

TEST(RoleTest, ParsesEveryRoleAndRefusesOthers) {
  for (Role role :
       {Role::kReader, Role::kSubmitter, Role::kWorker, Role::kAdmin}) {
    absl::StatusOr<Role> parsed = ParseRole(RoleName(role));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, role);
  }
  absl::StatusOr<Role> bad = ParseRole("root");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("role: 'root'"));
}

TEST(AccessTokenTableTest, ParsesEntriesAndFindsByToken) {
  absl::StatusOr<AccessTokenTable> table = AccessTokenTable::Parse(
      absl::StrCat("# tokens\n\nsha256:", kAbcSha256, " submitter alice\n",
                   "sha256:", Sha256Hex("other"), "\tworker  gpu-7 \n"),
      "tokens.txt");
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->entries().size(), 2u);
  std::optional<AccessTokenEntry> alice = table->Find("abc");
  ASSERT_TRUE(alice.has_value());
  EXPECT_EQ(alice->name, "alice");
  EXPECT_EQ(alice->role, Role::kSubmitter);
  std::optional<AccessTokenEntry> gpu = table->Find("other");
  ASSERT_TRUE(gpu.has_value());
  EXPECT_EQ(gpu->name, "gpu-7");
  EXPECT_EQ(gpu->role, Role::kWorker);
  EXPECT_FALSE(table->Find("abd").has_value());
  EXPECT_FALSE(table->Find("").has_value());
  // The hash itself is not a token.
  EXPECT_FALSE(table->Find(kAbcSha256).has_value());
}

TEST(AccessTokenTableTest, MalformedEntriesNameFileLineAndField) {
  struct Case {
    std::string contents;
    std::string fragment;
  };
  const std::string hash = absl::StrCat("sha256:", kAbcSha256);
  const Case cases[] = {
      {"\n" + hash + " reader\n",
       "t.txt line 2: expected 'sha256:<hex> "
       "<role> <name>', found 2 field(s)"},
      {"abc reader alice\n", "t.txt line 1: hash: expected 'sha256:'"},
      {"sha256:ABC reader alice\n", "line 1: hash:"},
      {hash + " root alice\n", "line 1: role: 'root' is not one of"},
      {hash + " reader al/ice\n", "line 1: name: 'al/ice' must be 1-64"},
      {hash + " reader alice\nsha256:" + Sha256Hex("x") + " admin alice\n",
       "line 2: name: 'alice' given twice"},
      {hash + " reader alice\n" + hash + " admin bob\n",
       "line 2: hash: the same token given twice"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<AccessTokenTable> table =
        AccessTokenTable::Parse(c.contents, "t.txt");
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument)
        << c.contents;
    EXPECT_THAT(table.status().message(), HasSubstr(c.fragment));
  }
}

TEST(AccessTokenTableTest, LoadNamesAMissingFile) {
  absl::StatusOr<AccessTokenTable> table =
      AccessTokenTable::Load("/nonexistent/tokens");
  EXPECT_EQ(table.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(table.status().message(), HasSubstr("/nonexistent/tokens"));
}

TEST(CreateAccessTokenTest, AppendsHashOnlyWithMode0600) {
  const std::string path = TempPath("create");
  absl::StatusOr<std::string> admin = CreateAccessToken(path, "admin", "ops");
  ASSERT_TRUE(admin.ok()) << admin.status();
  absl::StatusOr<std::string> reader =
      CreateAccessToken(path, "reader", "dashboard");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(admin->size(), 64u);  // 256 bits in hex.
  EXPECT_NE(*admin, *reader);

  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600);
  std::ifstream in(path);
  std::string contents((std::istreambuf_iterator<char>(in)),
                       std::istreambuf_iterator<char>());
  EXPECT_EQ(contents.find(*admin), std::string::npos);
  EXPECT_EQ(contents,
            absl::StrCat("sha256:", Sha256Hex(*admin), " admin ops\n",
                         "sha256:", Sha256Hex(*reader), " reader dashboard\n"));

  absl::StatusOr<AccessTokenTable> table = AccessTokenTable::Load(path);
  ASSERT_TRUE(table.ok()) << table.status();
  std::optional<AccessTokenEntry> found = table->Find(*reader);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->name, "dashboard");
  EXPECT_EQ(found->role, Role::kReader);
}

TEST(CreateAccessTokenTest, RefusesUnknownRoleBadAndDuplicateNames) {
  const std::string path = TempPath("refuse");
  ASSERT_TRUE(CreateAccessToken(path, "worker", "gpu-1").ok());
  absl::StatusOr<std::string> role = CreateAccessToken(path, "root", "x");
  EXPECT_EQ(role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(role.status().message(), HasSubstr("role: 'root'"));
  absl::StatusOr<std::string> name = CreateAccessToken(path, "reader", "a b");
  EXPECT_EQ(name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(name.status().message(), HasSubstr("name: 'a b'"));
  absl::StatusOr<std::string> twice = CreateAccessToken(path, "admin", "gpu-1");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(twice.status().message(),
              HasSubstr("name: 'gpu-1' already has a token in " + path));
  absl::StatusOr<AccessTokenTable> table = AccessTokenTable::Load(path);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->entries().size(), 1u);  // Nothing written by the refusals.
}

}  // namespace
}  // namespace saetrack
