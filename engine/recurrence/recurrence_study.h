// The convergence claim of SAE-Track's recurrent initialisation (DESIGN.md
// §3, §9), measured fairly: an SAE initialised from the previous checkpoint's
// SAE and an SAE trained from scratch are trained on the same checkpoint with
// the same schedule (learning rate, warm-up, dead-feature handling / AuxK),
// the same batches in the same order and the same budget; the speed-up is the
// ratio of the tokens each needs to come within a tolerance (2%) of the
// from-scratch SAE's final held-out total loss. A second recurrent arm uses
// the paper's lr/10 for later SAEs and is reported separately.
//
// TrainArm is the one training loop of such a measurement: the engine's trust
// checks (torch_engine.cc, at the job's reference checkpoints) and
// recurrent_init_bench both train their arms with it. MeasureSpeedup is the
// whole measurement on activations held in memory.
#ifndef SAETRACK_ENGINE_RECURRENCE_RECURRENCE_STUDY_H_
#define SAETRACK_ENGINE_RECURRENCE_RECURRENCE_STUDY_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "analysis/speedup.h"
#include "engine/sae/sae.h"
#include "engine/sae/sae_trainer.h"
#include "format/json.h"

namespace saetrack::engine {

// The next training batch [rows >= 2, d_in]; an undefined tensor when the
// data is exhausted.
using NextBatchFn = std::function<absl::StatusOr<torch::Tensor>()>;
// Called after every step (with the loss of that step); an error stops
// training and is returned (cancellation). May be empty.
using AfterStepFn =
    std::function<absl::Status(const SaeTrainer&, const SaeLoss&)>;

struct ArmOptions {
  SaeTrainerOptions trainer;
  int batch_size = 4096;
  int64_t max_tokens = 0;
  // Held-out total loss at 0 and at log-spaced token counts: the first after
  // one batch, then points_per_octave per doubling, and at the end. The
  // relative resolution of a token count is 2^(1/points_per_octave) on every
  // arm alike.
  int points_per_octave = 4;
  // Stop at the first evaluation at or below this loss.
  std::optional<double> stop_loss;
};

struct ArmRun {
  analysis::LossCurve curve;
  int64_t tokens = 0;
  // The first curve point at or below options.stop_loss.
  std::optional<int64_t> reached;
  // Held-out L0 where training stopped.
  double l0 = 0;
};

// The smallest log-spaced evaluation point above `tokens` (see ArmOptions).
int64_t NextEvaluationPoint(int64_t tokens, int64_t first,
                            int points_per_octave);

// Trains `sae` on batches from `next_batch` until options.max_tokens, the
// stop loss or the end of the data, measuring the held-out total loss of
// `held_out` (normalised coordinates, as the batches) along the way.
// Errors: `after_step`'s; kInvalidArgument for max_tokens <= 0,
// batch_size < 2 or points_per_octave < 1.
absl::StatusOr<ArmRun> TrainArm(Sae& sae, const ArmOptions& options,
                                const NextBatchFn& next_batch,
                                const torch::Tensor& held_out,
                                const AfterStepFn& after_step);

// One recurrent arm against `target` (analysis::SpeedupTarget of the
// from-scratch arm): a fresh SAE of `spec` from `init`, trained with
// `scratch_options` (the from-scratch arm's, including its budget) at `lr`,
// stopping at the target. `next_batch` must give the from-scratch arm's
// batches again, from the first.
absl::StatusOr<analysis::SpeedupArm> TrainRecurrentArm(
    const SaeSpec& spec, MatmulPrecision precision, const SaeWeights& init,
    const ArmOptions& scratch_options, double lr,
    const analysis::RecurrenceSpeedup& target, const NextBatchFn& next_batch,
    const torch::Tensor& held_out, const AfterStepFn& after_step);

struct SpeedupOptions {
  SaeSpec spec;
  int64_t d_sae = 0;
  // Both arms' schedule, batch size and budget (trainer.lr is the
  // from-scratch and same-lr arms' learning rate).
  ArmOptions arm;
  double tolerance = 0.02;
  // The second recurrent arm's learning rate is trainer.lr times this.
  double slow_lr_factor = 0.1;
  // Seed of the from-scratch initialisation.
  uint64_t seed = 0;
};

struct SpeedupStudy {
  analysis::RecurrenceSpeedup speedup;
  // The from-scratch SAE's final weights, for the caller to use as the
  // previous SAE of the next checkpoint.
  SaeWeights scratch_sae;
};

// The whole measurement on one checkpoint: `train` [n >= 2, d_in] is
// consumed in order, wrapping around (the same rows in the same order for
// every arm), `held_out` [m >= 1, d_in] gives the curves; both in the
// coordinates the SAEs work in (the job's: normalised). `prev_sae`: the
// previous checkpoint's SAE in those coordinates. Errors: kInvalidArgument
// naming the SpeedupOptions field (d_sae, batch size, budget, learning rate,
// tolerance, factor, a bad spec) or the argument (shapes, widths not matching
// prev_sae); kInternal for LibTorch failures.
absl::StatusOr<SpeedupStudy> MeasureSpeedup(const SaeWeights& prev_sae,
                                            const torch::Tensor& train,
                                            const torch::Tensor& held_out,
                                            const SpeedupOptions& options);

// The from-scratch SAE of MeasureSpeedup alone (no curve), e.g. for the
// first checkpoint of a chain. Errors: as MeasureSpeedup.
absl::StatusOr<SaeWeights> TrainSaeFromScratch(const torch::Tensor& train,
                                               const SpeedupOptions& options);

// `speedup` as JSON members (tolerance, target, the from-scratch tokens and
// L0, per arm lr, tokens (null: never), speed-up, L0 and curves as
// [tokens, loss] pairs), for callers to add their own members to.
format::JsonValue::Object SpeedupJsonMembers(
    const analysis::RecurrenceSpeedup& speedup);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_RECURRENCE_RECURRENCE_STUDY_H_
