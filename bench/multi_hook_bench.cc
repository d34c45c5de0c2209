// Several hooked layers from one forward pass (DESIGN.md §2): total worker
// (engine) time to train a job's SAEs at two hooks against one hook, with
// the second hook's activations kept from the first hook's forward pass
// (TrainInput.job_hooks, engine/lm/activation_cache.h) and, as the baseline
// that shows what sharing saves, without it (the LM run once per hook).
//
// The model is a random GPT-NeoX of the demo's shape (4 layers, d_model 128,
// BPE vocabulary 4096, context 64) at two "checkpoints" (two seeds), the
// token file random ids; the SAEs are the demo job's (relu_l1, d_sae 512,
// batch 256) trained for a fixed budget, so the time depends on shapes and
// budgets only. The one-hook job hooks layer 2 (the demo's middle layer),
// the two-hook job layers 1 and 2 (early and middle), so both forward
// passes stop after the same block; unshared minus shared is the LM time
// sharing saves. Each budget is run once per arm; tasks of one checkpoint run
// back to back on one engine, as the scheduler hands them to one worker.
//
// Prints, per budget (epochs over the distinct training tokens): seconds for
// 1 hook, 2 hooks shared, 2 hooks unshared and the ratios to 1 hook. The
// issue's target is shared / 1 hook < 1.3.
//
// Threads: SAETRACK_BENCH_THREADS (default 2). Run (about a minute on 2
// cores):
//   build/bin/multi_hook_bench [--tokens 300000] [--epochs 1,4]
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/demo_workload.h"
#include "engine/training_engine.h"

ABSL_FLAG(int64_t, tokens, 300'000,
          "Tokens in the (random) token file; 90% are training tokens");
ABSL_FLAG(std::string, epochs, "1,4",
          "Budgets to measure, in epochs over the distinct training tokens");
ABSL_FLAG(int64_t, lm_eval_tokens, 8192,
          "Held-out tokens of each SAE's spliced-LM evaluation (the job's "
          "default; 0 skips it)");
ABSL_FLAG(std::string, dir, "",
          "Scratch directory for the model and token file (default: a new "
          "one under $TMPDIR)");

namespace saetrack::engine {
namespace {

using bench::kDemoContext;
using bench::kDemoVocab;

struct Arm {
  const char* name;
  std::vector<int> layers;
  bool shared;
};

// Trains the chain of every hook of `arm` over the checkpoints, hooks of
// one checkpoint back to back; returns the seconds spent in Train and adds
// the activation sets taken from another hook's forward pass to *shared.
double RunArm(const Arm& arm, const std::vector<std::string>& checkpoints,
              const std::string& tokens_path, int64_t train_tokens,
              int* shared) {
  EngineOptions options;
  std::unique_ptr<SaeTrainingEngine> engine = *NewTorchEngine(options);
  std::vector<std::pair<int, std::string>> job_hooks;
  if (arm.shared) {
    for (int layer : arm.layers) job_hooks.emplace_back(layer, "resid_pre");
  }
  std::vector<std::optional<std::string>> previous(arm.layers.size());
  double seconds = 0;
  for (const std::string& checkpoint : checkpoints) {
    for (size_t h = 0; h < arm.layers.size(); ++h) {
      TrainInput input;
      input.model_dir = checkpoint;
      input.layer = arm.layers[h];
      input.job_hooks = job_hooks;
      input.tokens_path = tokens_path;
      input.context_length = kDemoContext;
      input.d_sae = 512;
      input.l1_coefficient = 1e-3;
      input.lr = 3e-3;
      input.warmup_steps = 50;
      input.batch_size = 256;
      input.train_tokens = train_tokens;
      input.eval_tokens = 16384;
      input.seed = 1;
      input.lm_eval_tokens = absl::GetFlag(FLAGS_lm_eval_tokens);
      input.init_sae_safetensors = previous[h];
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<TrainOutput> out = engine->Train(input, nullptr);
      seconds += std::chrono::duration<double>(
                     std::chrono::steady_clock::now() - start)
                     .count();
      if (!out.ok()) {
        std::fprintf(stderr, "multi_hook_bench: %s\n",
                     std::string(out.status().message()).c_str());
        std::exit(1);
      }
      *shared += out->shared_activation_sets;
      previous[h] = out->sae_safetensors;
    }
  }
  return seconds;
}

int Run() {
  const int threads = bench::BenchThreads();
  torch::set_num_threads(threads);
  std::vector<double> epochs;
  for (absl::string_view part :
       absl::StrSplit(absl::GetFlag(FLAGS_epochs), ',')) {
    double e = 0;
    if (!absl::SimpleAtod(part, &e) || e <= 0) {
      std::fprintf(stderr, "--epochs: \"%s\" is not a positive number\n",
                   std::string(part).c_str());
      return 2;
    }
    epochs.push_back(e);
  }
  const int64_t num_tokens = absl::GetFlag(FLAGS_tokens);
  if (num_tokens < 20 * kDemoContext) {
    std::fprintf(stderr, "--tokens must be at least %d\n", 20 * kDemoContext);
    return 2;
  }
  const absl::StatusOr<std::string> dir =
      bench::ScratchDir(absl::GetFlag(FLAGS_dir), "multi_hook_bench");
  const absl::Status written =
      dir.ok() ? bench::WriteDemoWorkload(*dir, {1, 2}, num_tokens)
               : dir.status();
  if (!written.ok()) {
    std::fprintf(stderr, "multi_hook_bench: %s\n",
                 std::string(written.message()).c_str());
    return 1;
  }
  const std::vector<std::string> checkpoints = {*dir + "/step-1",
                                                *dir + "/step-2"};
  const std::string tokens_path = *dir + "/tokens.u16";
  const int64_t distinct = num_tokens * 9 / 10 / kDemoContext * kDemoContext;
  std::printf(
      "multi_hook_bench: GPT-NeoX 4 layers, d_model 128, vocab %d, context "
      "%d; relu_l1 d_sae 512, batch 256; 2 checkpoints; %lld distinct "
      "training tokens; %d threads\n",
      kDemoVocab, kDemoContext, static_cast<long long>(distinct), threads);
  std::printf("%-8s %12s %9s %16s %18s %10s %12s\n", "epochs", "tokens/SAE",
              "1 hook", "2 hooks shared", "2 hooks unshared", "shared/1",
              "unshared/1");
  // The one-hook job hooks the middle layer; the two-hook job adds the
  // early one, so both forward passes stop after the same block.
  const Arm one{"1 hook", {2}, false};
  const Arm shared{"2 hooks shared", {1, 2}, true};
  const Arm unshared{"2 hooks unshared", {1, 2}, false};
  bool all_shared = true;
  for (double e : epochs) {
    const int64_t train_tokens = static_cast<int64_t>(e * distinct);
    int sets_one = 0, sets_shared = 0, sets_unshared = 0;
    const double t1 =
        RunArm(one, checkpoints, tokens_path, train_tokens, &sets_one);
    const double t2 =
        RunArm(shared, checkpoints, tokens_path, train_tokens, &sets_shared);
    const double t3 = RunArm(unshared, checkpoints, tokens_path, train_tokens,
                             &sets_unshared);
    // Per checkpoint, the second hook's held-out and training sets.
    all_shared = all_shared && sets_shared == 2 * 2 && sets_one == 0 &&
                 sets_unshared == 0;
    std::printf("%-8.2g %12lld %8.1fs %15.1fs %17.1fs %9.2fx %11.2fx\n", e,
                static_cast<long long>(train_tokens), t1, t2, t3, t2 / t1,
                t3 / t1);
  }
  if (!all_shared) {
    std::fprintf(stderr,
                 "multi_hook_bench: the second hook did not get its "
                 "activations from the first hook's forward pass\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace saetrack::engine

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Worker time for a job's SAEs at two hooks vs one, with and without "
      "one forward pass per checkpoint for both.");
  absl::ParseCommandLine(argc, argv);
  return saetrack::engine::Run();
}
