#include "format/crc32c.h"

#include <string>

#include "gtest/gtest.h"

namespace saetrack::format {
namespace {

TEST(Crc32cTest, StandardCheckValue) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
}

TEST(Crc32cTest, EmptyInputIsZero) { EXPECT_EQ(Crc32c(""), 0u); }

// Test vectors from RFC 3720 (iSCSI), appendix B.4.
TEST(Crc32cTest, Rfc3720Vectors) {
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
}

TEST(Crc32cTest, ExtendingEqualsWholeInput) {
  const std::string data = "chunked artifact upload with checksums";
  for (size_t split = 0; split <= data.size(); ++split) {
    const uint32_t first = Crc32c(std::string_view(data).substr(0, split));
    EXPECT_EQ(Crc32c(std::string_view(data).substr(split), first), Crc32c(data))
        << "split at " << split;
  }
}

}  // namespace
}  // namespace saetrack::format
