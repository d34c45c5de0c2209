#include "format/crc32c.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "gtest/gtest.h"

namespace saetrack::format {
namespace {

TEST(Crc32cTest, StandardCheckValue) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
}

TEST(Crc32cTest, EmptyInputIsZero) { EXPECT_EQ(Crc32c(""), 0u); }

TEST(Crc32cTest, PortableKnownVectors) {
  EXPECT_EQ(Crc32cPortable("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32cPortable(""), 0u);
  EXPECT_EQ(Crc32cPortable(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32cPortable(std::string(32, '\xFF')), 0x62A8AB43u);
}

TEST(Crc32cTest, HardwareKnownVectors) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  EXPECT_EQ(Crc32cHardware("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32cHardware(""), 0u);
  EXPECT_EQ(Crc32cHardware(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32cHardware(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(Crc32cHardware(ascending), 0x46DD794Eu);
}

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(byte(rng));
  return s;
}

// Every length 0..1000 from every start offset 0..7 (so unaligned heads and
// tails of the 8-byte loop are all exercised).
TEST(Crc32cTest, HardwareEqualsPortableOnRandomData) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  const std::string buffer = RandomBytes(1008 + 8, 42);
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t length = 0; length <= 1000; ++length) {
      const std::string_view data(buffer.data() + offset, length);
      ASSERT_EQ(Crc32cHardware(data), Crc32cPortable(data))
          << "offset " << offset << " length " << length;
    }
  }
}

TEST(Crc32cTest, HardwareEqualsPortableWhenExtending) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  const std::string buffer = RandomBytes(3000, 7);
  std::mt19937 rng(3);
  std::uniform_int_distribution<size_t> chunk(0, 300);
  uint32_t hardware = 0, portable = 0, dispatched = 0;
  size_t at = 0;
  while (at < buffer.size()) {
    const size_t n = std::min(chunk(rng), buffer.size() - at);
    const std::string_view piece(buffer.data() + at, n);
    hardware = Crc32cHardware(piece, hardware);
    portable = Crc32cPortable(piece, portable);
    dispatched = Crc32c(piece, dispatched);
    ASSERT_EQ(hardware, portable) << "after " << at + n << " bytes";
    at += n;
  }
  EXPECT_EQ(hardware, Crc32cPortable(buffer));
  EXPECT_EQ(dispatched, hardware);
  // A non-zero running crc extended by arbitrary seeds as well.
  for (uint32_t seed : {0x1u, 0xDEADBEEFu, 0xFFFFFFFFu}) {
    EXPECT_EQ(Crc32cHardware(std::string_view(buffer).substr(5, 777), seed),
              Crc32cPortable(std::string_view(buffer).substr(5, 777), seed));
  }
}

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
