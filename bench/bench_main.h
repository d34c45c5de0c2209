// The shared main() of the benchmarks: LibTorch's thread count from
// SAETRACK_BENCH_THREADS (default 2; LibTorch's own default can be 1),
// recorded in the report's context, then Google Benchmark.
#ifndef SAETRACK_BENCH_BENCH_MAIN_H_
#define SAETRACK_BENCH_BENCH_MAIN_H_

namespace saetrack::bench {

// Sets the thread count, calls `register_all` to register the benchmarks and
// runs them; returns main()'s exit code.
int RunBenchmarks(int argc, char** argv, void (*register_all)());

}  // namespace saetrack::bench

#endif  // SAETRACK_BENCH_BENCH_MAIN_H_
