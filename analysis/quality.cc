#include "analysis/quality.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace saetrack::analysis {
namespace {

// "262,144" -> "262k", "5,000,000" -> "5.0M".
std::string Tokens(int64_t tokens) {
  if (tokens >= 1'000'000) return absl::StrFormat("%.1fM", tokens / 1e6);
  if (tokens >= 10'000) return absl::StrFormat("%.0fk", tokens / 1e3);
  return absl::StrCat(tokens);
}

QualityVerdict SpeedupVerdict(int64_t step, const RecurrenceSpeedup& s,
                              const QualityThresholds& thresholds) {
  QualityVerdict v{"recurrence speed-up", step, false, ""};
  const double same = s.Speedup(s.same_lr);
  v.passed = same >= thresholds.min_speedup;
  const auto arm_text = [&](const SpeedupArm& arm) {
    if (!arm.tokens.has_value()) {
      return absl::StrCat(
          "did not get there within ",
          Tokens(s.scratch_curve.empty() ? s.scratch_tokens
                                         : s.scratch_curve.back().first),
          " tokens");
    }
    return absl::StrFormat("took %s tokens (L0 %.1f), %.1fx fewer",
                           Tokens(*arm.tokens), arm.l0, s.Speedup(arm));
  };
  const std::string numbers = absl::StrFormat(
      "to come within %.0f%% of the independent SAE's final loss (%.4g; it "
      "took %s tokens, L0 %.1f) the previous SAE with the same schedule %s; "
      "at the paper's lr/10 it %s",
      100 * s.tolerance, s.scratch_loss, Tokens(s.scratch_tokens), s.scratch_l0,
      arm_text(s.same_lr), arm_text(s.slow_lr));
  if (v.passed) {
    v.verdict = absl::StrFormat(
        "recurrent initialisation converges >= %.0fx faster, as the paper "
        "says: %s",
        thresholds.min_speedup, numbers);
  } else if (same > 1) {
    v.verdict = absl::StrFormat(
        "recurrent initialisation helps, but less than the paper's >= %.0fx: "
        "%s",
        thresholds.min_speedup, numbers);
  } else {
    v.verdict = absl::StrCat(
        "recurrent initialisation does not converge faster than training "
        "from scratch here: ",
        numbers);
  }
  return v;
}

}  // namespace

std::vector<QualityVerdict> QualityVerdicts(
    const std::vector<ReferencePoint>& points,
    const QualityThresholds& thresholds) {
  std::vector<QualityVerdict> out;
  for (const ReferencePoint& p : points) {
    if (p.chain_index == 0) {
      QualityVerdict v{"seed stability", p.step, false, ""};
      v.passed = p.match_median >= thresholds.min_seed_match;
      const std::string numbers = absl::StrFormat(
          "median matched decoder cosine %.2f between two seeds (random "
          "dictionaries: %.2f), %.0f%% at >= 0.9",
          p.match_median, p.random_median, 100 * p.match_above_0_9);
      if (v.passed) {
        v.verdict =
            absl::StrCat("features are reproducible across seeds: ", numbers);
      } else if (p.match_median - p.random_median < 0.1) {
        v.verdict =
            absl::StrCat("features are determined by the seed: ", numbers,
                         "; no feature identity or drift can be trusted");
      } else {
        v.verdict = absl::StrFormat(
            "features are only partly reproducible across seeds: %s; drift "
            "smaller than %.2f is within seed noise",
            numbers, 1 - p.match_median);
      }
      out.push_back(std::move(v));
    }
    // Every from-scratch SAE: the independent one, and the chain's first.
    double cos_init = p.reference_median_cos_init;
    if (p.chain_index == 0) {
      cos_init = std::max(cos_init, p.chain_median_cos_init);
    }
    QualityVerdict d{"distance from initialisation", p.step, false, ""};
    d.passed = cos_init <= thresholds.max_cos_to_init;
    if (d.passed) {
      d.verdict = absl::StrFormat(
          "SAEs trained from scratch moved far from their initialisation "
          "(median decoder cosine %.2f to it)",
          cos_init);
    } else if (cos_init >= 0.9) {
      d.verdict = absl::StrFormat(
          "SAEs trained from scratch have not left their initialisation "
          "(median decoder cosine %.2f to it): far too few optimiser steps, "
          "nothing was learnt",
          cos_init);
    } else {
      d.verdict = absl::StrFormat(
          "SAEs trained from scratch moved only part of the way from their "
          "initialisation (median decoder cosine %.2f to it, at most %.2f "
          "expected): under-trained",
          cos_init, thresholds.max_cos_to_init);
    }
    out.push_back(std::move(d));
    if (p.chain_index > 0) {
      QualityVerdict c{"chain vs independent", p.step, false, ""};
      const double excess =
          p.reference_loss > 0 ? p.chain_loss / p.reference_loss - 1 : 0;
      c.passed = excess <= thresholds.loss_tolerance;
      const std::string numbers = absl::StrFormat(
          "held-out loss %.4g vs %.4g for an independent SAE (%+.1f%%), L0 "
          "%.1f vs %.1f; features shared: median matched cosine %.2f "
          "(random %.2f)",
          p.chain_loss, p.reference_loss, 100 * excess, p.chain_l0,
          p.reference_l0, p.match_median, p.random_median);
      if (c.passed) {
        c.verdict = absl::StrCat(
            "the chain keeps up with an SAE trained from "
            "scratch: ",
            numbers);
      } else {
        c.verdict = absl::StrCat(
            "the chain is under-trained at this step",
            p.chain_converged ? "" : " (its loss had not plateaued)", ": ",
            numbers);
      }
      out.push_back(std::move(c));
    }
    if (p.speedup.has_value()) {
      out.push_back(SpeedupVerdict(p.step, *p.speedup, thresholds));
    }
  }
  return out;
}

}  // namespace saetrack::analysis
