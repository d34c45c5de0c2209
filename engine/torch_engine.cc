// NewTorchEngine: the LibTorch implementation of SaeTrainingEngine.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "analysis/matching.h"
#include "analysis/speedup.h"
#include "base/status_macros.h"
#include "engine/eval/lm_evaluation.h"
#include "engine/features/analysis_pass.h"
#include "engine/lm/activation_cache.h"
#include "engine/lm/activation_stream.h"
#include "engine/lm/activations.h"
#include "engine/lm/language_model.h"
#include "engine/recurrence/recurrence_study.h"
#include "engine/sae/sae.h"
#include "engine/sae/sae_trainer.h"
#include "engine/training_engine.h"
#include "format/crc32c.h"
#include "format/safetensors.h"
#include "format/token_file.h"

namespace saetrack::engine {
namespace {

// Tokens per LM forward pass: large enough for efficient GEMMs, small enough
// that attention scores of a big model fit comfortably.
constexpr int64_t kTokensPerForward = 8192;
// Size of the mixing buffer of training activations (ActivationStream): large
// enough to mix many forward passes, small enough for any GPU.
constexpr int64_t kActivationBufferBytes = int64_t{256} << 20;
// Refill the mixing buffer when half of it has been served (SAELens' choice).
constexpr double kActivationRefillFraction = 0.5;
// Rows of the first buffer used for the geometric median of b_dec.
constexpr int64_t kGeometricMedianSample = 4096;
// Rows of training activations that estimate the normalisation E||x||.
constexpr int64_t kScaleSample = 16384;
// Steps between progress callbacks.
constexpr int64_t kProgressEverySteps = 16;
// Held-out rows the convergence monitor evaluates on.
constexpr int64_t kAdaptiveEvalRows = 16384;
// Metadata of a saved training state.
constexpr char kFingerprintKey[] = "saetrack.fingerprint";
constexpr char kInitFvuKey[] = "saetrack.init_fvu";

absl::Status InvalidField(std::string_view field, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("TrainInput.", absl::string_view(field.data(), field.size()),
                   " ", absl::string_view(what.data(), what.size())));
}

absl::Status ValidateInput(const TrainInput& input) {
  if (input.architecture != "gpt_neox" && input.architecture != "gpt2") {
    return InvalidField("architecture",
                        absl::StrCat("\"", input.architecture,
                                     "\" is not supported (supported: "
                                     "\"gpt_neox\", \"gpt2\")"));
  }
  const std::vector<std::string> architectures = SaeArchitectures();
  if (std::find(architectures.begin(), architectures.end(),
                input.sae_architecture) == architectures.end()) {
    return InvalidField("sae_architecture",
                        absl::StrCat("\"", input.sae_architecture,
                                     "\" is not supported (supported: ",
                                     absl::StrJoin(architectures, ", "), ")"));
  }
  if (input.layer < 0) return InvalidField("layer", "must be >= 0");
  if (input.context_length <= 0) {
    return InvalidField("context_length", "must be positive");
  }
  if (input.d_sae < 0) return InvalidField("d_sae", "must be >= 0");
  if (input.d_sae == 0 && input.expansion_factor <= 0) {
    return InvalidField("expansion_factor", "must be positive when d_sae is 0");
  }
  if (!std::isfinite(input.l1_coefficient) || input.l1_coefficient < 0) {
    return InvalidField("l1_coefficient", "must be finite and >= 0");
  }
  if (!std::isfinite(input.lr) || input.lr <= 0) {
    return InvalidField("lr", "must be finite and positive");
  }
  if (input.warmup_steps < 0) {
    return InvalidField("warmup_steps", "must be >= 0");
  }
  if (input.batch_size < 2) {
    // The loss normalises by the batch variance, undefined for one row.
    return InvalidField("batch_size", "must be at least 2");
  }
  if (input.train_tokens <= 0) {
    return InvalidField("train_tokens", "must be positive");
  }
  if (input.eval_tokens <= 0) {
    return InvalidField("eval_tokens", "must be positive");
  }
  if (input.dead_window_tokens < 0) {
    return InvalidField("dead_window_tokens", "must be >= 0");
  }
  if (input.adaptive_window_tokens < 0) {
    return InvalidField("adaptive_window_tokens", "must be >= 0");
  }
  if (!std::isfinite(input.adaptive_tolerance) ||
      input.adaptive_tolerance < 0) {
    return InvalidField("adaptive_tolerance", "must be finite and >= 0");
  }
  if (input.max_activation_set_bytes < 0) {
    return InvalidField("max_activation_set_bytes", "must be >= 0");
  }
  if (input.lm_eval_tokens < 0) {
    return InvalidField("lm_eval_tokens", "must be >= 0");
  }
  if (input.checkpoint_every_tokens < 0) {
    return InvalidField("checkpoint_every_tokens", "must be >= 0");
  }
  return absl::OkStatus();
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The smallest multiple of `every` above `tokens` (every > 0).
int64_t NextMultiple(int64_t tokens, int64_t every) {
  return every <= 0 ? 0 : (tokens / every + 1) * every;
}

// Identifies the training run a saved state belongs to: everything that
// shapes the trajectory of the weights.
std::string Fingerprint(const TrainInput& input) {
  uint32_t crc = format::Crc32c(input.init_sae_safetensors.value_or(""));
  const std::string fields = absl::StrCat(
      input.model_dir, "|", input.architecture, "|", input.layer, "|",
      input.site, "|", input.tokens_path, "|", input.token_dtype, "|",
      input.context_length, "|", input.sae_architecture, "|", input.k, "|",
      input.aux_k, "|", input.aux_coefficient, "|", input.d_sae, "|",
      input.expansion_factor, "|", input.l1_coefficient, "|", input.lr, "|",
      input.warmup_steps, "|", input.batch_size, "|", input.train_tokens, "|",
      input.dead_window_tokens, "|", input.ghost_grads, "|", input.seed, "|",
      input.max_activation_set_bytes, "|", crc);
  return absl::StrFormat("%08x-%08x", format::Crc32c(fields), crc);
}

// Convergence of one SAE: the held-out total loss measured every quarter
// window; a plateau when it improved by less than `tolerance` times its
// current value over the last full window.
class ConvergenceMonitor {
 public:
  ConvergenceMonitor(int64_t window_tokens, double tolerance)
      : window_(std::max<int64_t>(1, window_tokens)),
        every_(std::max<int64_t>(1, window_ / 4)),
        tolerance_(tolerance) {}

  bool Due(int64_t tokens) const { return tokens >= next_; }

  // Records the loss at `tokens`; true on a plateau.
  bool Plateaued(int64_t tokens, double loss) {
    next_ = tokens + every_;
    history_.emplace_back(tokens, loss);
    // The newest measurement at least a window old.
    std::optional<double> window_ago;
    for (const auto& [t, l] : history_) {
      if (t <= tokens - window_) window_ago = l;
    }
    plateaued_ = window_ago.has_value() &&
                 *window_ago - loss < tolerance_ * std::abs(loss);
    return plateaued_;
  }

  bool plateaued() const { return plateaued_; }
  const std::vector<std::pair<int64_t, double>>& history() const {
    return history_;
  }

 private:
  int64_t window_;
  int64_t every_;
  double tolerance_;
  int64_t next_ = 0;
  bool plateaued_ = false;
  std::vector<std::pair<int64_t, double>> history_;
};

// The activation set of a small corpus: every row in memory (on the
// trainer's device), served in a fresh random order every epoch.
class ActivationSet {
 public:
  ActivationSet(torch::Tensor rows, uint64_t seed) : rows_(std::move(rows)) {
    Reseed(seed);
  }

  int64_t rows() const { return rows_.size(0); }

  void Reseed(uint64_t seed) {
    generator_ = at::detail::createCPUGenerator(seed);
    Shuffle();
  }

  // The next batch of min(batch_size, rows) rows, a fresh tensor; an epoch's
  // last rows that do not fill a batch are skipped and a new epoch begins.
  torch::Tensor NextBatch(int64_t batch_size) {
    batch_size = std::min(batch_size, rows());
    if (next_ + batch_size > rows()) Shuffle();
    const torch::Tensor index = order_.narrow(0, next_, batch_size);
    next_ += batch_size;
    return rows_.index_select(0, index);
  }

  // Up to `max_rows` random rows (a copy), without consuming any.
  torch::Tensor Sample(int64_t max_rows) const {
    const int64_t n = std::min(max_rows, rows());
    return rows_.index_select(0, order_.narrow(0, 0, n));
  }

 private:
  void Shuffle() {
    order_ = torch::randperm(rows(), generator_, torch::dtype(torch::kInt64))
                 .to(rows_.device());
    next_ = 0;
  }

  torch::Tensor rows_;
  at::Generator generator_;
  torch::Tensor order_;
  int64_t next_ = 0;
};

// Non-overlapping training contexts that fit in the training split.
int64_t TiledContexts(const TokenSplit& split, int context_length) {
  return std::max<int64_t>(1, split.train_end / context_length);
}

// `count` distinct non-overlapping training contexts (start positions),
// chosen at random among TiledContexts for `seed`, in increasing order.
std::vector<int64_t> DistinctTrainContexts(const TokenSplit& split,
                                           int context_length, int64_t count,
                                           uint64_t seed) {
  const int64_t tiled = TiledContexts(split, context_length);
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const torch::Tensor chosen =
      std::get<0>(torch::randperm(tiled, generator, torch::kInt64)
                      .narrow(0, 0, std::min(count, tiled))
                      .sort());
  std::vector<int64_t> starts(chosen.numel());
  const int64_t* data = chosen.data_ptr<int64_t>();
  const int64_t last_start =
      std::max<int64_t>(0, split.train_end - context_length);
  for (size_t i = 0; i < starts.size(); ++i) {
    starts[i] = std::min(data[i] * context_length, last_start);
  }
  return starts;
}

// W_dec as a flat row-major float vector on the CPU.
std::vector<float> DecoderRows(const SaeWeights& weights) {
  const torch::Tensor rows =
      weights.W_dec.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(rows.data_ptr<float>(),
                            rows.data_ptr<float>() + rows.numel());
}

double MedianOf(std::vector<float> values) {
  if (values.empty()) return 0;
  std::nth_element(values.begin(), values.begin() + values.size() / 2,
                   values.end());
  return values[values.size() / 2];
}

// A training step whose loss is NaN or infinite has diverged: the SAE
// would be stored as NaN and the next checkpoint's initialised from it.
absl::Status CheckFinite(const SaeLoss& loss, const SaeTrainer& trainer,
                         const TrainInput& input, const char* which) {
  if (std::isfinite(loss.total)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "TrainInput.lr: training %s diverged at step %d (%d tokens): loss "
      "%g = reconstruction %g + sparsity %g + auxiliary %g; lr %g, "
      "l1_coefficient %g; nothing is stored",
      which, trainer.steps(), trainer.tokens(), loss.total, loss.reconstruction,
      loss.sparsity, loss.auxiliary, input.lr, input.l1_coefficient));
}

class TorchSaeTrainingEngine : public SaeTrainingEngine {
 public:
  TorchSaeTrainingEngine(torch::Device device, MatmulPrecision precision,
                         int64_t shared_activation_bytes)
      : device_(device),
        precision_(precision),
        shared_(shared_activation_bytes) {}

  absl::StatusOr<AnalysisOutput> Analyse(const AnalysisInput& input) override {
    return AnalyseCheckpoint(input, device_, &shared_);
  }

  absl::StatusOr<TrainOutput> Train(const TrainInput& input,
                                    const ProgressFn& progress) override {
    // No exception may cross the engine boundary.
    try {
      return TrainOrThrow(input, progress);
    } catch (const c10::Error& error) {
      return absl::InternalError(
          absl::StrCat("LibTorch error: ", error.what_without_backtrace()));
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError("out of memory while training SAE");
    } catch (const std::exception& error) {
      return absl::InternalError(absl::StrCat("engine error: ", error.what()));
    }
  }

 private:
  absl::StatusOr<TrainOutput> TrainOrThrow(const TrainInput& input,
                                           const ProgressFn& progress) {
    const auto start_time = std::chrono::steady_clock::now();
    SAETRACK_RETURN_IF_ERROR(ValidateInput(input));
    SAETRACK_ASSIGN_OR_RETURN(const HookSite site, ParseHookSite(input.site));
    SAETRACK_ASSIGN_OR_RETURN(const format::TokenDtype token_dtype,
                              format::ParseTokenDtype(input.token_dtype));
    SAETRACK_ASSIGN_OR_RETURN(const std::unique_ptr<LanguageModel> model,
                              LoadLanguageModel(input.model_dir, device_));
    const format::ModelConfig& config = model->config();
    if (config.architecture != input.architecture) {
      return InvalidField(
          "architecture",
          absl::StrCat("is \"", input.architecture, "\", but ", input.model_dir,
                       " holds a \"", config.architecture, "\" model"));
    }
    if (input.layer >= config.num_hidden_layers) {
      return InvalidField(
          "layer",
          absl::StrCat(input.layer, " is out of range: ", input.model_dir,
                       " has ", config.num_hidden_layers, " layers"));
    }
    if (input.context_length > config.max_position_embeddings) {
      return InvalidField(
          "context_length",
          absl::StrCat(input.context_length,
                       " exceeds the model's max_position_embeddings ",
                       config.max_position_embeddings));
    }
    const int64_t d_in = config.hidden_size;
    const int64_t d_sae =
        input.d_sae > 0 ? input.d_sae : int64_t{input.expansion_factor} * d_in;
    SAETRACK_ASSIGN_OR_RETURN(
        const format::TokenFile tokens,
        format::TokenFile::Open(input.tokens_path, token_dtype));
    absl::StatusOr<TokenSplit> split =
        SplitTokens(tokens.size(), input.context_length);
    if (!split.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(input.tokens_path, ": ", split.status().message()));
    }
    TrainOutput output;
    const HookPoint hook{input.layer, site};
    const int context_length = input.context_length;
    const int64_t contexts_per_forward =
        std::max<int64_t>(1, kTokensPerForward / context_length);

    // Held-out activations: the same positions for every checkpoint.
    const std::vector<int64_t> eval_starts = HeldOutContexts(
        *split, context_length, CeilDiv(input.eval_tokens, context_length));
    SAETRACK_ASSIGN_OR_RETURN(
        const torch::Tensor eval_contexts,
        GatherContexts(tokens, eval_starts, context_length, config.vocab_size));
    SAETRACK_ASSIGN_OR_RETURN(
        const std::vector<HookPoint> job_hooks,
        ParseJobHooks(input.job_hooks, config.num_hidden_layers,
                      "TrainInput.job_hooks"));
    const std::string scope =
        ActivationScope(input.model_dir, input.tokens_path, input.token_dtype,
                        input.context_length);
    const int64_t hits_before = shared_.hits();
    const torch::Tensor eval_activations = shared_.Take(
        scope, absl::StrCat("heldout:", eval_starts.size()), *model,
        eval_contexts, hook, job_hooks, contexts_per_forward, device_);
    if (!torch::isfinite(eval_activations).all().item<bool>()) {
      return absl::DataLossError(absl::StrCat(
          input.model_dir, ": the activations at layer ", input.layer, " ",
          input.site,
          " are NaN or infinite on held-out tokens (weights too large for "
          "float32?); nothing is trained on them"));
    }

    // Training activations: a small corpus once, in memory, reused over
    // epochs; a large one streamed through a shuffling buffer.
    const int64_t wanted_contexts = CeilDiv(input.train_tokens, context_length);
    const int64_t distinct_contexts =
        std::min(wanted_contexts, TiledContexts(*split, context_length));
    const bool in_memory =
        distinct_contexts * context_length * d_in * int64_t{sizeof(float)} <=
        input.max_activation_set_bytes;
    std::optional<ActivationSet> activation_set;
    std::optional<ActivationStream> stream;
    ActivationStreamOptions stream_options;
    // No bigger than the whole training set, so small jobs allocate little.
    stream_options.buffer_rows = std::max<int64_t>(
        input.batch_size,
        std::min(wanted_contexts * context_length,
                 kActivationBufferBytes / (d_in * int64_t{sizeof(float)})));
    stream_options.refill_fraction = kActivationRefillFraction;
    stream_options.seed = input.seed ^ 0x5AE7AC4ULL;
    stream_options.device = device_;
    torch::Tensor sample;
    if (in_memory) {
      SAETRACK_ASSIGN_OR_RETURN(
          const torch::Tensor contexts,
          GatherContexts(tokens,
                         DistinctTrainContexts(*split, context_length,
                                               distinct_contexts, input.seed),
                         context_length, config.vocab_size));
      // The contexts depend on the seed and the budget, not on the hook:
      // every hook of this checkpoint's tasks trains on the same ones.
      activation_set.emplace(
          shared_.Take(
              scope, absl::StrCat("train:", distinct_contexts, ":", input.seed),
              *model, contexts, hook, job_hooks, contexts_per_forward, device_),
          input.seed ^ 0x5AE7AC4ULL);
      sample = activation_set->Sample(kScaleSample);
      output.distinct_tokens = activation_set->rows();
    } else {
      SAETRACK_ASSIGN_OR_RETURN(
          stream, ActivationStream::Create(
                      ContextActivationSource(
                          *model, tokens,
                          SampleTrainContexts(*split, context_length,
                                              wanted_contexts, input.seed),
                          context_length, hook, contexts_per_forward, device_),
                      stream_options));
      SAETRACK_ASSIGN_OR_RETURN(sample, stream->Peek(kScaleSample));
      // Contexts drawn with replacement: distinct tokens are at most the
      // training split's.
      output.distinct_tokens =
          std::min(wanted_contexts * context_length, split->train_end);
    }
    output.shared_activation_sets =
        static_cast<int>(shared_.hits() - hits_before);
    // The SAE trains on s·x with E||s·x|| = sqrt(d_in) (DESIGN.md §3).
    const double scale = ActivationScale(sample);
    output.activation_scale = scale;
    const torch::Tensor eval_normalised = eval_activations * scale;
    // The next training batch in normalised coordinates, from the activation
    // set or the stream; undefined once the stream ends (the last batch may
    // be smaller, and one row has no batch variance).
    const auto next_batch = [&]() -> absl::StatusOr<torch::Tensor> {
      torch::Tensor batch;
      if (activation_set.has_value()) {
        batch = activation_set->NextBatch(input.batch_size);
      } else {
        SAETRACK_ASSIGN_OR_RETURN(batch, stream->NextBatch(input.batch_size));
      }
      if (!batch.defined() || batch.size(0) < 2) return torch::Tensor();
      return batch.mul_(scale);
    };
    // The LM with `sae` (on raw activations) spliced in at the hook, on a
    // prefix of the held-out contexts.
    const auto splice_evaluation =
        [&](const Sae& spliced) -> absl::StatusOr<LmEvaluation> {
      const torch::Tensor lm_contexts = eval_contexts.narrow(
          0, 0,
          std::min<int64_t>(eval_contexts.size(0),
                            CeilDiv(input.lm_eval_tokens, context_length)));
      return EvaluateWithSplice(
          *model, lm_contexts, hook,
          [&spliced](const torch::Tensor& x) { return spliced.Reconstruct(x); },
          contexts_per_forward);
    };

    // The SAE, in normalised coordinates: from the previous one of the chain
    // (stored folded into its own checkpoint's raw coordinates), or from
    // scratch.
    SaeWeights weights;
    if (input.init_sae_safetensors.has_value()) {
      SAETRACK_ASSIGN_OR_RETURN(
          weights, SaeFromSafetensors(*input.init_sae_safetensors, device_));
      if (weights.d_in() != d_in || weights.d_sae() != d_sae) {
        return InvalidField(
            "init_sae_safetensors",
            absl::StrCat("has d_in ", weights.d_in(), " and d_sae ",
                         weights.d_sae(), ", but this task needs d_in ", d_in,
                         " (hidden_size of ", input.model_dir, ") and d_sae ",
                         d_sae));
      }
      weights = UnfoldActivationScale(weights, ActivationScaleOf(weights));
    } else {
      weights = InitSaeFromScratch(
          d_sae,
          sample.narrow(
              0, 0, std::min<int64_t>(sample.size(0), kGeometricMedianSample)) *
              scale,
          input.seed);
    }
    const SaeWeights init_weights = weights.Clone();
    SaeSpec spec;
    spec.architecture = input.sae_architecture;
    spec.l1_coefficient = input.l1_coefficient;
    spec.k = input.k;
    spec.aux_k = input.aux_k;
    spec.aux_coefficient = input.aux_coefficient;
    absl::StatusOr<std::unique_ptr<Sae>> made =
        MakeSae(spec, std::move(weights), precision_);
    if (!made.ok()) {
      // SaeSpec.<field> is TrainInput.<field> here.
      return absl::InvalidArgumentError(
          absl::StrCat("TrainInput.",
                       absl::StripPrefix(made.status().message(), "SaeSpec.")));
    }
    Sae& sae = **made;

    output.d_in = static_cast<int>(d_in);
    output.d_sae = static_cast<int>(d_sae);

    SaeTrainerOptions trainer_options;
    trainer_options.lr = input.lr;
    trainer_options.warmup_steps = input.warmup_steps;
    trainer_options.dead_window_tokens =
        input.dead_window_tokens > 0
            ? input.dead_window_tokens
            : std::max<int64_t>(input.batch_size, input.train_tokens / 10);
    trainer_options.ghost_grads = input.ghost_grads;
    SaeTrainer trainer(&sae, trainer_options);

    // Resume from a saved state of this very input, if there is one.
    const std::string fingerprint = Fingerprint(input);
    const std::string state_path =
        input.state_dir.empty()
            ? std::string()
            : absl::StrCat(input.state_dir, "/trainer_state.safetensors");
    std::optional<double> resumed_init_fvu;
    if (!state_path.empty()) {
      SAETRACK_ASSIGN_OR_RETURN(resumed_init_fvu,
                                MaybeResume(state_path, fingerprint, trainer));
    }
    output.init_fvu = resumed_init_fvu.has_value()
                          ? *resumed_init_fvu
                          : HeldOutFvu(sae, eval_normalised);
    output.resumed_from_tokens = trainer.tokens();
    if (trainer.tokens() > 0) {
      if (activation_set.has_value()) {
        // A fresh order of the same rows from where the state was saved.
        activation_set->Reseed(input.seed ^
                               static_cast<uint64_t>(trainer.tokens()));
      } else {
        // A fresh sample of the contexts still to train on: the saved state
        // does not record the stream's position, and any unseen sample of
        // the training split is as good as the one the interrupted run would
        // have drawn.
        const int64_t remaining = std::max<int64_t>(
            0, wanted_contexts - CeilDiv(trainer.tokens(), context_length));
        SAETRACK_ASSIGN_OR_RETURN(
            stream,
            ActivationStream::Create(
                ContextActivationSource(
                    *model, tokens,
                    SampleTrainContexts(
                        *split, context_length, remaining,
                        input.seed ^ static_cast<uint64_t>(trainer.tokens())),
                    context_length, hook, contexts_per_forward, device_),
                stream_options));
      }
    }

    // Convergence: the held-out total loss on a prefix of the held-out
    // activations, watched over a window (the adaptive window, or a quarter
    // of the budget when the budget is fixed).
    const bool adaptive = input.adaptive_window_tokens > 0;
    ConvergenceMonitor monitor(
        adaptive ? input.adaptive_window_tokens
                 : std::max<int64_t>(input.batch_size, input.train_tokens / 4),
        input.adaptive_tolerance);
    const torch::Tensor monitor_activations = eval_normalised.narrow(
        0, 0, std::min<int64_t>(eval_normalised.size(0), kAdaptiveEvalRows));
    const auto held_out_loss = [&] {
      return sae.Loss(monitor_activations).total;
    };
    int64_t next_save =
        NextMultiple(trainer.tokens(), input.checkpoint_every_tokens);
    double last_loss = 0;
    while (trainer.tokens() < input.train_tokens) {
      SAETRACK_ASSIGN_OR_RETURN(const torch::Tensor batch, next_batch());
      if (!batch.defined()) break;
      const SaeLoss step_loss = trainer.Step(batch);
      last_loss = step_loss.total;
      SAETRACK_RETURN_IF_ERROR(
          CheckFinite(step_loss, trainer, input, "the chain's SAE"));
      if (!state_path.empty() && input.checkpoint_every_tokens > 0 &&
          trainer.tokens() >= next_save) {
        SAETRACK_RETURN_IF_ERROR(
            SaveState(state_path, fingerprint, output.init_fvu, trainer));
        next_save =
            NextMultiple(trainer.tokens(), input.checkpoint_every_tokens);
      }
      if (monitor.Due(trainer.tokens()) &&
          monitor.Plateaued(trainer.tokens(), held_out_loss()) && adaptive) {
        output.stopped_early = true;
        break;
      }
      if (trainer.steps() % kProgressEverySteps == 0 && progress &&
          !progress(trainer.tokens(), last_loss)) {
        return absl::CancelledError(absl::StrCat(
            "SAE training cancelled after ", trainer.tokens(), " tokens"));
      }
    }
    output.tokens_trained = trainer.tokens();
    if (progress && !progress(trainer.tokens(), last_loss)) {
      return absl::CancelledError(absl::StrCat("SAE training cancelled after ",
                                               trainer.tokens(), " tokens"));
    }
    if (!output.stopped_early) {
      monitor.Plateaued(trainer.tokens(), held_out_loss());
    }
    output.converged = monitor.plateaued();
    output.loss_curve = monitor.history();
    output.held_out_loss = held_out_loss();
    output.epochs =
        output.distinct_tokens > 0
            ? static_cast<double>(trainer.tokens()) / output.distinct_tokens
            : 0;
    output.features.decoder_cos_init =
        DecoderCosines(sae.weights(), init_weights);
    output.median_decoder_cos_init = MedianOf(output.features.decoder_cos_init);

    // From here on the SAE works on raw activations.
    sae.mutable_weights() = FoldActivationScale(sae.weights(), scale);
    const SaeEvaluation evaluation = EvaluateSae(sae, eval_activations);
    output.mse = evaluation.mse;
    output.fvu = evaluation.fvu;
    output.l0 = evaluation.l0;
    output.dead_fraction = evaluation.dead_fraction;
    output.density_histogram = DensityHistogram(evaluation.frequency);
    output.features.frequency = evaluation.frequency;
    output.features.mean_activation = evaluation.mean_activation;
    output.features.max_activation = evaluation.max_activation;
    output.features.encoder_norm = evaluation.encoder_norm;
    if (input.init_sae_safetensors.has_value()) {
      output.features.decoder_cos_prev = output.features.decoder_cos_init;
    }
    if (input.lm_eval_tokens > 0) {
      SAETRACK_ASSIGN_OR_RETURN(output.lm, splice_evaluation(sae));
    }
    if (input.reference_check) {
      // The independent SAE: from scratch with another seed, the first SAE's
      // recipe, the same activations and normalisation, a fresh order. The
      // recurrent arms of the speed-up measurement see the same batches again
      // from the first.
      const auto start_reference_batches = [&]() -> absl::Status {
        if (activation_set.has_value()) {
          activation_set->Reseed(input.reference_seed ^ 0x5AE7AC4ULL);
          return absl::OkStatus();
        }
        ActivationStreamOptions options = stream_options;
        options.seed = input.reference_seed ^ 0x5AE7AC4ULL;
        SAETRACK_ASSIGN_OR_RETURN(
            stream,
            ActivationStream::Create(
                ContextActivationSource(
                    *model, tokens,
                    SampleTrainContexts(
                        *split, context_length,
                        CeilDiv(input.reference_train_tokens, context_length),
                        input.reference_seed),
                    context_length, hook, contexts_per_forward, device_),
                options));
        return absl::OkStatus();
      };
      SAETRACK_RETURN_IF_ERROR(start_reference_batches());
      torch::Tensor reference_sample;
      if (activation_set.has_value()) {
        reference_sample = activation_set->Sample(kGeometricMedianSample);
      } else {
        SAETRACK_ASSIGN_OR_RETURN(reference_sample,
                                  stream->Peek(kGeometricMedianSample));
      }
      const SaeWeights reference_init = InitSaeFromScratch(
          d_sae, reference_sample * scale, input.reference_seed);
      SAETRACK_ASSIGN_OR_RETURN(
          std::unique_ptr<Sae> reference,
          MakeSae(spec, reference_init.Clone(), precision_));
      ArmOptions reference_arm;
      reference_arm.trainer = trainer_options;
      reference_arm.trainer.lr = input.reference_lr;
      reference_arm.trainer.warmup_steps = input.reference_warmup_steps;
      reference_arm.trainer.dead_window_tokens =
          input.dead_window_tokens > 0
              ? input.dead_window_tokens
              : std::max<int64_t>(input.batch_size,
                                  input.reference_train_tokens / 10);
      reference_arm.trainer.ghost_grads = input.sae_architecture == "relu_l1";
      reference_arm.batch_size = input.batch_size;
      reference_arm.max_tokens = input.reference_train_tokens;
      ConvergenceMonitor reference_monitor(
          std::max<int64_t>(input.batch_size, input.reference_train_tokens / 4),
          input.adaptive_tolerance);
      const auto reference_loss = [&] {
        return reference->Loss(monitor_activations).total;
      };
      // Progress (the chain's tokens, which do not move) and cancellation.
      const auto keep_going = [&](const SaeTrainer& t,
                                  const SaeLoss& loss) -> absl::Status {
        SAETRACK_RETURN_IF_ERROR(
            CheckFinite(loss, t, input, "the independent reference SAE"));
        if (t.steps() % kProgressEverySteps == 0 && progress &&
            !progress(trainer.tokens(), loss.total)) {
          return absl::CancelledError(
              absl::StrCat("reference SAE training cancelled after ",
                           t.tokens(), " tokens"));
        }
        return absl::OkStatus();
      };
      SAETRACK_ASSIGN_OR_RETURN(
          const ArmRun reference_run,
          TrainArm(*reference, reference_arm, next_batch, monitor_activations,
                   [&](const SaeTrainer& t, const SaeLoss& loss) {
                     if (reference_monitor.Due(t.tokens())) {
                       reference_monitor.Plateaued(t.tokens(),
                                                   reference_loss());
                     }
                     return keep_going(t, loss);
                   }));
      // The speed-up of recurrent initialisation (DESIGN.md §3): the chain's
      // initialisation trained with the independent SAE's schedule and
      // batches, and again at a tenth of its learning rate.
      std::optional<analysis::RecurrenceSpeedup> speedup;
      if (input.init_sae_safetensors.has_value()) {
        speedup =
            analysis::SpeedupTarget(reference_run.curve, reference_run.l0,
                                    input.speedup_tolerance, input.batch_size);
        for (const auto& [arm, lr] :
             {std::pair{&speedup->same_lr, input.reference_lr},
              std::pair{&speedup->slow_lr, input.reference_lr / 10}}) {
          SAETRACK_RETURN_IF_ERROR(start_reference_batches());
          SAETRACK_ASSIGN_OR_RETURN(
              *arm, TrainRecurrentArm(spec, precision_, init_weights,
                                      reference_arm, lr, *speedup, next_batch,
                                      monitor_activations, keep_going));
        }
      }
      ReferenceCheck& check = output.reference.emplace();
      check.seed = input.reference_seed;
      check.tokens_trained = reference_run.tokens;
      check.converged =
          reference_monitor.Plateaued(reference_run.tokens, reference_loss());
      check.speedup = std::move(speedup);
      check.held_out_loss = reference_loss();
      check.median_decoder_cos_init =
          MedianOf(DecoderCosines(reference->weights(), reference_init));
      // The independent SAE's dictionary against the chain's, and two random
      // ones against each other (the chance level), matched alike.
      SAETRACK_ASSIGN_OR_RETURN(
          const analysis::DictionaryMatch match,
          analysis::MatchDictionaries(DecoderRows(sae.weights()),
                                      DecoderRows(reference->weights()),
                                      static_cast<int>(d_in)));
      check.matched = match.matched;
      check.match_method = match.method;
      check.match_median_cosine = match.median_cosine;
      check.match_fraction_above_0_9 = match.fraction_above_0_9;
      check.match_fraction_above_0_7 = match.fraction_above_0_7;
      SAETRACK_ASSIGN_OR_RETURN(
          const analysis::DictionaryMatch chance,
          analysis::MatchDictionaries(
              DecoderRows(reference_init),
              DecoderRows(InitSaeFromScratch(d_sae, reference_sample * scale,
                                             input.reference_seed + 1)),
              static_cast<int>(d_in)));
      check.random_median_cosine = chance.median_cosine;
      check.random_fraction_above_0_9 = chance.fraction_above_0_9;
      reference->mutable_weights() =
          FoldActivationScale(reference->weights(), scale);
      const SaeEvaluation reference_evaluation =
          EvaluateSae(*reference, eval_activations);
      check.fvu = reference_evaluation.fvu;
      check.l0 = reference_evaluation.l0;
      check.dead_fraction = reference_evaluation.dead_fraction;
      if (input.lm_eval_tokens > 0) {
        SAETRACK_ASSIGN_OR_RETURN(const LmEvaluation lm,
                                  splice_evaluation(*reference));
        check.loss_recovered = lm.loss_recovered;
      }
    }
    output.sae_safetensors = SaeToSafetensors(sae.weights());
    output.wall_time_s = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - start_time)
                             .count();
    return output;
  }

  // Restores `trainer` from the state at `path` when it was saved for the
  // same input; returns the initial FVU it recorded, or nullopt (nothing
  // restored) when there is no such state.
  static absl::StatusOr<std::optional<double>> MaybeResume(
      const std::string& path, const std::string& fingerprint,
      SaeTrainer& trainer) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::optional<double>();
    std::string bytes((std::istreambuf_iterator<char>(in)),
                      std::istreambuf_iterator<char>());
    std::map<std::string, std::string> metadata;
    // A state from another input (or a torn file) is not an error: the task
    // simply starts over and overwrites it.
    absl::StatusOr<format::SafetensorsFile> file =
        format::SafetensorsFile::FromBytes(bytes, path);
    if (!file.ok()) return std::optional<double>();
    auto it = file->metadata().find(kFingerprintKey);
    if (it == file->metadata().end() || it->second != fingerprint) {
      return std::optional<double>();
    }
    double init_fvu = 0;
    auto fvu_it = file->metadata().find(kInitFvuKey);
    if (fvu_it == file->metadata().end() ||
        !absl::SimpleAtod(fvu_it->second, &init_fvu)) {
      return std::optional<double>();
    }
    if (!trainer.RestoreState(std::move(bytes), &metadata).ok()) {
      return std::optional<double>();
    }
    return std::optional<double>(init_fvu);
  }

  // Writes the trainer's state atomically (temporary file, then rename).
  static absl::Status SaveState(const std::string& path,
                                const std::string& fingerprint, double init_fvu,
                                const SaeTrainer& trainer) {
    const std::string state =
        trainer.SaveState({{kFingerprintKey, fingerprint},
                           {kInitFvuKey, absl::StrFormat("%.17g", init_fvu)}});
    std::error_code error;
    std::filesystem::create_directories(
        std::filesystem::path(path).parent_path(), error);
    const std::string temporary = absl::StrCat(path, ".tmp");
    {
      std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
      out.write(state.data(), static_cast<std::streamsize>(state.size()));
      out.flush();
      if (!out) {
        return absl::UnavailableError(
            absl::StrCat("cannot write training state ", temporary));
      }
    }
    std::filesystem::rename(temporary, path, error);
    if (error) {
      return absl::UnavailableError(absl::StrCat(
          "cannot rename training state to ", path, ": ", error.message()));
    }
    return absl::OkStatus();
  }

  torch::Device device_;
  MatmulPrecision precision_;
  // The other hooks' activations of the checkpoint last worked on.
  ActivationCache shared_;
};

absl::StatusOr<torch::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "EngineOptions.device \"", name,
          "\": CUDA is not available (CPU-only LibTorch or no GPU)"));
    }
    try {
      return torch::Device(name);
    } catch (const c10::Error& error) {
      return absl::InvalidArgumentError(
          absl::StrCat("EngineOptions.device \"", name,
                       "\": ", error.what_without_backtrace()));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "EngineOptions.device \"", name, "\" is not \"cpu\" or \"cuda\""));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SaeTrainingEngine>> NewTorchEngine(
    const EngineOptions& options) {
  if (options.threads < 0) {
    return absl::InvalidArgumentError("EngineOptions.threads must be >= 0");
  }
  SAETRACK_ASSIGN_OR_RETURN(const torch::Device device,
                            ParseDevice(options.device));
  MatmulPrecision precision;
  if (options.matmul_precision == "fp32") {
    precision = MatmulPrecision::kFp32;
  } else if (options.matmul_precision == "bf16") {
    precision = MatmulPrecision::kBf16;
  } else if (options.matmul_precision == "auto" ||
             options.matmul_precision.empty()) {
    precision =
        device.is_cuda() ? MatmulPrecision::kBf16 : MatmulPrecision::kFp32;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "EngineOptions.matmul_precision \"", options.matmul_precision,
        "\" is not \"auto\", \"fp32\" or \"bf16\""));
  }
  if (options.threads > 0) torch::set_num_threads(options.threads);
  return std::unique_ptr<SaeTrainingEngine>(
      std::make_unique<TorchSaeTrainingEngine>(
          device, precision, options.shared_activation_bytes));
}

}  // namespace saetrack::engine
