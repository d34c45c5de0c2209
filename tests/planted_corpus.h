// A synthetic corpus with planted structure, for ground-truth tests of the
// feature-dynamics analyses (DESIGN.md §4) and for demos: a tiny LM trained
// on it learns two kinds of structure whose SAE features are known in
// advance.
//
//   token-level:   each identity token is always followed by its own fixed
//                  successor, so "the current token is X" is all a model
//                  needs; a feature can detect X from the embedding alone.
//   concept-level: the marker is followed by one of several ordinary
//                  (background) tokens and then always by the marker's
//                  successor. "The previous token was the marker" is a
//                  concept the model can only represent by attending back;
//                  the positions carrying it hold many different token ids.
//
// Everything else is background, drawn uniformly. Tokens are single bytes
// (letters where there are enough), so the corpus feeds TrainTinyLm
// (lm_trainer.h) as it is. Pure functions, deterministic for a seed (the
// same bytes on every platform); thread-safe.
#ifndef SAETRACK_TESTS_PLANTED_CORPUS_H_
#define SAETRACK_TESTS_PLANTED_CORPUS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::engine::internal {

struct PlantedCorpusOptions {
  int64_t num_tokens = 200'000;
  uint64_t seed = 1;
  // Ordinary tokens: 'a' to 'z' first, then the remaining byte values in
  // increasing order (at most 228: every byte but the 26 possible identity
  // tokens, the marker and its successor).
  int background_tokens = 24;
  // Identity tokens 'A', 'B', ... (at most 26); identity token i is always
  // followed by background token (5 * i) % background_tokens.
  int identity_tokens = 4;
  // The first `after_marker_tokens` background tokens can follow the
  // marker, each equally likely; 2 <= after_marker_tokens <=
  // background_tokens.
  int after_marker_tokens = 10;
  // Each group drawn is one identity token's group ("X successor") with
  // probability identity_probability (each), the marker group ("# x !")
  // with marker_probability, else a single background token drawn
  // uniformly.
  double identity_probability = 0.03;
  double marker_probability = 0.05;
};

// The corpus and its ground truth. Token ids are byte values.
struct PlantedCorpus {
  std::string text;  // one byte per token
  std::vector<int64_t> background;
  std::vector<int64_t> identity;            // planted token-level tokens
  std::vector<int64_t> identity_successor;  // identity[i]'s next token
  int64_t marker = '#';
  std::vector<int64_t> after_marker;  // tokens that can follow the marker
  int64_t marker_successor = '!';     // the token two after the marker
};

// Generates the corpus: groups are drawn independently until num_tokens
// tokens are out (the last group may be cut short). Errors: kInvalidArgument
// naming the PlantedCorpusOptions field when a count is out of range or the
// probabilities are negative or sum to more than 1.
absl::StatusOr<PlantedCorpus> GeneratePlantedCorpus(
    const PlantedCorpusOptions& options);

// For token ids laid out as consecutive contexts of `context_length` tokens
// (row-major, as the engine's analysis set), whether each position directly
// follows the marker within its own context (a model cannot see across
// contexts, so the first position of a context never does).
// REQUIRES: context_length > 0.
std::vector<bool> FollowsMarker(const PlantedCorpus& corpus,
                                const std::vector<int64_t>& tokens,
                                int context_length);

}  // namespace saetrack::engine::internal

#endif  // SAETRACK_TESTS_PLANTED_CORPUS_H_
