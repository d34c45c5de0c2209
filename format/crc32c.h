// CRC-32C (Castagnoli), the checksum of artifact transfers.
#ifndef SAETRACK_FORMAT_CRC32C_H_
#define SAETRACK_FORMAT_CRC32C_H_

#include <cstdint>
#include <string_view>

namespace saetrack::format {

// Extends `crc` (the CRC-32C of the preceding bytes, 0 for none) over `data`.
// Crc32c("123456789") == 0xE3069283.
uint32_t Crc32c(std::string_view data, uint32_t crc = 0);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_CRC32C_H_
