#include "format/crc32c.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SAETRACK_CRC32C_X86 1
#include <nmmintrin.h>
#else
#define SAETRACK_CRC32C_X86 0
#endif

namespace saetrack::format {
namespace {

constexpr uint32_t kPolynomial = 0x82F63B78;  // reflected Castagnoli

constexpr std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPolynomial : c >> 1;
    table[i] = c;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kTable = MakeTable();

#if SAETRACK_CRC32C_X86
// Only this function is compiled for SSE4.2; the rest of the build needs no
// -msse4.2, and it is only called after the run-time CPU check.
__attribute__((target("sse4.2"))) uint32_t HardwareCrc(const char* p, size_t n,
                                                       uint32_t crc) {
  uint64_t c = ~crc;
  // Bytes up to an 8-byte boundary, then 8 at a time, then the tail.
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), static_cast<uint8_t>(*p));
    ++p;
    --n;
  }
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
  }
  for (; n > 0; ++p, --n) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), static_cast<uint8_t>(*p));
  }
  return ~static_cast<uint32_t>(c);
}
#endif

}  // namespace

uint32_t Crc32cPortable(std::string_view data, uint32_t crc) {
  crc = ~crc;
  for (unsigned char byte : data)
    crc = kTable[(crc ^ byte) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

bool Crc32cHardwareAvailable() {
#if SAETRACK_CRC32C_X86
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
#else
  return false;
#endif
}

uint32_t Crc32cHardware(std::string_view data, uint32_t crc) {
#if SAETRACK_CRC32C_X86
  return HardwareCrc(data.data(), data.size(), crc);
#else
  return Crc32cPortable(data, crc);
#endif
}

uint32_t Crc32c(std::string_view data, uint32_t crc) {
  static const bool hardware = Crc32cHardwareAvailable();
  return hardware ? Crc32cHardware(data, crc) : Crc32cPortable(data, crc);
}

}  // namespace saetrack::format
