#include "analysis/speedup.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

namespace saetrack::analysis {

std::optional<int64_t> FirstAtOrBelow(const LossCurve& curve, double target) {
  for (const auto& [tokens, loss] : curve) {
    if (loss <= target) return tokens;
  }
  return std::nullopt;
}

double RecurrenceSpeedup::Speedup(const SpeedupArm& arm) const {
  if (!arm.tokens.has_value()) return 0;
  return static_cast<double>(scratch_tokens) /
         static_cast<double>(std::max<int64_t>({*arm.tokens, batch_tokens, 1}));
}

RecurrenceSpeedup SpeedupTarget(const LossCurve& scratch_curve,
                                double scratch_l0, double tolerance,
                                int64_t batch_tokens) {
  RecurrenceSpeedup s;
  s.tolerance = tolerance;
  s.scratch_curve = scratch_curve;
  s.scratch_l0 = scratch_l0;
  s.batch_tokens = batch_tokens;
  s.scratch_loss = scratch_curve.back().second;
  s.target_loss = s.scratch_loss + tolerance * std::abs(s.scratch_loss);
  // The final point is at or below the target by construction.
  s.scratch_tokens = FirstAtOrBelow(scratch_curve, s.target_loss)
                         .value_or(scratch_curve.back().first);
  return s;
}

}  // namespace saetrack::analysis
