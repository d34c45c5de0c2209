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
#include "worker/engine/activations.h"
#include "worker/engine/gpt_neox.h"
#include "worker/engine/sae.h"
#include "worker/engine/training_engine.h"
#include "worker/format/internal/status_macros.h"
#include "worker/format/token_file.h"

namespace saetrack::engine {
namespace {

// Tokens per LM forward pass: large enough for efficient GEMMs, small enough
// that attention scores of a big model fit comfortably.
constexpr int64_t kTokensPerForward = 8192;
// Upper bound on the training activations held at once; they are collected in
// buffers of this size, shuffled, and consumed batch by batch.
constexpr int64_t kActivationBufferBytes = int64_t{256} << 20;
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
  if (input.architecture != "gpt_neox") {
    return InvalidField("architecture",
                        absl::StrCat("\"", input.architecture,
                                     "\" is not supported (supported: "
                                     "\"gpt_neox\")"));
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
    SAETRACK_ASSIGN_OR_RETURN(const GptNeoxModel model,
                              GptNeoxModel::Load(input.model_dir, device_));
    const format::ModelConfig& config = model.config();
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
        model, eval_contexts, hook, contexts_per_forward, device_);

    // Training contexts, consumed in shuffled buffers.
    const int64_t train_contexts = CeilDiv(input.train_tokens, context_length);
    const std::vector<int64_t> train_starts =
        SampleTrainContexts(*split, context_length, train_contexts, input.seed);
    const int64_t buffer_contexts = std::max<int64_t>(
        CeilDiv(input.batch_size, context_length),
        kActivationBufferBytes /
            (int64_t{context_length} * d_in * int64_t{sizeof(float)}));
    at::Generator shuffle_generator =
        at::detail::createCPUGenerator(input.seed ^ 0x5AE7AC4ULL);
    int64_t next_context = 0;
    // Returns the next buffer of shuffled activations, or an undefined
    // tensor when all training contexts are used.
    auto next_buffer = [&]() -> absl::StatusOr<torch::Tensor> {
      if (next_context >= train_contexts) return torch::Tensor();
      const int64_t count =
          std::min(buffer_contexts, train_contexts - next_context);
      const std::vector<int64_t> starts(
          train_starts.begin() + next_context,
          train_starts.begin() + next_context + count);
      next_context += count;
      SAETRACK_ASSIGN_OR_RETURN(
          const torch::Tensor contexts,
          GatherContexts(tokens, starts, context_length, config.vocab_size));
      const torch::Tensor activations = CollectActivations(
          model, contexts, hook, contexts_per_forward, device_);
      const torch::Tensor order =
          torch::randperm(activations.size(0), shuffle_generator, torch::kInt64)
              .to(device_);
      return activations.index_select(0, order);
    };
    SAETRACK_ASSIGN_OR_RETURN(torch::Tensor buffer, next_buffer());

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
      const torch::Tensor sample = buffer.narrow(
          0, 0, std::min<int64_t>(kGeometricMedianSample, buffer.size(0)));
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
      torch::Tensor pending;  // rows not yet trained on
      double last_loss = 0;
      int64_t tokens_done = 0;
      auto train_batch = [&](const torch::Tensor& batch) -> absl::Status {
        last_loss = trainer.Step(batch).total.item<double>();
        tokens_done += batch.size(0);
        if (trainer.steps() % kProgressEverySteps == 0 && progress &&
            !progress(tokens_done, last_loss)) {
          return absl::CancelledError(absl::StrCat(
              "SAE training cancelled after ", tokens_done, " tokens"));
        }
        return absl::OkStatus();
      };
      while (buffer.defined()) {
        pending = pending.defined() ? torch::cat({pending, buffer}) : buffer;
        const int64_t full_batches = pending.size(0) / input.batch_size;
        for (int64_t b = 0; b < full_batches; ++b) {
          SAETRACK_RETURN_IF_ERROR(train_batch(
              pending.narrow(0, b * input.batch_size, input.batch_size)));
        }
        pending =
            pending.narrow(0, full_batches * input.batch_size,
                           pending.size(0) - full_batches * input.batch_size);
        SAETRACK_ASSIGN_OR_RETURN(buffer, next_buffer());
      }
      // The remainder is a smaller last batch; one row has no batch variance.
      if (pending.defined() && pending.size(0) >= 2) {
        SAETRACK_RETURN_IF_ERROR(train_batch(pending));
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
