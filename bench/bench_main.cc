#include "bench/bench_main.h"

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>

namespace saetrack::bench {
namespace {

// LibTorch intra-op threads when SAETRACK_BENCH_THREADS is unset: the CI
// machine's core count.
constexpr int kDefaultThreads = 2;

int ThreadsFromEnv() {
  const char* value = std::getenv("SAETRACK_BENCH_THREADS");
  if (value == nullptr || *value == '\0') return kDefaultThreads;
  const int threads = std::atoi(value);
  return threads > 0 ? threads : kDefaultThreads;
}

}  // namespace

int RunBenchmarks(int argc, char** argv, void (*register_all)()) {
  const int threads = ThreadsFromEnv();
  torch::set_num_threads(threads);
  benchmark::AddCustomContext("torch_threads", std::to_string(threads));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace saetrack::bench
