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
#include "base/status_macros.h"

namespace saetrack::engine {
namespace {

// Rows of `train` whose geometric median initialises the from-scratch SAE's
// b_dec (as the engine's).
constexpr int64_t kGeometricMedianSample = 4096;

absl::Status InvalidOption(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("SpeedupOptions.", field, " ", what));
}

absl::Status ValidateArm(const ArmOptions& options) {
  if (options.batch_size < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ArmOptions.batch_size ", options.batch_size, " must be >= 2"));
  }
  if (options.max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ArmOptions.max_tokens ", options.max_tokens, " must be > 0"));
  }
  if (options.points_per_octave < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ArmOptions.points_per_octave ", options.points_per_octave,
                     " must be >= 1"));
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const SpeedupOptions& options) {
  if (options.d_sae <= 0) {
    return InvalidOption("d_sae", absl::StrCat(options.d_sae, " must be > 0"));
  }
  // One row has no batch variance, so the normalised loss is undefined.
  if (options.arm.batch_size < 2) {
    return InvalidOption("arm.batch_size",
                         absl::StrCat(options.arm.batch_size, " must be >= 2"));
  }
  if (options.arm.max_tokens <= 0) {
    return InvalidOption("arm.max_tokens",
                         absl::StrCat(options.arm.max_tokens, " must be > 0"));
  }
  if (options.arm.points_per_octave < 1) {
    return InvalidOption(
        "arm.points_per_octave",
        absl::StrCat(options.arm.points_per_octave, " must be >= 1"));
  }
  const double lr = options.arm.trainer.lr;
  if (!std::isfinite(lr) || lr <= 0) {
    return InvalidOption("arm.trainer.lr",
                         absl::StrCat(lr, " must be finite and > 0"));
  }
  if (options.arm.trainer.warmup_steps < 0) {
    return InvalidOption(
        "arm.trainer.warmup_steps",
        absl::StrCat(options.arm.trainer.warmup_steps, " must be >= 0"));
  }
  if (!(options.tolerance >= 0 && options.tolerance < 1)) {
    return InvalidOption("tolerance",
                         absl::StrCat(options.tolerance, " must be in [0, 1)"));
  }
  if (!(options.slow_lr_factor > 0 && options.slow_lr_factor <= 1)) {
    return InvalidOption("slow_lr_factor", absl::StrCat(options.slow_lr_factor,
                                                        " must be in (0, 1]"));
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
        absl::StrCat("SpeedupOptions.spec.",
                     absl::StripPrefix(sae.status().message(), "SaeSpec.")));
  }
  return sae;
}

// The rows of `data` in order, wrapping around at the end.
NextBatchFn RowsInOrder(const torch::Tensor& data, int batch_size) {
  auto position = std::make_shared<int64_t>(0);
  return [data, batch_size, position]() -> absl::StatusOr<torch::Tensor> {
    const int64_t n = data.size(0);
    int64_t rows = batch_size;
    std::vector<torch::Tensor> parts;
    while (rows > 0) {
      const int64_t take = std::min(rows, n - *position);
      parts.push_back(data.narrow(0, *position, take));
      *position = (*position + take) % n;
      rows -= take;
    }
    return parts.size() == 1 ? parts[0] : torch::cat(parts);
  };
}

absl::StatusOr<SaeWeights> TrainScratchOrThrow(const torch::Tensor& train,
                                               const torch::Tensor* held_out,
                                               const SpeedupOptions& options,
                                               ArmRun* run) {
  const torch::Tensor sample = train.narrow(
      0, 0, std::min<int64_t>(train.size(0), kGeometricMedianSample));
  SAETRACK_ASSIGN_OR_RETURN(
      std::unique_ptr<Sae> sae,
      MakeStudySae(options.spec,
                   InitSaeFromScratch(options.d_sae, sample, options.seed)));
  if (held_out == nullptr) {
    SaeTrainer trainer(sae.get(), options.arm.trainer);
    const NextBatchFn next = RowsInOrder(train, options.arm.batch_size);
    while (trainer.tokens() + 2 <= options.arm.max_tokens) {
      SAETRACK_ASSIGN_OR_RETURN(torch::Tensor batch, next());
      const int64_t left = options.arm.max_tokens - trainer.tokens();
      if (batch.size(0) > left) batch = batch.narrow(0, 0, left);
      trainer.Step(batch);
    }
  } else {
    SAETRACK_ASSIGN_OR_RETURN(
        *run,
        TrainArm(*sae, options.arm, RowsInOrder(train, options.arm.batch_size),
                 *held_out, nullptr));
  }
  return sae->weights().Clone();
}

absl::StatusOr<SpeedupStudy> MeasureOrThrow(const SaeWeights& prev_sae,
                                            const torch::Tensor& train_in,
                                            const torch::Tensor& held_out_in,
                                            const SpeedupOptions& options) {
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

  SpeedupStudy study;
  ArmRun scratch;
  SAETRACK_ASSIGN_OR_RETURN(
      study.scratch_sae,
      TrainScratchOrThrow(train, &held_out, options, &scratch));
  study.speedup = analysis::SpeedupTarget(
      scratch.curve, scratch.l0, options.tolerance, options.arm.batch_size);

  SaeWeights init = prev_sae.Clone();
  for (torch::Tensor* tensor :
       {&init.W_enc, &init.b_enc, &init.W_dec, &init.b_dec}) {
    *tensor = tensor->to(train.device(), torch::kFloat32);
  }
  const double lr = options.arm.trainer.lr;
  for (const auto& [arm, arm_lr] :
       {std::pair{&study.speedup.same_lr, lr},
        std::pair{&study.speedup.slow_lr, lr * options.slow_lr_factor}}) {
    SAETRACK_ASSIGN_OR_RETURN(
        *arm, TrainRecurrentArm(options.spec, MatmulPrecision::kFp32, init,
                                options.arm, arm_lr, study.speedup,
                                RowsInOrder(train, options.arm.batch_size),
                                held_out, nullptr));
  }
  return study;
}

format::JsonValue CurveJson(const analysis::LossCurve& curve) {
  using format::JsonValue;
  JsonValue::Array points;
  for (const auto& [tokens, loss] : curve) {
    points.push_back(JsonValue::MakeArray(
        {JsonValue::Integer(tokens), JsonValue::Number(loss)}));
  }
  return JsonValue::MakeArray(std::move(points));
}

}  // namespace

int64_t NextEvaluationPoint(int64_t tokens, int64_t first,
                            int points_per_octave) {
  first = std::max<int64_t>(1, first);
  if (tokens < first) return first;
  // The point index i with first * 2^(i / points_per_octave) > tokens.
  const double octaves =
      std::log2(static_cast<double>(tokens) / static_cast<double>(first));
  int64_t i = static_cast<int64_t>(std::floor(octaves * points_per_octave));
  for (;; ++i) {
    const int64_t point = static_cast<int64_t>(
        std::ceil(static_cast<double>(first) *
                  std::exp2(static_cast<double>(i) / points_per_octave)));
    if (point > tokens) return point;
  }
}

absl::StatusOr<ArmRun> TrainArm(Sae& sae, const ArmOptions& options,
                                const NextBatchFn& next_batch,
                                const torch::Tensor& held_out,
                                const AfterStepFn& after_step) {
  SAETRACK_RETURN_IF_ERROR(ValidateArm(options));
  ArmRun run;
  SaeTrainer trainer(&sae, options.trainer);
  const auto evaluate = [&] {
    run.curve.emplace_back(trainer.tokens(), sae.Loss(held_out).total);
    if (options.stop_loss.has_value() && !run.reached.has_value() &&
        run.curve.back().second <= *options.stop_loss) {
      run.reached = trainer.tokens();
    }
  };
  evaluate();
  int64_t next_eval =
      NextEvaluationPoint(0, options.batch_size, options.points_per_octave);
  while (!run.reached.has_value() &&
         trainer.tokens() + 2 <= options.max_tokens) {
    SAETRACK_ASSIGN_OR_RETURN(torch::Tensor batch, next_batch());
    // A last batch of one row has no batch variance; the data is spent.
    if (!batch.defined() || batch.size(0) < 2) break;
    const int64_t left = options.max_tokens - trainer.tokens();
    if (batch.size(0) > left) batch = batch.narrow(0, 0, left);
    const SaeLoss loss = trainer.Step(batch);
    if (after_step) SAETRACK_RETURN_IF_ERROR(after_step(trainer, loss));
    if (trainer.tokens() >= next_eval) {
      evaluate();
      next_eval = NextEvaluationPoint(trainer.tokens(), options.batch_size,
                                      options.points_per_octave);
    }
  }
  if (run.curve.back().first != trainer.tokens()) evaluate();
  run.tokens = trainer.tokens();
  run.l0 = EvaluateSae(sae, held_out).l0;
  return run;
}

absl::StatusOr<analysis::SpeedupArm> TrainRecurrentArm(
    const SaeSpec& spec, MatmulPrecision precision, const SaeWeights& init,
    const ArmOptions& scratch_options, double lr,
    const analysis::RecurrenceSpeedup& target, const NextBatchFn& next_batch,
    const torch::Tensor& held_out, const AfterStepFn& after_step) {
  SAETRACK_ASSIGN_OR_RETURN(std::unique_ptr<Sae> sae,
                            MakeSae(spec, init.Clone(), precision));
  ArmOptions options = scratch_options;
  options.trainer.lr = lr;
  options.stop_loss = target.target_loss;
  SAETRACK_ASSIGN_OR_RETURN(
      const ArmRun run,
      TrainArm(*sae, options, next_batch, held_out, after_step));
  analysis::SpeedupArm arm;
  arm.lr = lr;
  arm.init_loss = run.curve.front().second;
  arm.tokens = run.reached;
  arm.l0 = run.l0;
  arm.curve = run.curve;
  return arm;
}

absl::StatusOr<SpeedupStudy> MeasureSpeedup(const SaeWeights& prev_sae,
                                            const torch::Tensor& train,
                                            const torch::Tensor& held_out,
                                            const SpeedupOptions& options) {
  // LibTorch reports failures (out of memory, device mismatches) by
  // throwing; this is an engine boundary, so they become a status.
  try {
    return MeasureOrThrow(prev_sae, train, held_out, options);
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat("MeasureSpeedup: ", error.what()));
  }
}

absl::StatusOr<SaeWeights> TrainSaeFromScratch(const torch::Tensor& train,
                                               const SpeedupOptions& options) {
  try {
    SAETRACK_RETURN_IF_ERROR(ValidateOptions(options));
    SAETRACK_RETURN_IF_ERROR(ValidateActivations(train, train));
    return TrainScratchOrThrow(train.to(torch::kFloat32), /*held_out=*/nullptr,
                               options, nullptr);
  } catch (const std::exception& error) {
    return absl::InternalError(
        absl::StrCat("TrainSaeFromScratch: ", error.what()));
  }
}

format::JsonValue::Object SpeedupJsonMembers(
    const analysis::RecurrenceSpeedup& s) {
  using format::JsonValue;
  const auto arm = [&s](const analysis::SpeedupArm& a) {
    return JsonValue::MakeObject({
        {"lr", JsonValue::Number(a.lr)},
        {"init_loss", JsonValue::Number(a.init_loss)},
        {"tokens",
         a.tokens.has_value() ? JsonValue::Integer(*a.tokens) : JsonValue()},
        {"speedup", JsonValue::Number(s.Speedup(a))},
        {"l0", JsonValue::Number(a.l0)},
        {"curve", CurveJson(a.curve)},
    });
  };
  return {
      {"tolerance", JsonValue::Number(s.tolerance)},
      {"scratch_loss", JsonValue::Number(s.scratch_loss)},
      {"target_loss", JsonValue::Number(s.target_loss)},
      {"scratch_tokens", JsonValue::Integer(s.scratch_tokens)},
      {"scratch_l0", JsonValue::Number(s.scratch_l0)},
      {"scratch_curve", CurveJson(s.scratch_curve)},
      {"same_lr", arm(s.same_lr)},
      {"slow_lr", arm(s.slow_lr)},
  };
}

}  // namespace saetrack::engine
