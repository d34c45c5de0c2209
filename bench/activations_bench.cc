// How fast the worker turns tokens into activations: a forward pass of a
// random GPT-NeoX up to the hooked layer, the step that feeds every SAE.
//
// Rows:
//   BM_Activations/<model>/<device>  tokens (= activations) per second,
//       achieved GFLOP/s, and vs_gemm = GFLOP/s / the GEMM baseline's.
//   BM_Gemm/<model>/<device>         the baseline: [batch*ctx, d] x [d, 4d],
//       the model's dominant matmul shape (the MLP's up projection).
// vs_gemm says how close the forward comes to the machine's matmul speed:
// near 1 means the forward is matmul-bound and well fed; far below means
// time goes to attention, layer norms and elementwise ops.
//
// Threads: SAETRACK_BENCH_THREADS (default 2) LibTorch intra-op threads.
// CUDA rows are registered only where torch::cuda::is_available().
//   build-bench/bin/activations_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "bench/bench_main.h"
#include "engine/lm/gpt_neox.h"
#include "engine/lm/language_model.h"
#include "format/model_config.h"

namespace saetrack::engine {
namespace {

// Wall time spent measuring each GEMM baseline; long enough for a stable
// rate, short enough to keep the whole run near a minute.
constexpr double kGemmBaselineSeconds = 0.5;
// Minimum measured time per row: the 160m forward takes ~0.5 s, so the
// library's default (0.5 s) would time it once or twice.
constexpr double kMinSeconds = 3.0;

struct ModelShape {
  const char* name;
  format::ModelConfig config;
  int hook_layer;
  int batch;
  int context;
};

format::ModelConfig GptNeoxConfig(int vocab, int hidden, int layers, int heads,
                                  int intermediate, int max_positions) {
  format::ModelConfig config;
  config.architecture = "gpt_neox";
  config.vocab_size = vocab;
  config.hidden_size = hidden;
  config.num_hidden_layers = layers;
  config.num_attention_heads = heads;
  config.intermediate_size = intermediate;
  config.max_position_embeddings = max_positions;
  config.rotary_pct = 0.25;
  config.use_parallel_residual = true;
  return config;
}

// The demo's tiny LM (deploy/jobs/demo-job.json hooks layer 1) and a
// Pythia-160m-shaped model hooked mid-depth.
const ModelShape& Tiny() {
  static const auto* const kShape = new ModelShape{
      "tiny", GptNeoxConfig(256, 64, 2, 4, 256, 64), /*hook_layer=*/1,
      /*batch=*/8, /*context=*/64};
  return *kShape;
}
const ModelShape& Pythia160m() {
  static const auto* const kShape = new ModelShape{
      "pythia160m", GptNeoxConfig(50304, 768, 12, 12, 3072, 2048),
      /*hook_layer=*/4, /*batch=*/8, /*context=*/128};
  return *kShape;
}

// Forward FLOPs per token up to and including the hooked block (a
// multiply-add is 2 FLOPs). Per block: QKV 6d², attention scores and the
// weighted sum 4·T·d (T = context; the causal mask does not skip work), the
// output projection 2d², the MLP 4·d·I. Layer norms, GELU, rotary and the
// embedding lookup are O(d) per token and left out.
double ForwardFlopsPerToken(const ModelShape& shape) {
  const double d = shape.config.hidden_size;
  const double intermediate = shape.config.intermediate_size;
  const double context = shape.context;
  const double per_block =
      6 * d * d + 4 * context * d + 2 * d * d + 4 * d * intermediate;
  return per_block * (shape.hook_layer + 1);
}

void Synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// resid_post of the hooked layer, so that the blocks counted in
// ForwardFlopsPerToken are exactly the blocks that run.
HookPoint Hook(const ModelShape& shape) {
  return {shape.hook_layer, HookSite::kResidPost};
}

// Caches below are keyed by "<shape>/<device>".
std::string Key(const ModelShape& shape, const torch::Device& device) {
  return std::string(shape.name) + "/" + device.str();
}

// Models are built once per (shape, device) and reused: Google Benchmark
// calls a benchmark function several times while it picks the iteration
// count, and initialising the 160m model takes seconds. Single-threaded
// benchmark runner, so no lock.
const LanguageModel& CachedModel(const ModelShape& shape,
                                 const torch::Device& device) {
  static auto* const models =
      new std::map<std::string, std::unique_ptr<LanguageModel>>();
  std::unique_ptr<LanguageModel>& model = (*models)[Key(shape, device)];
  if (model == nullptr) {
    model = std::make_unique<GptNeoxModel>(
        GptNeoxModel::RandomInit(shape.config, /*seed=*/1, device));
  }
  return *model;
}

torch::Tensor RandomTokens(const ModelShape& shape,
                           const torch::Device& device) {
  torch::manual_seed(2);
  return torch::randint(shape.config.vocab_size, {shape.batch, shape.context},
                        torch::TensorOptions().dtype(torch::kInt64))
      .to(device);
}

struct GemmOperands {
  torch::Tensor activations;  // [batch * context, d]
  torch::Tensor weight;       // [d, intermediate]
  double flops;
};

GemmOperands MakeGemm(const ModelShape& shape, const torch::Device& device) {
  const int64_t rows = int64_t{shape.batch} * shape.context;
  const int64_t d = shape.config.hidden_size;
  const int64_t out = shape.config.intermediate_size;
  torch::manual_seed(3);
  const auto options = torch::TensorOptions().device(device);
  return {torch::randn({rows, d}, options), torch::randn({d, out}, options),
          2.0 * rows * d * out};
}

std::map<std::string, double>& GemmBaselines() {
  static auto* const baselines = new std::map<std::string, double>();
  return *baselines;
}

// The GFLOP/s of the model's dominant GEMM on `device`: BM_Gemm's result
// when that row ran (so the printed ratio matches the printed GEMM row),
// otherwise measured here for kGemmBaselineSeconds, so that a model row run
// alone (--benchmark_filter) still has its ratio.
double GemmBaselineGflops(const ModelShape& shape,
                          const torch::Device& device) {
  const std::string key = Key(shape, device);
  if (auto it = GemmBaselines().find(key); it != GemmBaselines().end()) {
    return it->second;
  }
  torch::NoGradGuard no_grad;
  const GemmOperands gemm = MakeGemm(shape, device);
  torch::Tensor result = torch::matmul(gemm.activations, gemm.weight);  // warm
  Synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  int64_t runs = 0;
  double seconds = 0;
  do {
    result = torch::matmul(gemm.activations, gemm.weight);
    Synchronize(device);
    ++runs;
    seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
  } while (seconds < kGemmBaselineSeconds);
  const double gflops = gemm.flops * runs / seconds / 1e9;
  GemmBaselines()[key] = gflops;
  return gflops;
}

void BM_Activations(benchmark::State& state, const ModelShape& shape,
                    torch::Device device) {
  const LanguageModel& model = CachedModel(shape, device);
  const torch::Tensor tokens = RandomTokens(shape, device);
  const std::vector<HookPoint> hooks = {Hook(shape)};
  const double baseline = GemmBaselineGflops(shape, device);
  c10::InferenceMode inference;
  model.RunToHooks(tokens, hooks);  // warm-up: allocator, kernels
  Synchronize(device);

  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    torch::Tensor activations = model.RunToHooks(tokens, hooks)[0];
    Synchronize(device);
    benchmark::DoNotOptimize(activations.data_ptr());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();

  const int64_t tokens_per_iteration = int64_t{shape.batch} * shape.context;
  state.SetItemsProcessed(state.iterations() * tokens_per_iteration);
  const double gflops = ForwardFlopsPerToken(shape) * tokens_per_iteration *
                        state.iterations() / seconds / 1e9;
  state.counters["GFLOP/s"] = gflops;
  state.counters["gemm_GFLOP/s"] = baseline;
  state.counters["vs_gemm"] = gflops / baseline;
  state.counters["MFLOP/token"] = ForwardFlopsPerToken(shape) / 1e6;
  state.SetLabel(std::to_string(shape.hook_layer + 1) + " blocks, batch " +
                 std::to_string(shape.batch) + " x ctx " +
                 std::to_string(shape.context));
}

void BM_Gemm(benchmark::State& state, const ModelShape& shape,
             torch::Device device) {
  torch::NoGradGuard no_grad;
  const GemmOperands gemm = MakeGemm(shape, device);
  torch::matmul(gemm.activations, gemm.weight);  // warm-up
  Synchronize(device);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    torch::Tensor result = torch::matmul(gemm.activations, gemm.weight);
    Synchronize(device);
    benchmark::DoNotOptimize(result.data_ptr());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  const double gflops = gemm.flops * state.iterations() / seconds / 1e9;
  state.counters["GFLOP/s"] = gflops;
  GemmBaselines()[Key(shape, device)] = gflops;
  state.SetLabel("[" + std::to_string(gemm.activations.size(0)) + ", " +
                 std::to_string(gemm.activations.size(1)) + "] x [" +
                 std::to_string(gemm.weight.size(0)) + ", " +
                 std::to_string(gemm.weight.size(1)) + "]");
}

void RegisterAll() {
  std::vector<torch::Device> devices = {torch::Device(torch::kCPU)};
  if (torch::cuda::is_available()) {
    devices.emplace_back(torch::kCUDA, 0);
  } else {
    std::fprintf(stderr,
                 "activations_bench: no CUDA device; CUDA rows "
                 "skipped\n");
  }
  for (const torch::Device& device : devices) {
    const std::string where = device.is_cuda() ? "cuda" : "cpu";
    for (const ModelShape* shape : {&Tiny(), &Pythia160m()}) {
      const std::string suffix = std::string(shape->name) + "/" + where;
      // Wall time: LibTorch works on its own threads, which the default
      // (main-thread CPU time) would not count.
      benchmark::RegisterBenchmark(("BM_Gemm/" + suffix).c_str(), BM_Gemm,
                                   *shape, device)
          ->UseRealTime()
          ->MinTime(kMinSeconds)
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("BM_Activations/" + suffix).c_str(),
                                   BM_Activations, *shape, device)
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
