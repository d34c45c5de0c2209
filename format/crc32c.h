// CRC-32C (Castagnoli), the checksum of artifact transfers.
#ifndef SAETRACK_FORMAT_CRC32C_H_
#define SAETRACK_FORMAT_CRC32C_H_

#include <cstdint>
#include <string_view>

namespace saetrack::format {

// Extends `crc` (the CRC-32C of the preceding bytes, 0 for none) over `data`.
// Crc32c("123456789") == 0xE3069283. Uses the SSE4.2 crc32 instruction where
// the CPU has it (checked once, at the first call), the byte table otherwise;
// both give the same value.
uint32_t Crc32c(std::string_view data, uint32_t crc = 0);

// The byte-table implementation: same contract as Crc32c, on every CPU.
uint32_t Crc32cPortable(std::string_view data, uint32_t crc = 0);

// True when Crc32cHardware may be called: an x86-64 build on a CPU with
// SSE4.2. Always false on other architectures.
bool Crc32cHardwareAvailable();

// The SSE4.2 crc32-instruction implementation: same contract as Crc32c.
// Precondition: Crc32cHardwareAvailable() (it would fault with an illegal
// instruction otherwise; on non-x86 builds it falls back to the table).
uint32_t Crc32cHardware(std::string_view data, uint32_t crc = 0);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_CRC32C_H_
