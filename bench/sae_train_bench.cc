// SAE training throughput (DESIGN.md §9): the engine's real training step,
// SaeTrainer::Step, on one fixed in-memory batch, next to the GEMMs that step
// cannot avoid, measured in the same run.
//
// Shape: d_in 512, d_sae 8192 (expansion 16), batch 4096 tokens, fp32, CPU.
//
// Rows:
//   BM_SaeGemmChain/cpu   the baseline: the five GEMMs of one step, plain
//       torch::mm on preallocated operands, no autograd, no elementwise ops:
//         forward   pre   = x      · W_enc   [B,d]x[d,S]
//                   x_hat = f      · W_dec   [B,S]x[S,d]
//         backward  dF    = dX_hat · W_decᵀ  [B,d]x[d,S]
//                   dWdec = fᵀ     · dX_hat  [S,B]x[B,d]
//                   dWenc = xᵀ     · dPre    [d,B]x[B,S]
//   BM_SaeTrainStep/cpu   SaeTrainer::Step (forward, loss with its two
//       .item() reads, autograd backward, decoder-gradient projection, Adam,
//       decoder renormalisation). Counters: tokens/s (items_per_second),
//       GFLOP/s, gemm_GFLOP/s and roofline = step time / GEMM-chain time
//       (design target ≤ 1.5).
//
// FLOP count per step: 10·B·d_in·d_sae (five GEMMs of 2·B·d_in·d_sae each,
// a multiply-add = 2 FLOPs), i.e. 1.72e11 at this shape. This counts only the
// unavoidable GEMMs: the encoder's input gradient dPre · W_encᵀ (needed by
// autograd only because b_dec is inside the encoder; it reduces to a GEMV
// after summing over the batch) is not counted, nor are elementwise ops and
// Adam, which are O(B·d_sae + d_in·d_sae). Both rows use the same count, so
// the roofline ratio equals the ratio of their times.
//
// Threads: SAETRACK_BENCH_THREADS (default 2) LibTorch intra-op threads.
//   build-bench/bin/sae_train_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "bench/bench_main.h"
#include "worker/engine/sae.h"

namespace saetrack::engine {
namespace {

constexpr int64_t kDIn = 512;
constexpr int64_t kDSae = 8192;
constexpr int64_t kBatch = 4096;
constexpr double kFlopsPerStep = 10.0 * kBatch * kDIn * kDSae;
// A step takes about a second on 2 cores; these keep the whole run well
// under a minute while timing several steps per row.
constexpr double kMinSeconds = 4.0;
// Wall time of the GEMM chain when the step row runs without it.
constexpr double kGemmBaselineSeconds = 2.0;

// Seconds per GEMM chain: BM_SaeGemmChain's result when it ran (so the
// printed ratio matches the printed row), otherwise 0 until measured.
double& GemmChainSeconds() {
  static double seconds = 0;
  return seconds;
}

struct GemmChain {
  torch::Tensor x, w_enc, f, w_dec, d_x_hat, d_pre;
  torch::Tensor pre, x_hat, d_f, d_w_dec, d_w_enc;  // outputs, preallocated

  GemmChain() {
    torch::manual_seed(3);
    x = torch::randn({kBatch, kDIn});
    w_enc = torch::randn({kDIn, kDSae});
    f = torch::relu(torch::randn({kBatch, kDSae}));
    w_dec = torch::randn({kDSae, kDIn});
    d_x_hat = torch::randn({kBatch, kDIn});
    d_pre = torch::randn({kBatch, kDSae});
    pre = torch::empty({kBatch, kDSae});
    x_hat = torch::empty({kBatch, kDIn});
    d_f = torch::empty({kBatch, kDSae});
    d_w_dec = torch::empty({kDSae, kDIn});
    d_w_enc = torch::empty({kDIn, kDSae});
  }

  void Run() {
    torch::mm_out(pre, x, w_enc);
    torch::mm_out(x_hat, f, w_dec);
    torch::mm_out(d_f, d_x_hat, w_dec.t());
    torch::mm_out(d_w_dec, f.t(), d_x_hat);
    torch::mm_out(d_w_enc, x.t(), d_pre);
  }
};

double MeasureGemmChainSeconds() {
  torch::NoGradGuard no_grad;
  GemmChain chain;
  chain.Run();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  int64_t runs = 0;
  double seconds = 0;
  do {
    chain.Run();
    ++runs;
    seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
  } while (seconds < kGemmBaselineSeconds);
  return seconds / runs;
}

void BM_SaeGemmChain(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  GemmChain chain;
  chain.Run();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    chain.Run();
    benchmark::DoNotOptimize(chain.d_w_enc.data_ptr());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  GemmChainSeconds() = seconds / state.iterations();
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["GFLOP/s"] =
      kFlopsPerStep * state.iterations() / seconds / 1e9;
  state.SetLabel("5 GEMMs, B " + std::to_string(kBatch) + " d_in " +
                 std::to_string(kDIn) + " d_sae " + std::to_string(kDSae));
}

void BM_SaeTrainStep(benchmark::State& state) {
  if (GemmChainSeconds() == 0) GemmChainSeconds() = MeasureGemmChainSeconds();
  const double gemm_seconds = GemmChainSeconds();

  torch::manual_seed(4);
  // Activation-like data: an offset plus unit noise.
  const torch::Tensor batch =
      torch::randn({kBatch, kDIn}) + torch::randn({1, kDIn});
  ReluSae sae = InitSaeFromScratch(kDSae, batch, /*seed=*/5);
  SaeTrainerOptions options;  // paper defaults: λ 8e-5, lr 4e-4
  options.warmup_steps = 100;
  SaeTrainer trainer(&sae, options);
  trainer.Step(batch);  // warm-up: Adam state, allocator

  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    SaeLoss loss = trainer.Step(batch);
    benchmark::DoNotOptimize(loss.reconstruction);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const double step_seconds = seconds / state.iterations();
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["GFLOP/s"] = kFlopsPerStep / step_seconds / 1e9;
  state.counters["gemm_GFLOP/s"] = kFlopsPerStep / gemm_seconds / 1e9;
  state.counters["roofline"] = step_seconds / gemm_seconds;
  state.SetLabel("SaeTrainer::Step, B " + std::to_string(kBatch) + " d_in " +
                 std::to_string(kDIn) + " d_sae " + std::to_string(kDSae));
}

void RegisterAll() {
  // Wall time: LibTorch works on its own threads, which the default
  // (main-thread CPU time) would not count. The chain runs first so the step
  // row reuses its time.
  benchmark::RegisterBenchmark("BM_SaeGemmChain/cpu", BM_SaeGemmChain)
      ->UseRealTime()
      ->MinTime(kMinSeconds)
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("BM_SaeTrainStep/cpu", BM_SaeTrainStep)
      ->UseRealTime()
      ->MinTime(kMinSeconds)
      ->Unit(benchmark::kMillisecond);
}

}  // namespace
}  // namespace saetrack::engine

int main(int argc, char** argv) {
  return saetrack::bench::RunBenchmarks(argc, argv,
                                        &saetrack::engine::RegisterAll);
}
