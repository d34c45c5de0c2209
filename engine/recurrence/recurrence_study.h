// The convergence claim of SAE-Track's recurrent initialisation (DESIGN.md
// §3, §9): an SAE initialised from the previous checkpoint's SAE reaches the
// held-out FVU of a from-scratch SAE on far fewer tokens (the paper: >= 20x
// fewer). MeasureTokensToFvu trains both SAEs on the same activations of one
// checkpoint, records their held-out FVU curves and says how many tokens each
// needed to reach the from-scratch SAE's final FVU.
//
// Both runs see the same training rows in the same order, with the same
// architecture, batch size and sparsity penalty; they differ only in their
// initialisation and in their learning-rate schedule (the paper's: the later
// SAE uses a tenth of the first one's learning rate and a short warm-up).
#ifndef SAETRACK_ENGINE_RECURRENCE_RECURRENCE_STUDY_H_
#define SAETRACK_ENGINE_RECURRENCE_RECURRENCE_STUDY_H_

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sae/sae.h"
#include "format/json.h"

namespace saetrack::engine {

struct TokensToFvuOptions {
  SaeSpec spec;  // architecture, l1_coefficient / k
  int64_t d_sae = 0;
  int batch_size = 1024;
  // The from-scratch SAE.
  double lr_scratch = 4e-4;
  int warmup_scratch = 100;
  // The recurrently initialised SAE (the paper: a tenth of the first lr).
  double lr_recurrent = 4e-5;
  int warmup_recurrent = 10;
  // Token budget of the from-scratch SAE; the recurrent SAE gets at most the
  // same.
  int64_t scratch_tokens = 0;
  // Held-out FVU is measured on both curves at every multiple of this (and
  // at 0 and at the end); it bounds the resolution of the token counts.
  int64_t eval_every_tokens = 0;
  // Seed of the from-scratch initialisation.
  uint64_t seed = 0;
  // When false (the default) the recurrent SAE stops training at the first
  // evaluation that reaches the target, which is all the measurement needs
  // and halves its cost; when true it trains the whole scratch budget, so
  // that recurrent_curve covers the same range as scratch_curve.
  bool full_recurrent_curve = false;
};

struct TokensToFvuResult {
  // Held-out FVU of the from-scratch SAE after scratch_tokens (its final
  // value): the target both curves are measured against.
  double target_fvu = 0;
  // Tokens the from-scratch SAE needed to first reach target_fvu on its curve:
  // options.scratch_tokens, or less when an earlier evaluation already was at
  // or below its final value.
  int64_t scratch_tokens = 0;
  // The first evaluation point at which the recurrent SAE's held-out FVU is
  // <= target_fvu (0 when its initial FVU already is); nullopt when it never
  // got there within options.scratch_tokens.
  std::optional<int64_t> recurrent_tokens;
  // Held-out FVU of each SAE before any training on this checkpoint.
  double recurrent_init_fvu = 0;
  double scratch_init_fvu = 0;
  // Held-out L0 (mean active features per token) of the from-scratch SAE at
  // the end and of the recurrent SAE where it stopped: reaching the FVU with a
  // much denser code would not be the same achievement.
  double scratch_l0 = 0;
  double recurrent_l0 = 0;
  // (tokens trained, held-out FVU), starting at (0, init FVU).
  std::vector<std::pair<int64_t, double>> scratch_curve;
  std::vector<std::pair<int64_t, double>> recurrent_curve;
  // Tokens per training batch (options.batch_size): the finest unit of
  // training, used by speedup() when the recurrent SAE needed none.
  int64_t batch_tokens = 0;
  // The from-scratch SAE's final weights (on the device of the activations),
  // for the caller to use as prev_sae of the next checkpoint.
  SaeWeights scratch_sae;

  // scratch_tokens / max(recurrent_tokens, batch_tokens); 0 when the
  // recurrent SAE never reached the target (recurrent_tokens is nullopt).
  double speedup() const;
};

// Trains a from-scratch SAE (InitSaeFromScratch on the first rows of `train`,
// lr_scratch, warmup_scratch) for options.scratch_tokens tokens on `train`
// [n, d_in] (rows consumed in order, wrapping around) and returns its
// weights. Errors: as MeasureTokensToFvu.
absl::StatusOr<SaeWeights> TrainSaeFromScratch(
    const torch::Tensor& train, const TokensToFvuOptions& options);

// Measures tokens-to-FVU on one checkpoint. `prev_sae`: the SAE trained on
// the previous checkpoint; `train` / `held_out`: float activations [n, d_in]
// of the checkpoint under study (on one device; train rows are consumed in
// order, wrapping around). The from-scratch SAE starts from
// InitSaeFromScratch on a sample of `train`; the recurrent one from a copy of
// prev_sae's weights (moved to train's device) with a fresh optimiser.
// Errors: kInvalidArgument naming the TokensToFvuOptions field (batch_size <
// 2, d_sae, scratch_tokens or eval_every_tokens <= 0, learning rates not
// finite and > 0, negative warm-up, a bad spec) or the argument (tensors not
// 2-D, fewer than 2 train rows, empty held_out, d_in or d_sae not matching
// prev_sae); kInternal for LibTorch failures.
absl::StatusOr<TokensToFvuResult> MeasureTokensToFvu(
    const SaeWeights& prev_sae, const torch::Tensor& train,
    const torch::Tensor& held_out, const TokensToFvuOptions& options);

// `result` as JSON members (target_fvu, scratch_tokens, recurrent_tokens
// (null for never), speedup, the initial FVUs, the L0s and both curves as
// [tokens, fvu] pairs), for callers to add their own members to.
format::JsonValue::Object TokensToFvuJsonMembers(
    const TokensToFvuResult& result);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_RECURRENCE_RECURRENCE_STUDY_H_
