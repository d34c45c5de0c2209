#include "format/token_file.h"

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::format {
namespace {

using ::testing::HasSubstr;

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/tokens_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }
  std::string dir_;
};

TEST_F(TokenFileTest, ReadsLittleEndianUint16) {
  const std::string path =
      Write("t.u16", std::string("\x01\x00\xFF\xFF\x34\x12", 6));
  absl::StatusOr<TokenFile> tokens = TokenFile::Open(path, TokenDtype::kUint16);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 3);
  EXPECT_EQ(tokens->element_size(), 2);
  EXPECT_EQ((*tokens)[0], 1u);
  EXPECT_EQ((*tokens)[1], 65535u);
  EXPECT_EQ((*tokens)[2], 0x1234u);
}

TEST_F(TokenFileTest, ReadsLittleEndianUint32) {
  const std::string path =
      Write("t.u32", std::string("\x01\x02\x03\x04\xFF\xFF\xFF\xFF", 8));
  absl::StatusOr<TokenFile> tokens = TokenFile::Open(path, TokenDtype::kUint32);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 2);
  EXPECT_EQ((*tokens)[0], 0x04030201u);
  EXPECT_EQ((*tokens)[1], 0xFFFFFFFFu);
}

TEST_F(TokenFileTest, SizeNotMultipleOfElementSize) {
  const std::string path = Write("t.u32", std::string(6, '\0'));
  absl::StatusOr<TokenFile> tokens = TokenFile::Open(path, TokenDtype::kUint32);
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(tokens.status().message()),
              HasSubstr(path + ": size 6 bytes is not a multiple of the "
                               "4-byte element size"));
}

TEST_F(TokenFileTest, MissingFileIsNotFound) {
  absl::StatusOr<TokenFile> tokens =
      TokenFile::Open(dir_ + "/nope", TokenDtype::kUint16);
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(tokens.status().message()),
              HasSubstr(dir_ + "/nope"));
}

TEST_F(TokenFileTest, EmptyFileHasNoTokens) {
  absl::StatusOr<TokenFile> tokens =
      TokenFile::Open(Write("e", ""), TokenDtype::kUint16);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(tokens->size(), 0);
  EXPECT_TRUE(tokens->CheckVocab(1).ok());
}

TEST_F(TokenFileTest, VocabCheckNamesFirstOffendingByteOffset) {
  // ids 5, 9, 300, 2, 400 as uint16.
  const std::string path = Write(
      "t.u16", std::string("\x05\x00\x09\x00\x2C\x01\x02\x00\x90\x01", 10));
  absl::StatusOr<TokenFile> tokens = TokenFile::Open(path, TokenDtype::kUint16);
  ASSERT_TRUE(tokens.ok());
  EXPECT_TRUE(tokens->CheckVocab(401).ok());
  const absl::Status status = tokens->CheckVocab(256);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(path + ": token id 300 at byte 4 (token 2) is >= the "
                               "model's vocab_size 256"));
  // A range that avoids the first offender reports the next one.
  EXPECT_THAT(std::string(tokens->CheckVocab(256, 3, 2).message()),
              HasSubstr("token id 400 at byte 8"));
  EXPECT_TRUE(tokens->CheckVocab(256, 0, 2).ok());
}

TEST(ParseTokenDtypeTest, Names) {
  EXPECT_EQ(*ParseTokenDtype("uint16"), TokenDtype::kUint16);
  EXPECT_EQ(*ParseTokenDtype("uint32"), TokenDtype::kUint32);
  EXPECT_EQ(ParseTokenDtype("int8").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saetrack::format
