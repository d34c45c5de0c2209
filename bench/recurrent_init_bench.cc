// recurrent_init_bench: SAE-Track's convergence claim (DESIGN.md §3, §9) on
// the demo's tiny language model, measured fairly. The paper says an SAE
// initialised from the previous checkpoint's SAE reaches the loss of a
// from-scratch SAE with >= 20x fewer tokens; this measures that ratio here.
//
// What it does:
//   1. Trains a tiny GPT-NeoX as the demo's (d_model 64, 2 layers, ctx 64) on
//      Tiny Shakespeare for 512 steps with TrainTinyLm, saving checkpoints at
//      steps 0,16,32,64,128,256,384,448,512 into --work_dir (reused when
//      already complete).
//   2. Collects layer-1 resid_pre activations of every studied checkpoint on
//      the same token positions: ~200k training tokens (shuffled once, the
//      same order for every checkpoint) and 16k held-out tokens, each
//      checkpoint normalised to E||x|| = sqrt(d_in) as the job does.
//   3. Trains a from-scratch SAE on the first studied checkpoint; then, for
//      each later one, MeasureSpeedup (engine/recurrence/recurrence_study.h):
//      a from-scratch SAE and the previous checkpoint's from-scratch SAE as a
//      recurrent initialisation, trained with the same schedule (lr, warm-up,
//      dead window, ghost grads), batches and budget, and a second recurrent
//      arm at lr/10 (the paper's later-SAE rate). The from-scratch SAE of
//      each pair is the previous SAE of the next.
//   4. Prints per pair the from-scratch SAE's final held-out total loss, the
//      tokens each arm needed to come within --tolerance of it, the L0 at
//      the crossing and the ratios; then the median ratio per arm, and a
//      verdict on the paper's >= 20x.
//
// The default chain spans the whole (512-step) LM run: the early pairs are
// checkpoints far apart in what the model computes (large drift), the late
// ones close (small drift), so the table shows how the speed-up depends on
// the drift between neighbouring checkpoints.
//
// Not a Google Benchmark: it is one long measurement of tokens, not of time.
// Threads: SAETRACK_BENCH_THREADS (default 2) LibTorch intra-op threads, as
// the other benchmarks. Run (a few minutes on 2 cores):
//   build-bench/bin/recurrent_init_bench [--architecture topk --k 16] [--json]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/lm/activations.h"
#include "engine/lm/language_model.h"
#include "engine/lm/lm_trainer.h"
#include "engine/recurrence/recurrence_study.h"
#include "engine/sae/sae.h"
#include "format/json.h"
#include "format/token_file.h"

ABSL_FLAG(std::string, corpus,
          std::string(SAETRACK_SOURCE_DIR) + "/deploy/demo/tinyshakespeare.txt",
          "Training text of the tiny LM");
ABSL_FLAG(std::string, work_dir, SAETRACK_BENCH_CACHE_DIR,
          "Cache of the tiny LM's checkpoints; reused when complete");
ABSL_FLAG(std::vector<std::string>, steps,
          std::vector<std::string>({"32", "64", "128", "256", "384", "448",
                                    "512"}),
          "Checkpoints to study, in order (the first only as the previous SAE "
          "of the second); a subset of 0,16,32,64,128,256,384,448,512: large "
          "drift early, small drift late");
ABSL_FLAG(std::string, architecture, "relu_l1", "relu_l1 or topk");
ABSL_FLAG(double, l1, 1e-3, "relu_l1 L1 coefficient (the demo job's)");
ABSL_FLAG(int, k, 16, "topk active latents");
ABSL_FLAG(int, expansion, 8, "d_sae / d_in");
ABSL_FLAG(int, batch, 256, "Tokens per SAE step (the demo job's)");
ABSL_FLAG(int64_t, scratch_tokens, 1'000'000,
          "Token budget of each from-scratch SAE; the recurrent arms get at "
          "most the same");
ABSL_FLAG(double, lr, 3e-3,
          "Adam lr of the from-scratch SAE and of the same-lr recurrent arm "
          "(the demo job's lr_first); the slow arm gets a tenth");
ABSL_FLAG(int, warmup, 200, "Warm-up steps of every arm");
ABSL_FLAG(int64_t, dead_window, 100'000,
          "Dead-feature window of every arm (ghost grads for relu_l1)");
ABSL_FLAG(double, tolerance, 0.02,
          "Target: the from-scratch SAE's final held-out total loss times (1 "
          "+ tolerance)");
ABSL_FLAG(int64_t, train_tokens, 204'800,
          "Training activations per checkpoint");
ABSL_FLAG(int64_t, eval_tokens, 16'384, "Held-out activations per checkpoint");
ABSL_FLAG(uint64_t, seed, 1, "Seed of contexts, shuffling and SAE init");
ABSL_FLAG(bool, json, false,
          "Print one JSON object (with the curves) instead of the table");

namespace saetrack::engine {
namespace {

using format::JsonValue;

// The claim of DESIGN.md §9 / the paper.
constexpr double kPaperSpeedup = 20;

// The tiny LM: the demo's architecture and optimiser (deploy/demo.sh), but
// a 512-step run with the checkpoints studied here (the demo trains 1024
// steps; the cosine schedule depends on the last step, so the models at
// equal steps differ).
const std::vector<int64_t>& LmCheckpointSteps() {
  static const auto* const kSteps =
      new std::vector<int64_t>{0, 16, 32, 64, 128, 256, 384, 448, 512};
  return *kSteps;
}
constexpr int kContextLength = 64;
constexpr HookPoint kHook{1, HookSite::kResidPre};
constexpr int64_t kContextsPerForward = 128;

constexpr char kUsage[] = R"(Usage: recurrent_init_bench [flags]

Measures SAE-Track's recurrent-initialisation speed-up on a tiny GPT-NeoX
trained on Tiny Shakespeare, fairly: tokens a from-scratch SAE needs to come
within --tolerance of its final held-out total loss vs tokens an SAE
initialised from the previous checkpoint's SAE needs with the same schedule,
batches and budget, and with a tenth of the learning rate (the paper claims
>= 20x fewer). Progress goes to stderr.)";

struct Flags {
  std::string corpus =
      std::string(SAETRACK_SOURCE_DIR) + "/deploy/demo/tinyshakespeare.txt";
  std::string work_dir = SAETRACK_BENCH_CACHE_DIR;
  std::vector<int64_t> steps = {32, 64, 128, 256, 384, 448, 512};
  std::string architecture = "relu_l1";
  double l1 = 1e-3;
  int k = 16;
  int expansion = 8;
  int batch = 256;
  int64_t scratch_tokens = 1'000'000;
  double lr = 3e-3;
  int warmup = 200;
  int64_t dead_window = 100'000;
  double tolerance = 0.02;
  int64_t train_tokens = 204'800;
  int64_t eval_tokens = 16'384;
  uint64_t seed = 1;
  bool json = false;
};

// Reads the command-line flags into `flags`; returns an exit code when the
// program should stop (2 after a usage error).
std::optional<int> ParseFlags(Flags& flags) {
  const auto usage_error = [](const std::string& message) {
    std::cerr << "recurrent_init_bench: " << message
              << "\nRun recurrent_init_bench --help for usage.\n";
    return 2;
  };
  flags.corpus = absl::GetFlag(FLAGS_corpus);
  flags.work_dir = absl::GetFlag(FLAGS_work_dir);
  flags.architecture = absl::GetFlag(FLAGS_architecture);
  flags.l1 = absl::GetFlag(FLAGS_l1);
  flags.k = absl::GetFlag(FLAGS_k);
  flags.expansion = absl::GetFlag(FLAGS_expansion);
  flags.batch = absl::GetFlag(FLAGS_batch);
  flags.scratch_tokens = absl::GetFlag(FLAGS_scratch_tokens);
  flags.lr = absl::GetFlag(FLAGS_lr);
  flags.warmup = absl::GetFlag(FLAGS_warmup);
  flags.dead_window = absl::GetFlag(FLAGS_dead_window);
  flags.tolerance = absl::GetFlag(FLAGS_tolerance);
  flags.train_tokens = absl::GetFlag(FLAGS_train_tokens);
  flags.eval_tokens = absl::GetFlag(FLAGS_eval_tokens);
  flags.seed = absl::GetFlag(FLAGS_seed);
  flags.json = absl::GetFlag(FLAGS_json);
  flags.steps.clear();
  for (const std::string& part : absl::GetFlag(FLAGS_steps)) {
    int64_t step = 0;
    if (!absl::SimpleAtoi(part, &step)) {
      return usage_error("--steps: \"" + part + "\" is not a step");
    }
    flags.steps.push_back(step);
  }
  if (flags.expansion <= 0) return usage_error("--expansion must be > 0");
  if (flags.train_tokens < kContextLength) {
    return usage_error(
        absl::StrCat("--train_tokens must be >= ", kContextLength));
  }
  if (flags.eval_tokens < kContextLength) {
    return usage_error(
        absl::StrCat("--eval_tokens must be >= ", kContextLength));
  }
  if (flags.steps.size() < 2) {
    return usage_error("--steps needs at least two checkpoints");
  }
  for (size_t i = 0; i < flags.steps.size(); ++i) {
    const std::vector<int64_t>& known = LmCheckpointSteps();
    if (std::find(known.begin(), known.end(), flags.steps[i]) == known.end()) {
      return usage_error(absl::StrCat("--steps: ", flags.steps[i],
                                      " is not one of ",
                                      absl::StrJoin(known, ",")));
    }
    if (i > 0 && flags.steps[i] <= flags.steps[i - 1]) {
      return usage_error("--steps must be increasing");
    }
  }
  return std::nullopt;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since)
      .count();
}

struct CheckpointActivations {
  torch::Tensor train;     // [train_tokens, d_model], shuffled rows
  torch::Tensor held_out;  // [eval_tokens, d_model]
};

// Layer-1 resid_pre activations of each studied checkpoint, all at the same
// token positions, so that pairs differ only by the model.
absl::StatusOr<std::map<int64_t, CheckpointActivations>> CollectAll(
    const Flags& flags, const std::string& lm_dir) {
  absl::StatusOr<format::TokenFile> tokens = format::TokenFile::Open(
      lm_dir + "/tokens.u16", format::TokenDtype::kUint16);
  if (!tokens.ok()) return tokens.status();
  absl::StatusOr<TokenSplit> split =
      SplitTokens(tokens->size(), kContextLength);
  if (!split.ok()) return split.status();
  const std::vector<int64_t> train_starts = SampleTrainContexts(
      *split, kContextLength, flags.train_tokens / kContextLength, flags.seed);
  const std::vector<int64_t> eval_starts = HeldOutContexts(
      *split, kContextLength, flags.eval_tokens / kContextLength);
  // Byte-level vocabulary (lm_trainer.h).
  absl::StatusOr<torch::Tensor> train_contexts =
      GatherContexts(*tokens, train_starts, kContextLength, 256);
  if (!train_contexts.ok()) return train_contexts.status();
  absl::StatusOr<torch::Tensor> eval_contexts =
      GatherContexts(*tokens, eval_starts, kContextLength, 256);
  if (!eval_contexts.ok()) return eval_contexts.status();
  // Rows of one context are strongly correlated; SAE batches are drawn in
  // order, so shuffle the rows once (as the worker's shuffling buffer does),
  // with the same permutation for every checkpoint.
  at::Generator generator = at::detail::createCPUGenerator(flags.seed);
  const torch::Tensor permutation =
      torch::randperm(train_contexts->size(0) * kContextLength, generator,
                      torch::TensorOptions().dtype(torch::kInt64));

  std::map<int64_t, CheckpointActivations> activations;
  for (const int64_t step : flags.steps) {
    absl::StatusOr<std::unique_ptr<LanguageModel>> model = LoadLanguageModel(
        absl::StrCat(lm_dir, "/checkpoints/step-", step), torch::kCPU);
    if (!model.ok()) return model.status();
    CheckpointActivations& a = activations[step];
    a.train = CollectActivations(**model, *train_contexts, kHook,
                                 kContextsPerForward, torch::kCPU)
                  .index_select(0, permutation)
                  .contiguous();
    a.held_out = CollectActivations(**model, *eval_contexts, kHook,
                                    kContextsPerForward, torch::kCPU);
  }
  return activations;
}

struct PairResult {
  int64_t prev_step;
  int64_t step;
  analysis::RecurrenceSpeedup speedup;
  double seconds;
};

// Median over pairs of one arm's speed-up; a pair that never reached the
// target counts as 0.
double MedianSpeedup(
    const std::vector<PairResult>& pairs,
    const analysis::SpeedupArm analysis::RecurrenceSpeedup::*arm) {
  std::vector<double> values;
  for (const PairResult& p : pairs) {
    values.push_back(p.speedup.Speedup(p.speedup.*arm));
  }
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

int64_t Never(const std::vector<PairResult>& pairs,
              const analysis::SpeedupArm analysis::RecurrenceSpeedup::*arm) {
  return std::count_if(pairs.begin(), pairs.end(), [arm](const PairResult& p) {
    return !(p.speedup.*arm).tokens.has_value();
  });
}

std::string FormatTokens(int64_t tokens) {
  if (tokens >= 1'000'000) return absl::StrFormat("%.2fM", tokens / 1e6);
  if (tokens >= 10'000) return absl::StrFormat("%.1fk", tokens / 1e3);
  return absl::StrCat(tokens);
}

std::string ConfigLabel(const Flags& flags, int64_t d_in) {
  const std::string sparsity = flags.architecture == "topk"
                                   ? absl::StrCat("k ", flags.k)
                                   : absl::StrFormat("l1 %g", flags.l1);
  return absl::StrFormat(
      "%s, %s, d_in %d, d_sae %d, batch %d; every arm: lr %g (slow arm "
      "%g), warm-up %d, dead window %s%s, at most %s tokens; target: within "
      "%.0f%% of the scratch SAE's final held-out total loss on %s tokens",
      flags.architecture, sparsity, d_in, d_in * flags.expansion, flags.batch,
      flags.lr, flags.lr / 10, flags.warmup, FormatTokens(flags.dead_window),
      flags.architecture == "relu_l1" ? " with ghost grads" : " with AuxK",
      FormatTokens(flags.scratch_tokens), 100 * flags.tolerance,
      FormatTokens(flags.eval_tokens));
}

// One plain sentence on the paper's claim, per arm.
std::string Verdict(const std::vector<PairResult>& pairs) {
  const double same =
      MedianSpeedup(pairs, &analysis::RecurrenceSpeedup::same_lr);
  const double slow =
      MedianSpeedup(pairs, &analysis::RecurrenceSpeedup::slow_lr);
  const bool holds = Never(pairs, &analysis::RecurrenceSpeedup::same_lr) == 0 &&
                     same >= kPaperSpeedup;
  return absl::StrFormat(
      "%s: median %.1fx with the from-scratch schedule (%d of %d pairs never "
      "got there), %.1fx at lr/10 (%d never)",
      holds ? "HOLDS here" : "does NOT hold here", same,
      Never(pairs, &analysis::RecurrenceSpeedup::same_lr), pairs.size(), slow,
      Never(pairs, &analysis::RecurrenceSpeedup::slow_lr));
}

void PrintJson(const Flags& flags, int64_t d_in,
               const std::vector<PairResult>& pairs, double total_seconds) {
  JsonValue::Array rows;
  for (const PairResult& p : pairs) {
    JsonValue::Object members = {
        {"prev_step", JsonValue::Integer(p.prev_step)},
        {"step", JsonValue::Integer(p.step)},
        {"seconds", JsonValue::Number(p.seconds)},
    };
    for (auto& member : SpeedupJsonMembers(p.speedup)) {
      members.push_back(std::move(member));
    }
    rows.push_back(JsonValue::MakeObject(std::move(members)));
  }
  const JsonValue report = JsonValue::MakeObject({
      {"benchmark", JsonValue::String("recurrent_init")},
      {"config", JsonValue::String(ConfigLabel(flags, d_in))},
      {"paper_speedup", JsonValue::Number(kPaperSpeedup)},
      {"median_speedup_same_lr",
       JsonValue::Number(
           MedianSpeedup(pairs, &analysis::RecurrenceSpeedup::same_lr))},
      {"median_speedup_slow_lr",
       JsonValue::Number(
           MedianSpeedup(pairs, &analysis::RecurrenceSpeedup::slow_lr))},
      {"pairs", JsonValue::MakeArray(std::move(rows))},
      {"verdict", JsonValue::String(Verdict(pairs))},
      {"seconds", JsonValue::Number(total_seconds)},
  });
  std::cout << format::SerializeJson(report) << "\n";
}

std::string ArmCell(const analysis::RecurrenceSpeedup& s,
                    const analysis::SpeedupArm& arm) {
  if (!arm.tokens.has_value()) return "never";
  return absl::StrFormat("%s %.1fx L0 %.1f", FormatTokens(*arm.tokens),
                         s.Speedup(arm), arm.l0);
}

void PrintTable(const Flags& flags, int64_t d_in,
                const std::vector<PairResult>& pairs, double total_seconds) {
  std::printf(
      "== Recurrent initialisation vs from scratch (tiny GPT-NeoX, layer 1 "
      "resid_pre)\n%s\n",
      ConfigLabel(flags, d_in).c_str());
  std::printf(
      "recurrent arms start from the scratch SAE of `prev`; tokens: first "
      "evaluation (4 per doubling) at or below the target\n");
  std::printf("%5s %5s %9s %8s %7s %9s %-22s %-22s %6s\n", "prev", "step",
              "scr loss", "scr tok", "scr L0", "rec init", "same lr", "lr/10",
              "time s");
  for (const PairResult& p : pairs) {
    const analysis::RecurrenceSpeedup& s = p.speedup;
    std::printf("%5lld %5lld %9.4f %8s %7.1f %9.4f %-22s %-22s %6.1f\n",
                static_cast<long long>(p.prev_step),
                static_cast<long long>(p.step), s.scratch_loss,
                FormatTokens(s.scratch_tokens).c_str(), s.scratch_l0,
                s.same_lr.init_loss, ArmCell(s, s.same_lr).c_str(),
                ArmCell(s, s.slow_lr).c_str(), p.seconds);
  }
  std::printf(
      "\npaper's claim (>= %.0fx fewer tokens to the from-scratch loss): "
      "%s\n",
      kPaperSpeedup, Verdict(pairs).c_str());
  std::printf("total %.0f s\n", total_seconds);
}

// Mean L2 norm of the rows (raw activations, before normalisation): how much
// the activations grow over training.
double MeanNorm(const torch::Tensor& x) {
  return x.norm(2, 1).mean().item<double>();
}

int Run(const Flags& flags) {
  const auto start = std::chrono::steady_clock::now();
  const char* threads_env = std::getenv("SAETRACK_BENCH_THREADS");
  const int threads = threads_env != nullptr && std::atoi(threads_env) > 0
                          ? std::atoi(threads_env)
                          : 2;
  torch::set_num_threads(threads);

  TinyLmOptions lm;
  lm.corpus_path = flags.corpus;
  lm.out_dir = flags.work_dir + "/lm";
  lm.checkpoint_steps = LmCheckpointSteps();
  lm.d_model = 64;
  lm.layers = 2;
  lm.heads = 4;
  lm.context_length = kContextLength;
  lm.batch_size = 16;
  lm.lr = 3e-3;
  lm.seed = 1;
  lm.threads = threads;
  std::fprintf(stderr, "tiny LM -> %s\n", lm.out_dir.c_str());
  absl::StatusOr<TinyLmResult> trained =
      TrainTinyLm(lm, [](const std::string& line) {
        std::fprintf(stderr, "  %s\n", line.c_str());
      });
  if (!trained.ok()) {
    std::cerr << "recurrent_init_bench: " << trained.status() << "\n";
    return 1;
  }
  std::fprintf(stderr, "  %s (%.0f s)\n",
               trained->cached ? "cached" : "trained", Seconds(start));

  absl::StatusOr<std::map<int64_t, CheckpointActivations>> activations =
      CollectAll(flags, lm.out_dir);
  if (!activations.ok()) {
    std::cerr << "recurrent_init_bench: " << activations.status() << "\n";
    return 1;
  }
  const CheckpointActivations& first = activations->begin()->second;
  const int64_t d_in = first.train.size(1);
  std::fprintf(stderr,
               "activations: %lld x %lld train, %lld held out per checkpoint "
               "(%.0f s); mean |x|:",
               static_cast<long long>(first.train.size(0)),
               static_cast<long long>(d_in),
               static_cast<long long>(first.held_out.size(0)), Seconds(start));
  for (const auto& [step, a] : *activations) {
    std::fprintf(stderr, " %lld: %.3g", static_cast<long long>(step),
                 MeanNorm(a.held_out));
  }
  std::fprintf(stderr, "\n");

  // Every checkpoint normalised as the job normalises it.
  for (auto& [step, a] : *activations) {
    const double scale = ActivationScale(
        a.train.narrow(0, 0, std::min<int64_t>(a.train.size(0), 16384)));
    a.train = a.train * scale;
    a.held_out = a.held_out * scale;
  }

  SpeedupOptions options;
  options.spec.architecture = flags.architecture;
  options.spec.l1_coefficient = flags.l1;
  options.spec.k = flags.k;
  options.d_sae = d_in * flags.expansion;
  options.arm.batch_size = flags.batch;
  options.arm.max_tokens = flags.scratch_tokens;
  options.arm.trainer.lr = flags.lr;
  options.arm.trainer.warmup_steps = flags.warmup;
  options.arm.trainer.dead_window_tokens = flags.dead_window;
  options.arm.trainer.ghost_grads = flags.architecture == "relu_l1";
  options.tolerance = flags.tolerance;
  options.seed = flags.seed;

  auto measure_start = std::chrono::steady_clock::now();
  absl::StatusOr<SaeWeights> first_sae =
      TrainSaeFromScratch(activations->at(flags.steps[0]).train, options);
  if (!first_sae.ok()) {
    std::cerr << "recurrent_init_bench: " << first_sae.status() << "\n";
    return 1;
  }
  std::fprintf(stderr, "scratch SAE on step %lld (%.0f s)\n",
               static_cast<long long>(flags.steps[0]), Seconds(measure_start));

  // Pairs in chain order; the scratch SAE of a pair is the previous SAE of
  // the next.
  std::vector<PairResult> pairs;
  SaeWeights prev = *first_sae;
  for (size_t i = 1; i < flags.steps.size(); ++i) {
    const CheckpointActivations& a = activations->at(flags.steps[i]);
    measure_start = std::chrono::steady_clock::now();
    absl::StatusOr<SpeedupStudy> study =
        MeasureSpeedup(prev, a.train, a.held_out, options);
    if (!study.ok()) {
      std::cerr << "recurrent_init_bench: " << study.status() << "\n";
      return 1;
    }
    pairs.push_back({flags.steps[i - 1], flags.steps[i], study->speedup,
                     Seconds(measure_start)});
    const PairResult& p = pairs.back();
    std::fprintf(stderr,
                 "step %lld <- %lld: scratch loss %.4f after %s tokens, same "
                 "lr %s, lr/10 %s (%.0f s)\n",
                 static_cast<long long>(p.step),
                 static_cast<long long>(p.prev_step), p.speedup.scratch_loss,
                 FormatTokens(p.speedup.scratch_tokens).c_str(),
                 ArmCell(p.speedup, p.speedup.same_lr).c_str(),
                 ArmCell(p.speedup, p.speedup.slow_lr).c_str(), p.seconds);
    prev = std::move(study->scratch_sae);
  }

  if (flags.json) {
    PrintJson(flags, d_in, pairs, Seconds(start));
  } else {
    PrintTable(flags, d_in, pairs, Seconds(start));
  }
  return 0;
}
}  // namespace
}  // namespace saetrack::engine

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(saetrack::engine::kUsage);
  absl::ParseCommandLine(argc, argv);
  saetrack::engine::Flags flags;
  if (const std::optional<int> exit_code =
          saetrack::engine::ParseFlags(flags)) {
    return *exit_code;
  }
  return saetrack::engine::Run(flags);
}
