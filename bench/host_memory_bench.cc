// What keeping freed memory in the process (engine/host_memory.h, the
// worker's --retain_freed_memory) saves: the same SAE chain trained by the
// engine in two child processes, one with glibc's default (large blocks
// mapped and unmapped, heap trimmed) as the baseline, one retaining freed
// memory, the arms alternated --reps times. Each child's wall time, CPU
// time, page faults and peak resident size come from wait4().
//
// The workload is the shortened demo's job on a random GPT-NeoX of the
// demo's shape (4 layers, d_model 128, BPE vocabulary 4096, context 64):
// a chain of --chain SAEs (relu_l1, d_sae 512, batch 256) at layer 2, the
// first trained on --first_tokens, each later one initialised from its
// predecessor and trained on --later_tokens, every one evaluated on 16,384
// held-out tokens and spliced into the LM on 8,192 (the job's defaults), on
// two "checkpoints" (two seeds) taken in turn.
//
// Threads: SAETRACK_BENCH_THREADS (default 2). Run (about two minutes on 2
// cores):
//   build/bin/host_memory_bench [--reps 2] [--chain 6]
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "bench/demo_workload.h"
#include "engine/host_memory.h"
#include "engine/training_engine.h"

ABSL_FLAG(int, reps, 2, "Runs of each arm, alternated");
ABSL_FLAG(int, chain, 6, "SAEs in the chain");
ABSL_FLAG(int64_t, first_tokens, 131'072, "Training tokens of the first SAE");
ABSL_FLAG(int64_t, later_tokens, 16'384,
          "Training tokens of each later SAE (initialised from the previous)");
ABSL_FLAG(std::string, dir, "",
          "Scratch directory for the model and token file (default: a new "
          "one under $TMPDIR)");
ABSL_FLAG(std::string, arm, "",
          "Internal: run one arm (default or retain) in this process over "
          "--dir and exit");

namespace saetrack::engine {
namespace {

using bench::kDemoContext;
using bench::kDemoVocab;
constexpr int64_t kTokens = 200'000;

// The child: trains the chain; exit status 0 when every SAE trained.
int RunArm(const std::string& arm, const std::string& dir) {
  if (arm == "retain") {
    if (!RetainFreedHostMemory()) {
      std::fprintf(stderr, "host_memory_bench: no allocator setting here\n");
      return 1;
    }
  } else if (arm != "default") {
    std::fprintf(stderr, "--arm: '%s' is not default or retain\n", arm.c_str());
    return 2;
  }
  torch::set_num_threads(bench::BenchThreads());
  std::unique_ptr<SaeTrainingEngine> engine = *NewTorchEngine(EngineOptions{});
  std::optional<std::string> previous;
  for (int i = 0; i < absl::GetFlag(FLAGS_chain); ++i) {
    TrainInput input;
    input.model_dir = dir + "/step-" + std::to_string(1 + i % 2);
    input.layer = 2;
    input.tokens_path = dir + "/tokens.u16";
    input.context_length = kDemoContext;
    input.d_sae = 512;
    input.l1_coefficient = 1e-3;
    input.lr = 3e-3;
    input.warmup_steps = 50;
    input.batch_size = 256;
    input.train_tokens = i == 0 ? absl::GetFlag(FLAGS_first_tokens)
                                : absl::GetFlag(FLAGS_later_tokens);
    input.eval_tokens = 16384;
    input.lm_eval_tokens = 8192;
    input.seed = 1;
    input.init_sae_safetensors = previous;
    absl::StatusOr<TrainOutput> out = engine->Train(input, nullptr);
    if (!out.ok()) {
      std::fprintf(stderr, "host_memory_bench: %s\n",
                   std::string(out.status().message()).c_str());
      return 1;
    }
    previous = out->sae_safetensors;
  }
  return 0;
}

struct Sample {
  double wall_s = 0, user_s = 0, sys_s = 0;
  long faults = 0, max_rss_mib = 0;
};

// Runs this program again with --arm=`arm`; nullopt when it failed.
std::optional<Sample> Spawn(const char* self, const std::string& arm,
                            const std::string& dir) {
  const std::string arm_flag = "--arm=" + arm;
  const std::string dir_flag = "--dir=" + dir;
  const std::string chain =
      "--chain=" + std::to_string(absl::GetFlag(FLAGS_chain));
  const std::string first =
      "--first_tokens=" + std::to_string(absl::GetFlag(FLAGS_first_tokens));
  const std::string later =
      "--later_tokens=" + std::to_string(absl::GetFlag(FLAGS_later_tokens));
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    return std::nullopt;
  }
  if (pid == 0) {
    execl(self, self, arm_flag.c_str(), dir_flag.c_str(), chain.c_str(),
          first.c_str(), later.c_str(), static_cast<char*>(nullptr));
    std::perror("execl");
    _exit(127);
  }
  int status = 0;
  rusage usage{};
  if (wait4(pid, &status, 0, &usage) != pid) {
    std::perror("wait4");
    return std::nullopt;
  }
  Sample sample;
  sample.wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "host_memory_bench: arm %s failed\n", arm.c_str());
    return std::nullopt;
  }
  sample.user_s = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6;
  sample.sys_s = usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
  sample.faults = usage.ru_minflt + usage.ru_majflt;
  sample.max_rss_mib = usage.ru_maxrss / 1024;
  return sample;
}

int Run(const char* self) {
  const int reps = absl::GetFlag(FLAGS_reps);
  if (reps < 1 || absl::GetFlag(FLAGS_chain) < 1 ||
      absl::GetFlag(FLAGS_first_tokens) < 256 ||
      absl::GetFlag(FLAGS_later_tokens) < 256) {
    std::fprintf(stderr,
                 "--reps and --chain must be >= 1, the token budgets >= 256\n");
    return 2;
  }
  const absl::StatusOr<std::string> scratch =
      bench::ScratchDir(absl::GetFlag(FLAGS_dir), "host_memory_bench");
  const absl::Status written =
      scratch.ok() ? bench::WriteDemoWorkload(*scratch, {1, 2}, kTokens)
                   : scratch.status();
  if (!written.ok()) {
    std::fprintf(stderr, "host_memory_bench: %s\n",
                 std::string(written.message()).c_str());
    return 1;
  }
  const std::string& dir = *scratch;
  std::printf(
      "host_memory_bench: GPT-NeoX 4 layers, d_model 128, vocab %d, context "
      "%d; a chain of %d relu_l1 SAEs (d_sae 512, batch 256; %lld tokens, "
      "then %lld each); %d threads; %d runs per arm\n",
      kDemoVocab, kDemoContext, absl::GetFlag(FLAGS_chain),
      static_cast<long long>(absl::GetFlag(FLAGS_first_tokens)),
      static_cast<long long>(absl::GetFlag(FLAGS_later_tokens)),
      bench::BenchThreads(), reps);
  std::printf("%-34s %8s %8s %8s %12s %9s\n", "arm (fastest run)", "wall",
              "user", "sys", "page faults", "peak RSS");
  const char* const arms[] = {"default", "retain"};
  Sample best[2];
  for (int r = 0; r < reps; ++r) {
    for (int a = 0; a < 2; ++a) {
      std::optional<Sample> s = Spawn(self, arms[a], dir);
      if (!s) return 1;
      if (r == 0 || s->wall_s < best[a].wall_s) best[a] = *s;
    }
  }
  const char* const names[] = {"glibc default (baseline)",
                               "freed memory retained"};
  for (int a = 0; a < 2; ++a) {
    std::printf("%-34s %7.1fs %7.1fs %7.1fs %12ld %6ld MiB\n", names[a],
                best[a].wall_s, best[a].user_s, best[a].sys_s, best[a].faults,
                best[a].max_rss_mib);
  }
  std::printf(
      "baseline / retained: wall %.2fx, system time %.1fx, page faults "
      "%.1fx; peak RSS retained / baseline: %.2fx\n",
      best[0].wall_s / best[1].wall_s,
      best[0].sys_s / std::max(best[1].sys_s, 1e-3),
      static_cast<double>(best[0].faults) / std::max(best[1].faults, 1L),
      static_cast<double>(best[1].max_rss_mib) /
          std::max(best[0].max_rss_mib, 1L));
  return 0;
}

}  // namespace
}  // namespace saetrack::engine

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "The engine's SAE chain with glibc's default allocator settings vs "
      "freed memory retained (engine/host_memory.h), each in a child "
      "process.");
  absl::ParseCommandLine(argc, argv);
  const std::string arm = absl::GetFlag(FLAGS_arm);
  if (!arm.empty()) {
    return saetrack::engine::RunArm(arm, absl::GetFlag(FLAGS_dir));
  }
  return saetrack::engine::Run("/proc/self/exe");
}
