#include "engine/recurrence/recurrence_study.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "engine/sae/sae_trainer.h"
#include "base/status_macros.h"

namespace saetrack::engine {
namespace {

// Rows of `train` whose geometric median initialises the scratch SAE's b_dec
// (as the worker's kGeometricMedianSample).
constexpr int64_t kGeometricMedianSample = 4096;

using Curve = std::vector<std::pair<int64_t, double>>;

absl::Status InvalidOption(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("TokensToFvuOptions.", field, " ", what));
}

absl::Status CheckLearningRate(absl::string_view field, double lr) {
  if (!std::isfinite(lr) || lr <= 0) {
    return InvalidOption(field, absl::StrCat(lr, " must be finite and > 0"));
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const TokensToFvuOptions& options) {
  if (options.d_sae <= 0) {
    return InvalidOption("d_sae", absl::StrCat(options.d_sae, " must be > 0"));
  }
  // One row has no batch variance, so the normalised loss is undefined.
  if (options.batch_size < 2) {
    return InvalidOption("batch_size",
                         absl::StrCat(options.batch_size, " must be >= 2"));
  }
  SAETRACK_RETURN_IF_ERROR(CheckLearningRate("lr_scratch", options.lr_scratch));
  SAETRACK_RETURN_IF_ERROR(
      CheckLearningRate("lr_recurrent", options.lr_recurrent));
  if (options.warmup_scratch < 0) {
    return InvalidOption("warmup_scratch",
                         absl::StrCat(options.warmup_scratch, " must be >= 0"));
  }
  if (options.warmup_recurrent < 0) {
    return InvalidOption(
        "warmup_recurrent",
        absl::StrCat(options.warmup_recurrent, " must be >= 0"));
  }
  if (options.scratch_tokens <= 0) {
    return InvalidOption("scratch_tokens",
                         absl::StrCat(options.scratch_tokens, " must be > 0"));
  }
  if (options.eval_every_tokens <= 0) {
    return InvalidOption(
        "eval_every_tokens",
        absl::StrCat(options.eval_every_tokens, " must be > 0"));
  }
  return absl::OkStatus();
}

absl::Status ValidateActivations(const torch::Tensor& train,
                                 const torch::Tensor& held_out) {
  if (!train.defined() || train.dim() != 2 || train.size(0) < 2) {
    return absl::InvalidArgumentError(
        "train must be a 2-D tensor [n >= 2, d_in]");
  }
  if (!held_out.defined() || held_out.dim() != 2 || held_out.size(0) < 1) {
    return absl::InvalidArgumentError(
        "held_out must be a 2-D tensor [n >= 1, d_in]");
  }
  if (held_out.size(1) != train.size(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("held_out has d_in ", held_out.size(1), " but train has ",
                     train.size(1)));
  }
  return absl::OkStatus();
}

// MakeSae's errors name "SaeSpec.<field>"; here that is the spec field of
// the options.
absl::StatusOr<std::unique_ptr<Sae>> MakeStudySae(const SaeSpec& spec,
                                                  SaeWeights weights) {
  absl::StatusOr<std::unique_ptr<Sae>> sae = MakeSae(spec, std::move(weights));
  if (!sae.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TokensToFvuOptions.spec.",
                     absl::StripPrefix(sae.status().message(), "SaeSpec.")));
  }
  return sae;
}

// The rows of `data` in order, wrapping around at the end.
class RowCursor {
 public:
  explicit RowCursor(const torch::Tensor& data) : data_(data) {}

  torch::Tensor Next(int64_t rows) {
    const int64_t n = data_.size(0);
    std::vector<torch::Tensor> parts;
    while (rows > 0) {
      const int64_t take = std::min(rows, n - position_);
      parts.push_back(data_.narrow(0, position_, take));
      position_ = (position_ + take) % n;
      rows -= take;
    }
    return parts.size() == 1 ? parts[0] : torch::cat(parts);
  }

 private:
  torch::Tensor data_;
  int64_t position_ = 0;
};

struct TrainRun {
  Curve curve;
  double final_l0 = 0;
};

// Trains `sae` on `train` for up to options.scratch_tokens tokens. With a
// `held_out` set it records the held-out FVU at 0, at every multiple of
// eval_every_tokens (at the first step past it when batches do not divide
// it) and at the end, stops at the first evaluation at or below `stop_fvu`
// when that is given, and measures the final L0; with none (nullptr) it only
// trains.
TrainRun Train(Sae& sae, const SaeTrainerOptions& trainer_options,
               const torch::Tensor& train, const torch::Tensor* held_out,
               const TokensToFvuOptions& options,
               std::optional<double> stop_fvu) {
  TrainRun run;
  SaeTrainer trainer(&sae, trainer_options);
  RowCursor cursor(train);
  if (held_out != nullptr) {
    run.curve.emplace_back(0, HeldOutFvu(sae, *held_out));
  }
  const auto reached = [&] {
    return stop_fvu.has_value() && !run.curve.empty() &&
           run.curve.back().second <= *stop_fvu;
  };
  int64_t next_eval = options.eval_every_tokens;
  while (!reached()) {
    const int64_t rows = std::min<int64_t>(
        options.batch_size, options.scratch_tokens - trainer.tokens());
    // A last batch of one row has no batch variance; the budget is spent.
    if (rows < 2) break;
    trainer.Step(cursor.Next(rows));
    const bool last = trainer.tokens() + 2 > options.scratch_tokens;
    if (held_out != nullptr && (trainer.tokens() >= next_eval || last)) {
      run.curve.emplace_back(trainer.tokens(), HeldOutFvu(sae, *held_out));
      next_eval = (trainer.tokens() / options.eval_every_tokens + 1) *
                  options.eval_every_tokens;
    }
  }
  if (held_out != nullptr) run.final_l0 = EvaluateSae(sae, *held_out).l0;
  return run;
}

std::optional<int64_t> FirstAtOrBelow(const Curve& curve, double target) {
  for (const auto& [tokens, fvu] : curve) {
    if (fvu <= target) return tokens;
  }
  return std::nullopt;
}

SaeTrainerOptions ScratchTrainerOptions(const TokensToFvuOptions& options) {
  SaeTrainerOptions trainer_options;
  trainer_options.lr = options.lr_scratch;
  trainer_options.warmup_steps = options.warmup_scratch;
  return trainer_options;
}

absl::StatusOr<TrainRun> TrainScratch(const torch::Tensor& train,
                                      const torch::Tensor* held_out,
                                      const TokensToFvuOptions& options,
                                      SaeWeights* weights) {
  const torch::Tensor sample = train.narrow(
      0, 0, std::min<int64_t>(train.size(0), kGeometricMedianSample));
  SAETRACK_ASSIGN_OR_RETURN(
      std::unique_ptr<Sae> sae,
      MakeStudySae(options.spec,
                   InitSaeFromScratch(options.d_sae, sample, options.seed)));
  TrainRun run = Train(*sae, ScratchTrainerOptions(options), train, held_out,
                       options, std::nullopt);
  *weights = sae->weights().Clone();
  return run;
}

absl::StatusOr<TokensToFvuResult> MeasureOrThrow(
    const SaeWeights& prev_sae, const torch::Tensor& train_in,
    const torch::Tensor& held_out_in, const TokensToFvuOptions& options) {
  SAETRACK_RETURN_IF_ERROR(ValidateOptions(options));
  SAETRACK_RETURN_IF_ERROR(ValidateActivations(train_in, held_out_in));
  if (!prev_sae.W_enc.defined() || prev_sae.d_in() != train_in.size(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("prev_sae has d_in ",
                     prev_sae.W_enc.defined() ? prev_sae.d_in() : int64_t{0},
                     " but the activations have ", train_in.size(1)));
  }
  if (prev_sae.d_sae() != options.d_sae) {
    return InvalidOption(
        "d_sae", absl::StrCat(options.d_sae, " differs from prev_sae's ",
                              prev_sae.d_sae()));
  }
  const torch::Tensor train = train_in.to(torch::kFloat32);
  const torch::Tensor held_out =
      held_out_in.to(train.device(), torch::kFloat32);

  TokensToFvuResult result;
  result.batch_tokens = options.batch_size;
  SAETRACK_ASSIGN_OR_RETURN(
      const TrainRun scratch,
      TrainScratch(train, &held_out, options, &result.scratch_sae));
  result.scratch_curve = scratch.curve;
  result.scratch_init_fvu = scratch.curve.front().second;
  result.scratch_l0 = scratch.final_l0;
  result.target_fvu = scratch.curve.back().second;
  // The final point is at or below the target by definition, so this is set.
  result.scratch_tokens = *FirstAtOrBelow(scratch.curve, result.target_fvu);

  SaeWeights init = prev_sae.Clone();
  for (torch::Tensor* tensor :
       {&init.W_enc, &init.b_enc, &init.W_dec, &init.b_dec}) {
    *tensor = tensor->to(train.device(), torch::kFloat32);
  }
  SAETRACK_ASSIGN_OR_RETURN(std::unique_ptr<Sae> recurrent,
                            MakeStudySae(options.spec, std::move(init)));
  SaeTrainerOptions recurrent_options;
  recurrent_options.lr = options.lr_recurrent;
  recurrent_options.warmup_steps = options.warmup_recurrent;
  const TrainRun run = Train(
      *recurrent, recurrent_options, train, &held_out, options,
      options.full_recurrent_curve ? std::nullopt
                                   : std::optional<double>(result.target_fvu));
  result.recurrent_curve = run.curve;
  result.recurrent_init_fvu = run.curve.front().second;
  result.recurrent_l0 = run.final_l0;
  result.recurrent_tokens = FirstAtOrBelow(run.curve, result.target_fvu);
  return result;
}

}  // namespace

double TokensToFvuResult::speedup() const {
  if (!recurrent_tokens.has_value()) return 0;
  return static_cast<double>(scratch_tokens) /
         static_cast<double>(
             std::max<int64_t>({*recurrent_tokens, batch_tokens, 1}));
}

absl::StatusOr<SaeWeights> TrainSaeFromScratch(
    const torch::Tensor& train, const TokensToFvuOptions& options) {
  try {
    SAETRACK_RETURN_IF_ERROR(ValidateOptions(options));
    SAETRACK_RETURN_IF_ERROR(ValidateActivations(train, train));
    SaeWeights weights;
    SAETRACK_RETURN_IF_ERROR(TrainScratch(train.to(torch::kFloat32),
                                          /*held_out=*/nullptr, options,
                                          &weights)
                                 .status());
    return weights;
  } catch (const std::exception& error) {
    return absl::InternalError(
        absl::StrCat("TrainSaeFromScratch: ", error.what()));
  }
}

absl::StatusOr<TokensToFvuResult> MeasureTokensToFvu(
    const SaeWeights& prev_sae, const torch::Tensor& train,
    const torch::Tensor& held_out, const TokensToFvuOptions& options) {
  // LibTorch reports failures (out of memory, device mismatches) by
  // throwing; this is an engine boundary, so they become a status.
  try {
    return MeasureOrThrow(prev_sae, train, held_out, options);
  } catch (const std::exception& error) {
    return absl::InternalError(
        absl::StrCat("MeasureTokensToFvu: ", error.what()));
  }
}

format::JsonValue::Object TokensToFvuJsonMembers(const TokensToFvuResult& r) {
  using format::JsonValue;
  const auto curve = [](const std::vector<std::pair<int64_t, double>>& c) {
    JsonValue::Array points;
    for (const auto& [tokens, fvu] : c) {
      points.push_back(JsonValue::MakeArray(
          {JsonValue::Integer(tokens), JsonValue::Number(fvu)}));
    }
    return JsonValue::MakeArray(std::move(points));
  };
  return {
      {"target_fvu", JsonValue::Number(r.target_fvu)},
      {"scratch_tokens", JsonValue::Integer(r.scratch_tokens)},
      {"recurrent_tokens", r.recurrent_tokens.has_value()
                               ? JsonValue::Integer(*r.recurrent_tokens)
                               : JsonValue()},
      {"speedup", JsonValue::Number(r.speedup())},
      {"scratch_init_fvu", JsonValue::Number(r.scratch_init_fvu)},
      {"recurrent_init_fvu", JsonValue::Number(r.recurrent_init_fvu)},
      {"scratch_l0", JsonValue::Number(r.scratch_l0)},
      {"recurrent_l0", JsonValue::Number(r.recurrent_l0)},
      {"scratch_curve", curve(r.scratch_curve)},
      {"recurrent_curve", curve(r.recurrent_curve)},
  };
}

}  // namespace saetrack::engine
