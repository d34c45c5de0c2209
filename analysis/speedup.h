// The recurrent-initialisation speed-up (DESIGN.md §3, §9) as plain numbers:
// how many tokens an SAE initialised from the previous checkpoint's SAE needs
// to come within a tolerance of the final held-out total loss of an SAE
// trained from scratch on the same checkpoint, against the tokens the
// from-scratch SAE itself needed. The engine measures it (the trust checks'
// reference checkpoints), the coordinator stores and judges it.
#ifndef SAETRACK_ANALYSIS_SPEEDUP_H_
#define SAETRACK_ANALYSIS_SPEEDUP_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace saetrack::analysis {

// (tokens trained, held-out total loss), starting at (0, the initial loss).
using LossCurve = std::vector<std::pair<int64_t, double>>;

// The tokens of the first point of `curve` whose loss is <= target; nullopt
// when none is.
std::optional<int64_t> FirstAtOrBelow(const LossCurve& curve, double target);

// One recurrently initialised SAE.
struct SpeedupArm {
  double lr = 0;
  // Held-out total loss of the previous checkpoint's SAE on this checkpoint,
  // before any training.
  double init_loss = 0;
  // Tokens to the target; nullopt: not within the from-scratch budget.
  std::optional<int64_t> tokens;
  // Held-out L0 where it stopped: at the crossing, or at the end of the
  // budget when it never got there.
  double l0 = 0;
  LossCurve curve;
};

struct RecurrenceSpeedup {
  // The target is the from-scratch SAE's final loss times (1 + tolerance).
  double tolerance = 0.02;
  double scratch_loss = 0;
  double target_loss = 0;
  // Tokens the from-scratch SAE needed to first reach the target, and its
  // held-out L0 at the end.
  int64_t scratch_tokens = 0;
  double scratch_l0 = 0;
  LossCurve scratch_curve;
  // Tokens per training batch: the finest unit of training.
  int64_t batch_tokens = 1;
  // The recurrent SAE with the from-scratch SAE's schedule (same learning
  // rate, warm-up, dead-feature handling and data order) ...
  SpeedupArm same_lr;
  // ... and with the paper's lr/10 for later SAEs.
  SpeedupArm slow_lr;

  // scratch_tokens / max(arm.tokens, batch_tokens); 0 when the arm never
  // reached the target.
  double Speedup(const SpeedupArm& arm) const;
};

// The target and the from-scratch side of a measurement from the
// from-scratch SAE's curve (non-empty) and final L0.
RecurrenceSpeedup SpeedupTarget(const LossCurve& scratch_curve,
                                double scratch_l0, double tolerance,
                                int64_t batch_tokens);

}  // namespace saetrack::analysis

#endif  // SAETRACK_ANALYSIS_SPEEDUP_H_
