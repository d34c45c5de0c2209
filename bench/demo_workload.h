// The demo-shaped workload that the engine-level benchmarks train on: a
// random GPT-NeoX of the demo LM's shape saved as Hugging Face checkpoints
// and a file of random token ids, in a scratch directory; and the thread
// count from SAETRACK_BENCH_THREADS.
#ifndef SAETRACK_BENCH_DEMO_WORKLOAD_H_
#define SAETRACK_BENCH_DEMO_WORKLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/model_config.h"

namespace saetrack::bench {

constexpr int kDemoContext = 64;
constexpr int kDemoVocab = 4096;

// GPT-NeoX, 4 layers, d_model 128, 4 heads, BPE vocabulary 4096.
format::ModelConfig DemoLmShape();

// `dir` when non-empty, else a new directory $TMPDIR/<name>_XXXXXX.
absl::StatusOr<std::string> ScratchDir(const std::string& dir,
                                       const std::string& name);

// Writes <dir>/step-<seed> (a random DemoLmShape() model initialised with
// that seed) for every seed, and <dir>/tokens.u16: `num_tokens` ids from a
// fixed LCG.
absl::Status WriteDemoWorkload(const std::string& dir,
                               const std::vector<uint64_t>& seeds,
                               int64_t num_tokens);

// SAETRACK_BENCH_THREADS (default 2); exits with status 2 when it is not a
// positive number.
int BenchThreads();

}  // namespace saetrack::bench

#endif  // SAETRACK_BENCH_DEMO_WORKLOAD_H_
