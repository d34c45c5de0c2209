#include "format/token_split.h"

#include <algorithm>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saetrack::format {

// Fraction of the token file used for training; the rest is held out.
constexpr double kTrainFraction = 0.9;

absl::StatusOr<TokenSplit> SplitTokens(int64_t num_tokens, int context_length) {
  if (num_tokens < context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file holds ", num_tokens,
                     " tokens, shorter than one context of context_length ",
                     context_length));
  }
  TokenSplit split;
  split.num_tokens = num_tokens;
  const int64_t boundary =
      static_cast<int64_t>(static_cast<double>(num_tokens) * kTrainFraction);
  split.train_end = std::max<int64_t>(boundary, context_length);
  split.eval_begin = std::min<int64_t>(boundary, num_tokens - context_length);
  return split;
}

std::vector<int64_t> SampleTrainContexts(const TokenSplit& split,
                                         int context_length,
                                         int64_t num_contexts, uint64_t seed) {
  // mt19937_64 and our own range reduction (not std::uniform_int_distribution,
  // whose algorithm differs between standard libraries) keep the sample the
  // same on every platform.
  std::mt19937_64 rng(seed);
  const uint64_t positions =
      static_cast<uint64_t>(split.train_end - context_length) + 1;
  std::vector<int64_t> starts(num_contexts);
  for (int64_t& start : starts) start = static_cast<int64_t>(rng() % positions);
  return starts;
}

std::vector<int64_t> HeldOutContexts(const TokenSplit& split,
                                     int context_length, int64_t num_contexts) {
  const int64_t last_start = split.num_tokens - context_length;
  const int64_t span = last_start - split.eval_begin;
  std::vector<int64_t> starts(num_contexts);
  for (int64_t i = 0; i < num_contexts; ++i) {
    starts[i] = num_contexts == 1
                    ? split.eval_begin
                    : split.eval_begin + span * i / (num_contexts - 1);
  }
  return starts;
}

}  // namespace saetrack::format
