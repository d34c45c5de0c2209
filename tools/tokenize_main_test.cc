// Runs the built saetrack-tokenize binary on small inputs.
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "format/mapped_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#ifndef SAETRACK_TOKENIZE_BINARY
#error "SAETRACK_TOKENIZE_BINARY must name the saetrack-tokenize binary"
#endif
#ifndef SAETRACK_PYTHIA_TOKENIZER
#error "SAETRACK_PYTHIA_TOKENIZER must name testdata/pythia-20b-tokenizer.json"
#endif

namespace saetrack::format {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// From testdata/pythia-20b-tokenizer.json.
constexpr uint32_t kHello = 12092;      // "Hello"
constexpr uint32_t kSpaceWorld = 1533;  // "Ġworld"
constexpr uint32_t kEndOfText = 0;      // "<|endoftext|>"

class TokenizeMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/tokenize_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    ASSERT_TRUE(WriteFileAtomically(dir_ + "/in.txt", "Hello world").ok());
  }
  void TearDown() override {
    ASSERT_EQ(std::system(("rm -rf '" + dir_ + "'").c_str()), 0);
  }

  // Runs the binary with `args`; returns its exit code and captures its
  // stdout and stderr.
  int Run(const std::string& args) {
    const std::string command = std::string("'") + SAETRACK_TOKENIZE_BINARY +
                                "' " + args + " >'" + dir_ + "/stdout' 2>'" +
                                dir_ + "/stderr'";
    const int status = std::system(command.c_str());
    stdout_ = ReadFileToString(dir_ + "/stdout").value_or("");
    stderr_ = ReadFileToString(dir_ + "/stderr").value_or("");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string CommonArgs() const {
    return std::string("--tokenizer '") + SAETRACK_PYTHIA_TOKENIZER +
           "' --in '" + dir_ + "/in.txt' --out '" + dir_ + "/out.bin'";
  }

  // The output file as little-endian ids of `element_size` bytes.
  std::vector<uint32_t> ReadIds(int element_size) {
    absl::StatusOr<std::string> bytes = ReadFileToString(dir_ + "/out.bin");
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    std::vector<uint32_t> ids;
    if (!bytes.ok()) return ids;
    EXPECT_EQ(bytes->size() % element_size, 0u);
    for (size_t i = 0; i + element_size <= bytes->size(); i += element_size) {
      uint32_t id = 0;
      for (int k = 0; k < element_size; ++k) {
        id |= uint32_t{static_cast<unsigned char>((*bytes)[i + k])} << (8 * k);
      }
      ids.push_back(id);
    }
    return ids;
  }

  bool OutputExists() const {
    struct stat info;
    return ::stat((dir_ + "/out.bin").c_str(), &info) == 0;
  }

  std::string dir_;
  std::string stdout_;
  std::string stderr_;
};

TEST_F(TokenizeMainTest, AutoDtypeIsUint16ForPythia) {
  ASSERT_EQ(Run(CommonArgs() + " --append_eos"), 0) << stderr_;
  EXPECT_THAT(stdout_, StartsWith("wrote 3 tokens (uint16, 6 bytes) to " +
                                  dir_ + "/out.bin; encoded at "));
  EXPECT_THAT(stdout_, HasSubstr(" tokens/s\n"));
  EXPECT_THAT(ReadIds(2), ElementsAre(kHello, kSpaceWorld, kEndOfText));
}

TEST_F(TokenizeMainTest, Uint32OnRequest) {
  ASSERT_EQ(Run(CommonArgs() + " --dtype=uint32"), 0) << stderr_;
  EXPECT_THAT(stdout_, StartsWith("wrote 2 tokens (uint32, 8 bytes)"));
  EXPECT_THAT(ReadIds(4), ElementsAre(kHello, kSpaceWorld));
}

TEST_F(TokenizeMainTest, MissingInputIsAOneLineError) {
  const std::string args = std::string("--tokenizer '") +
                           SAETRACK_PYTHIA_TOKENIZER + "' --in '" + dir_ +
                           "/missing.txt' --out '" + dir_ + "/out.bin'";
  EXPECT_EQ(Run(args), 1);
  EXPECT_THAT(stderr_, StartsWith("saetrack-tokenize: "));
  EXPECT_THAT(stderr_, HasSubstr(dir_ + "/missing.txt"));
  EXPECT_EQ(std::count(stderr_.begin(), stderr_.end(), '\n'), 1);
  EXPECT_FALSE(OutputExists());
}

TEST_F(TokenizeMainTest, BadFlagsAreUsageErrors) {
  EXPECT_EQ(Run(CommonArgs() + " --dtype int8"), 2);
  EXPECT_THAT(stderr_, HasSubstr("invalid value \"int8\" for --dtype"));
  EXPECT_EQ(Run(CommonArgs() + " --bogus 1"), 2);
  EXPECT_THAT(stderr_, HasSubstr("unknown flag --bogus"));
  EXPECT_EQ(Run("--in x --out y"), 2);
  EXPECT_THAT(stderr_, HasSubstr("--tokenizer is required"));
  EXPECT_FALSE(OutputExists());
}

// Learns a vocabulary, then encodes with it.
TEST_F(TokenizeMainTest, LearnBpeWritesATokenizerTheEncoderLoads) {
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/corpus.txt", "aab aab aab ab").ok());
  const std::string learnt = dir_ + "/learnt.json";
  ASSERT_EQ(Run("--learn_bpe --vocab_size 300 --in '" + dir_ +
                "/corpus.txt' --out '" + learnt + "'"),
            0)
      << stderr_;
  // "ab", "aab", " aab" (see BpeTrainerTest), then <|endoftext|> as id 259.
  EXPECT_THAT(stdout_, StartsWith("learnt 3 merges in "));
  EXPECT_THAT(stdout_, HasSubstr("; vocabulary 260 ids; " + dir_ +
                                 "/corpus.txt: 14 bytes -> 5 tokens (2.80 "
                                 "bytes/token); wrote " +
                                 learnt + "\n"));
  ASSERT_TRUE(WriteFileAtomically(dir_ + "/in.txt", "aab ab").ok());
  ASSERT_EQ(Run("--tokenizer '" + learnt + "' --in '" + dir_ +
                "/in.txt' --out '" + dir_ + "/out.bin' --append_eos"),
            0)
      << stderr_;
  EXPECT_THAT(ReadIds(2), ElementsAre(257, 32, 256, 259));
}

TEST_F(TokenizeMainTest, LearnBpeBadFlagsAreUsageErrors) {
  const std::string io =
      " --in '" + dir_ + "/in.txt' --out '" + dir_ + "/out.bin'";
  EXPECT_EQ(Run("--learn_bpe --vocab_size 256" + io), 2);
  EXPECT_THAT(stderr_, HasSubstr("invalid value \"256\" for --vocab_size"));
  EXPECT_EQ(Run("--learn_bpe --min_frequency 0" + io), 2);
  EXPECT_THAT(stderr_, HasSubstr("invalid value \"0\" for --min_frequency"));
  EXPECT_EQ(Run("--learn_bpe --tokenizer t.json" + io), 2);
  EXPECT_THAT(stderr_, HasSubstr("--tokenizer and --learn_bpe"));
  EXPECT_EQ(Run("--learn_bpe --in '" + dir_ + "/missing.txt' --out '" + dir_ +
                "/out.bin'"),
            1);
  EXPECT_THAT(stderr_, HasSubstr(dir_ + "/missing.txt"));
  EXPECT_FALSE(OutputExists());
}

TEST_F(TokenizeMainTest, HelpExitsZero) {
  EXPECT_EQ(Run("--help"), 0);
  EXPECT_THAT(stdout_, StartsWith("Usage: saetrack-tokenize"));
}

}  // namespace
}  // namespace saetrack::format
