// SAE training throughput (DESIGN.md §9): the engine's real training step,
// SaeTrainer::Step, on one fixed in-memory batch, next to the GEMMs that step
// cannot avoid, measured in the same run.
//
// Shapes: CPU d_in 512, d_sae 8192, batch 4096, fp32; and, when CUDA is
// present, d_in 768, d_sae 49152, batch 4096 with bf16 matmuls (fp32 master
// weights), reported also as a fraction of the H200's dense bf16 peak.
//
// Rows (per device):
//   BM_SaeGemmChain/<dev>   the baseline: the five GEMMs of one step, plain
//       torch::mm on preallocated operands, no elementwise ops:
//         forward   pre   = x      · W_enc   [B,d]x[d,S]
//                   x_hat = f      · W_dec   [B,S]x[S,d]
//         backward  dF    = dX_hat · W_decᵀ  [B,d]x[d,S]
//                   dWdec = fᵀ     · dX_hat  [S,B]x[B,d]
//                   dWenc = xᵀ     · dPre    [d,B]x[B,S]
//   BM_SaeTrainStep/<arch>/<dev>   SaeTrainer::Step (forward, loss, backward,
//       decoder-gradient projection, Adam, decoder renormalisation) for
//       relu_l1 (hand-written backward), relu_l1_autograd (the same loss
//       through autograd), topk (k 32, sparse gather decoder) and topk_dense
//       (k 32, dense decoder). Counters: tokens/s (items_per_second),
//       GFLOP/s, gemm_GFLOP/s, roofline = step time / GEMM-chain time
//       (design target ≤ 1.5), of_peak on CUDA.
//
// FLOP count per step: 10·B·d_in·d_sae (five GEMMs of 2·B·d_in·d_sae each,
// a multiply-add = 2 FLOPs), i.e. 1.72e11 at the CPU shape, for every row,
// so the roofline ratio is the ratio of times. It counts only the GEMMs of a
// dense step: autograd's extra encoder-input GEMM (dPre · W_encᵀ, a GEMV
// once summed over the batch, which the hand-written backward does) is not
// counted, and topk's sparse decoder does less work than the count says.
//
// Threads: SAETRACK_BENCH_THREADS (default 2) LibTorch intra-op threads.
//   build-bench/bin/sae_train_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_main.h"
#include "engine/sae/relu_l1_sae.h"
#include "engine/sae/sae.h"
#include "engine/sae/sae_trainer.h"
#include "engine/sae/topk_sae.h"

namespace saetrack::engine {
namespace {

// One benchmarked configuration: shape, device and precision.
struct Shape {
  int64_t d_in;
  int64_t d_sae;
  int64_t batch;
  torch::Device device;
  MatmulPrecision precision;

  double FlopsPerStep() const {
    return 10.0 * static_cast<double>(batch) * static_cast<double>(d_in) *
           static_cast<double>(d_sae);
  }
  std::string Label() const {
    return "B " + std::to_string(batch) + " d_in " + std::to_string(d_in) +
           " d_sae " + std::to_string(d_sae) +
           (precision == MatmulPrecision::kBf16 ? " bf16" : " fp32");
  }
};

// DESIGN §9: the CPU shape, and the GPU shape of a Pythia-160m-sized SAE.
const Shape kCpu{512, 8192, 4096, torch::kCPU, MatmulPrecision::kFp32};
const Shape kCudaBf16{768, 49152, 4096, torch::Device(torch::kCUDA, 0),
                      MatmulPrecision::kBf16};
// Dense bf16 peak of one H200 (NVIDIA's datasheet figure without sparsity).
constexpr double kH200PeakFlops = 790e12;
// A CPU step takes about a second on 2 cores; these keep the whole run
// around a minute while timing several steps per row.
constexpr double kMinSeconds = 4.0;
// Wall time of the GEMM chain when a step row runs without it.
constexpr double kGemmBaselineSeconds = 2.0;

void Synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Seconds per GEMM chain, by device: BM_SaeGemmChain's result when it ran
// (so the printed ratio matches the printed row), otherwise 0 until measured.
double& GemmChainSeconds(const Shape& shape) {
  static double cpu = 0, cuda = 0;
  return shape.device.is_cuda() ? cuda : cpu;
}

// The five GEMMs of one step on preallocated operands, nothing else.
struct GemmChain {
  torch::Tensor x, w_enc, f, w_dec, d_x_hat, d_pre;
  torch::Tensor pre, x_hat, d_f, d_w_dec, d_w_enc;  // outputs, preallocated

  explicit GemmChain(const Shape& s) {
    torch::manual_seed(3);
    const auto options =
        torch::dtype(s.precision == MatmulPrecision::kBf16 ? torch::kBFloat16
                                                           : torch::kFloat32)
            .device(s.device);
    x = torch::randn({s.batch, s.d_in}, options);
    w_enc = torch::randn({s.d_in, s.d_sae}, options);
    f = torch::relu(torch::randn({s.batch, s.d_sae}, options));
    w_dec = torch::randn({s.d_sae, s.d_in}, options);
    d_x_hat = torch::randn({s.batch, s.d_in}, options);
    d_pre = torch::randn({s.batch, s.d_sae}, options);
    pre = torch::empty({s.batch, s.d_sae}, options);
    x_hat = torch::empty({s.batch, s.d_in}, options);
    d_f = torch::empty({s.batch, s.d_sae}, options);
    d_w_dec = torch::empty({s.d_sae, s.d_in}, options);
    d_w_enc = torch::empty({s.d_in, s.d_sae}, options);
  }

  void Run() {
    torch::mm_out(pre, x, w_enc);
    torch::mm_out(x_hat, f, w_dec);
    torch::mm_out(d_f, d_x_hat, w_dec.t());
    torch::mm_out(d_w_dec, f.t(), d_x_hat);
    torch::mm_out(d_w_enc, x.t(), d_pre);
  }
};

double MeasureGemmChainSeconds(const Shape& shape) {
  torch::NoGradGuard no_grad;
  GemmChain chain(shape);
  chain.Run();  // warm-up
  Synchronize(shape.device);
  const auto start = std::chrono::steady_clock::now();
  int64_t runs = 0;
  double seconds = 0;
  do {
    chain.Run();
    Synchronize(shape.device);
    ++runs;
    seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
  } while (seconds < kGemmBaselineSeconds);
  return seconds / runs;
}

void BM_SaeGemmChain(benchmark::State& state, Shape shape) {
  torch::NoGradGuard no_grad;
  GemmChain chain(shape);
  chain.Run();  // warm-up
  Synchronize(shape.device);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    chain.Run();
    Synchronize(shape.device);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  GemmChainSeconds(shape) = seconds / state.iterations();
  state.SetItemsProcessed(state.iterations() * shape.batch);
  const double flops = shape.FlopsPerStep() * state.iterations() / seconds;
  state.counters["GFLOP/s"] = flops / 1e9;
  if (shape.device.is_cuda())
    state.counters["of_peak"] = flops / kH200PeakFlops;
  state.SetLabel("5 GEMMs, " + shape.Label());
}

// relu_l1 with its hand-written backward replaced by autograd: the step the
// engine took before, kept as a row to show what the hand-written one saves.
class AutogradReluSae : public ReluL1Sae {
 public:
  using ReluL1Sae::ReluL1Sae;
  SaeLoss LossAndGradients(const torch::Tensor& x, const StepContext& context,
                           SaeWeights* gradients,
                           torch::Tensor* fired) const override {
    return AutogradLossAndGradients(x, context, gradients, fired);
  }
};

// SaeTrainer::Step of `architecture` ("relu_l1", "relu_l1_autograd", "topk",
// "topk_dense").
void BM_SaeTrainStep(benchmark::State& state, Shape shape,
                     std::string architecture) {
  if (GemmChainSeconds(shape) == 0) {
    GemmChainSeconds(shape) = MeasureGemmChainSeconds(shape);
  }
  const double gemm_seconds = GemmChainSeconds(shape);

  torch::manual_seed(4);
  // Activation-like data: an offset plus unit noise.
  const torch::Tensor batch =
      (torch::randn({shape.batch, shape.d_in}) + torch::randn({1, shape.d_in}))
          .to(shape.device);
  SaeWeights weights = InitSaeFromScratch(shape.d_sae, batch, /*seed=*/5);
  SaeSpec spec;  // paper defaults: λ 8e-5; topk: k 32
  std::unique_ptr<Sae> sae;
  if (architecture == "relu_l1_autograd") {
    sae = std::make_unique<AutogradReluSae>(spec, std::move(weights),
                                            shape.precision);
  } else {
    spec.architecture = architecture == "topk_dense" ? "topk" : architecture;
    sae = *MakeSae(spec, std::move(weights), shape.precision);
    if (architecture == "topk_dense") {
      static_cast<TopKSae*>(sae.get())->set_dense_decode(true);
    }
  }
  SaeTrainerOptions options;  // lr 4e-4
  options.warmup_steps = 100;
  SaeTrainer trainer(sae.get(), options);
  trainer.Step(batch);  // warm-up: Adam state, allocator
  Synchronize(shape.device);

  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    SaeLoss loss = trainer.Step(batch);
    benchmark::DoNotOptimize(loss.reconstruction);
  }
  Synchronize(shape.device);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const double step_seconds = seconds / state.iterations();
  state.SetItemsProcessed(state.iterations() * shape.batch);
  state.counters["GFLOP/s"] = shape.FlopsPerStep() / step_seconds / 1e9;
  state.counters["gemm_GFLOP/s"] = shape.FlopsPerStep() / gemm_seconds / 1e9;
  state.counters["roofline"] = step_seconds / gemm_seconds;
  if (shape.device.is_cuda()) {
    state.counters["of_peak"] =
        shape.FlopsPerStep() / step_seconds / kH200PeakFlops;
  }
  state.SetLabel("SaeTrainer::Step " + architecture + ", " + shape.Label());
}

void RegisterAll() {
  // Wall time: LibTorch works on its own threads, which the default
  // (main-thread CPU time) would not count. Each chain runs before its step
  // rows so they reuse its time. The hand-written relu_l1 row comes first:
  // compare_sae_python.sh reads the first BM_SaeTrainStep row.
  std::vector<std::pair<std::string, Shape>> devices = {{"cpu", kCpu}};
  if (torch::cuda::is_available()) devices.push_back({"cuda_bf16", kCudaBf16});
  for (const auto& [name, shape] : devices) {
    benchmark::RegisterBenchmark(("BM_SaeGemmChain/" + name).c_str(),
                                 BM_SaeGemmChain, shape)
        ->UseRealTime()
        ->MinTime(kMinSeconds)
        ->Unit(benchmark::kMillisecond);
    for (const char* architecture :
         {"relu_l1", "relu_l1_autograd", "topk", "topk_dense"}) {
      benchmark::RegisterBenchmark(
          ("BM_SaeTrainStep/" + std::string(architecture) + "/" + name).c_str(),
          BM_SaeTrainStep, shape, std::string(architecture))
          ->UseRealTime()
          ->MinTime(kMinSeconds)
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace
}  // namespace saetrack::engine

int main(int argc, char** argv) {
  return saetrack::bench::RunBenchmarks(argc, argv,
                                        &saetrack::engine::RegisterAll);
}
