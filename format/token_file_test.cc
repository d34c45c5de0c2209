#include "format/token_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

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
  uint32_t ids[3] = {};
  ASSERT_TRUE(tokens->Read(0, 3, ids).ok());
  EXPECT_EQ(ids[0], 1u);
  EXPECT_EQ(ids[1], 65535u);
  EXPECT_EQ(ids[2], 0x1234u);
  ASSERT_TRUE(tokens->Read(2, 1, ids).ok());
  EXPECT_EQ(ids[0], 0x1234u);
}

TEST_F(TokenFileTest, ReadsLittleEndianUint32) {
  const std::string path =
      Write("t.u32", std::string("\x01\x02\x03\x04\xFF\xFF\xFF\xFF", 8));
  absl::StatusOr<TokenFile> tokens = TokenFile::Open(path, TokenDtype::kUint32);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 2);
  uint32_t ids[2] = {};
  ASSERT_TRUE(tokens->Read(0, 2, ids).ok());
  EXPECT_EQ(ids[0], 0x04030201u);
  EXPECT_EQ(ids[1], 0xFFFFFFFFu);
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

// A token file truncated while a task reads it: an error naming the byte,
// not SIGBUS.
TEST_F(TokenFileTest, AFileThatShrinksGivesAnErrorNotACrash) {
  const std::string path = Write("t.u16", std::string(2 * 1000, '\x01'));
  absl::StatusOr<TokenFile> tokens = TokenFile::Open(path, TokenDtype::kUint16);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(::truncate(path.c_str(), 2 * 100), 0);
  std::vector<uint32_t> ids(50);
  EXPECT_TRUE(tokens->Read(50, 50, ids.data()).ok());
  const absl::Status status = tokens->Read(900, 50, ids.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(path + ": the file ends at byte 200, before byte 1900 "
                               "(it was 2000 bytes when opened: truncated or "
                               "replaced while in use)"));
  EXPECT_EQ(tokens->CheckVocab(2).code(), absl::StatusCode::kDataLoss);
}

// A FIFO would block open() until a writer comes; devices and sockets are
// no token files either. Each is refused at once, naming what it is.
TEST_F(TokenFileTest, FifosAndDevicesAreRefusedWithoutBlocking) {
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  absl::StatusOr<TokenFile> tokens = TokenFile::Open(fifo, TokenDtype::kUint16);
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(tokens.status().message()),
              HasSubstr(fifo + " is a FIFO, expected a regular file"));
  tokens = TokenFile::Open("/dev/zero", TokenDtype::kUint16);
  EXPECT_THAT(std::string(tokens.status().message()),
              HasSubstr("/dev/zero is a character device"));
  // Mapped files (weights, config.json) are opened the same way.
  absl::StatusOr<MappedFile> mapped = MappedFile::Open(fifo);
  EXPECT_EQ(mapped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(mapped.status().message()), HasSubstr("a FIFO"));
  EXPECT_EQ(ReadFileToString(fifo).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ParseTokenDtypeTest, Names) {
  EXPECT_EQ(*ParseTokenDtype("uint16"), TokenDtype::kUint16);
  EXPECT_EQ(*ParseTokenDtype("uint32"), TokenDtype::kUint32);
  EXPECT_EQ(ParseTokenDtype("int8").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saetrack::format
