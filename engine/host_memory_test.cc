#include "engine/host_memory.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace saetrack::engine {
namespace {

constexpr size_t kBlock = 64 << 20;  // above glibc's largest mmap threshold

// Allocates a block, touches every page and frees it; returns whether the
// block was mapped on its own (glibc counts such blocks in hblks).
bool AllocateTouchAndFree() {
  const size_t mapped_before = mallinfo2().hblks;
  char* block = static_cast<char*>(std::malloc(kBlock));
  if (block == nullptr) std::abort();
  std::memset(block, 1, kBlock);
  const bool mapped = mallinfo2().hblks > mapped_before;
  std::free(block);
  return mapped;
}

TEST(HostMemoryTest, FreedBlocksStayInTheHeapUntilReleased) {
  // glibc's default: a 64 MiB block gets a mapping of its own.
  EXPECT_TRUE(AllocateTouchAndFree());

  ASSERT_TRUE(RetainFreedHostMemory());
  EXPECT_FALSE(AllocateTouchAndFree());
  // Freed, but kept for the next allocation.
  EXPECT_GE(mallinfo2().fordblks, kBlock);
  const size_t heap = mallinfo2().arena;
  ASSERT_GE(heap, kBlock);

  ReleaseFreedHostMemory();
  EXPECT_LE(mallinfo2().arena, heap - kBlock / 2);
}

}  // namespace
}  // namespace saetrack::engine
