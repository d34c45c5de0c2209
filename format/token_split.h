// How a job's token file is split and where its contexts start.
//
// The token file is split once: the first 90% feeds training, the last 10%
// is the held-out set. Training contexts are drawn with replacement from
// `seed`; held-out contexts sit at fixed, evenly spaced positions that depend
// only on the file length and the context length, so every checkpoint (and
// every SAE) of a job is evaluated and analysed on the same tokens.
#ifndef SAETRACK_FORMAT_TOKEN_SPLIT_H_
#define SAETRACK_FORMAT_TOKEN_SPLIT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::format {

// Token index ranges of the split: training contexts lie in [0, train_end),
// held-out contexts in [eval_begin, num_tokens).
struct TokenSplit {
  int64_t train_end = 0;
  int64_t eval_begin = 0;
  int64_t num_tokens = 0;
};

// The 90/10 split of a file of `num_tokens` tokens. When a part is shorter
// than one context it is widened to one context (so tiny files still work,
// with train and held-out contexts overlapping). Errors: kInvalidArgument
// when the file holds fewer than `context_length` tokens.
absl::StatusOr<TokenSplit> SplitTokens(int64_t num_tokens, int context_length);

// `num_contexts` training context start positions, uniform with replacement
// over [0, train_end - context_length], deterministic for `seed`.
std::vector<int64_t> SampleTrainContexts(const TokenSplit& split,
                                         int context_length,
                                         int64_t num_contexts, uint64_t seed);

// `num_contexts` held-out start positions, evenly spaced over
// [eval_begin, num_tokens - context_length] (they overlap when the held-out
// part is too short to hold them all side by side).
std::vector<int64_t> HeldOutContexts(const TokenSplit& split,
                                     int context_length, int64_t num_contexts);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_TOKEN_SPLIT_H_
