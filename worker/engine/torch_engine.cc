// NewTorchEngine: the LibTorch implementation of SaeTrainingEngine.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/activation_stream.h"
#include "worker/engine/activations.h"
#include "worker/engine/language_model.h"
#include "worker/engine/sae.h"
#include "worker/engine/training_engine.h"
#include "worker/format/internal/status_macros.h"
#include "worker/format/token_file.h"

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
// Steps between progress callbacks.
constexpr int64_t kProgressEverySteps = 16;

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
  if (input.sae_architecture != "relu_l1") {
    return InvalidField("sae_architecture",
                        absl::StrCat("\"", input.sae_architecture,
                                     "\" is not supported (supported: "
                                     "\"relu_l1\")"));
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
  return absl::OkStatus();
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

class TorchSaeTrainingEngine : public SaeTrainingEngine {
 public:
  explicit TorchSaeTrainingEngine(torch::Device device) : device_(device) {}

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
    const torch::Tensor eval_activations = CollectActivations(
        *model, eval_contexts, hook, contexts_per_forward, device_);

    // Training contexts, streamed through a shuffling buffer.
    const int64_t train_contexts = CeilDiv(input.train_tokens, context_length);
    ActivationStreamOptions stream_options;
    // No bigger than the whole training set, so small jobs allocate little.
    stream_options.buffer_rows = std::max<int64_t>(
        input.batch_size,
        std::min(train_contexts * context_length,
                 kActivationBufferBytes / (d_in * int64_t{sizeof(float)})));
    stream_options.refill_fraction = kActivationRefillFraction;
    stream_options.seed = input.seed ^ 0x5AE7AC4ULL;
    stream_options.device = device_;
    SAETRACK_ASSIGN_OR_RETURN(
        ActivationStream stream,
        ActivationStream::Create(
            ContextActivationSource(
                *model, tokens,
                SampleTrainContexts(*split, context_length, train_contexts,
                                    input.seed),
                context_length, hook, contexts_per_forward, device_),
            stream_options));

    // The SAE: from the previous one of the chain, or from scratch.
    ReluSae sae;
    std::optional<ReluSae> init_sae;
    if (input.init_sae_safetensors.has_value()) {
      SAETRACK_ASSIGN_OR_RETURN(
          sae, SaeFromSafetensors(*input.init_sae_safetensors, device_));
      if (sae.d_in() != d_in || sae.d_sae() != d_sae) {
        return InvalidField(
            "init_sae_safetensors",
            absl::StrCat("has d_in ", sae.d_in(), " and d_sae ", sae.d_sae(),
                         ", but this task needs d_in ", d_in,
                         " (hidden_size "
                         "of ",
                         input.model_dir, ") and d_sae ", d_sae));
      }
      init_sae = sae.Clone();
    } else {
      SAETRACK_ASSIGN_OR_RETURN(const torch::Tensor sample,
                                stream.Peek(kGeometricMedianSample));
      sae = InitSaeFromScratch(d_sae, sample, input.seed);
    }

    TrainOutput output;
    output.d_in = static_cast<int>(d_in);
    output.d_sae = static_cast<int>(d_sae);
    output.init_fvu = EvaluateSae(sae, eval_activations).fvu;

    SaeTrainerOptions trainer_options;
    trainer_options.l1_coefficient = input.l1_coefficient;
    trainer_options.lr = input.lr;
    trainer_options.warmup_steps = input.warmup_steps;
    {
      SaeTrainer trainer(&sae, trainer_options);
      double last_loss = 0;
      int64_t tokens_done = 0;
      while (true) {
        SAETRACK_ASSIGN_OR_RETURN(const torch::Tensor batch,
                                  stream.NextBatch(input.batch_size));
        // The last batch may be smaller; one row has no batch variance.
        if (!batch.defined() || batch.size(0) < 2) break;
        last_loss = trainer.Step(batch).total.item<double>();
        tokens_done += batch.size(0);
        if (trainer.steps() % kProgressEverySteps == 0 && progress &&
            !progress(tokens_done, last_loss)) {
          return absl::CancelledError(absl::StrCat(
              "SAE training cancelled after ", tokens_done, " tokens"));
        }
      }
      output.tokens_trained = tokens_done;
      if (progress && !progress(tokens_done, last_loss)) {
        return absl::CancelledError(absl::StrCat(
            "SAE training cancelled after ", tokens_done, " tokens"));
      }
    }

    const SaeEvaluation evaluation = EvaluateSae(sae, eval_activations);
    output.mse = evaluation.mse;
    output.fvu = evaluation.fvu;
    output.l0 = evaluation.l0;
    output.dead_fraction = evaluation.dead_fraction;
    output.features.frequency = evaluation.frequency;
    output.features.mean_activation = evaluation.mean_activation;
    output.features.max_activation = evaluation.max_activation;
    output.features.encoder_norm = evaluation.encoder_norm;
    if (init_sae.has_value()) {
      output.features.decoder_cos_prev = DecoderCosines(sae, *init_sae);
    }
    output.sae_safetensors = SaeToSafetensors(sae);
    output.wall_time_s = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - start_time)
                             .count();
    return output;
  }

  torch::Device device_;
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
  if (options.threads > 0) torch::set_num_threads(options.threads);
  return std::unique_ptr<SaeTrainingEngine>(
      std::make_unique<TorchSaeTrainingEngine>(device));
}

}  // namespace saetrack::engine
