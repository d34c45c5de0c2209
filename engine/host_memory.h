// How a process that runs LibTorch on the CPU hands freed memory back to
// the operating system.
//
// LibTorch allocates every CPU tensor with malloc and frees it when its last
// reference goes. glibc serves a block above its mmap threshold (128 KiB,
// rising with use to at most 32 MiB) with a fresh mmap and unmaps it on
// free, and trims the top of the heap once more than twice that is free. A
// training or evaluation loop allocates the same large buffers at every
// step (an SAE step's [batch, d_sae] activations and gradients, a spliced LM
// pass's [batch, context, vocab] float64 log-probabilities), so each step
// got them back from the kernel as new zeroed pages, one page fault per
// 4 KiB: on the shortened demo, 10.8M faults and 76 s of system time in a
// 135 s run, a later SAE 5.4 s where 1.2 s is its own work
// (bench/host_memory_bench.cc measures it).
#ifndef SAETRACK_ENGINE_HOST_MEMORY_H_
#define SAETRACK_ENGINE_HOST_MEMORY_H_

namespace saetrack::engine {

// Keeps freed memory in the process for reuse: no block is served by its
// own mmap, and the heap is not trimmed on free. The process's resident
// size then stays near its peak until ReleaseFreedHostMemory(). Call first
// thing in main, before any thread starts. Returns false (and changes
// nothing) where the C library offers no such setting.
bool RetainFreedHostMemory();

// Returns the free memory of the heap to the operating system (glibc's
// malloc_trim); the next use faults its pages in again. For a process that
// has gone idle after RetainFreedHostMemory().
void ReleaseFreedHostMemory();

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_HOST_MEMORY_H_
