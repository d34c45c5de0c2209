#include "engine/host_memory.h"

#include <cstdlib>  // defines __GLIBC__ under glibc
#include <limits>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace saetrack::engine {

bool RetainFreedHostMemory() {
#if defined(__GLIBC__)
  // Every block from the heap (or a thread's arena; glibc still maps a block
  // too large for an arena rather than fail it), and no trimming: a freed
  // block stays mapped for the next allocation of its size.
  if (mallopt(M_MMAP_MAX, 0) != 1) return false;
  return mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1;
#else
  return false;
#endif
}

void ReleaseFreedHostMemory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace saetrack::engine
