#include "tests/planted_corpus.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saetrack::engine::internal {
namespace {

absl::Status InvalidField(const char* field, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("PlantedCorpusOptions.", field, " ", what));
}

// Uniform in [0, 1) from the top 53 bits: the same on every standard
// library, unlike std::uniform_real_distribution.
double Uniform(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Bytes left once the 26 possible identity tokens, the marker and its
// successor are set aside.
constexpr int kMaxBackgroundTokens = 256 - 26 - 2;

}  // namespace

absl::StatusOr<PlantedCorpus> GeneratePlantedCorpus(
    const PlantedCorpusOptions& options) {
  if (options.num_tokens <= 0) {
    return InvalidField("num_tokens", "must be positive");
  }
  if (options.background_tokens < 2 ||
      options.background_tokens > kMaxBackgroundTokens) {
    return InvalidField(
        "background_tokens",
        absl::StrCat("must be in [2, ", kMaxBackgroundTokens, "]"));
  }
  if (options.identity_tokens < 0 || options.identity_tokens > 26) {
    return InvalidField("identity_tokens", "must be in [0, 26]");
  }
  if (options.after_marker_tokens < 2 ||
      options.after_marker_tokens > options.background_tokens) {
    return InvalidField("after_marker_tokens",
                        "must be in [2, background_tokens]");
  }
  if (!(options.identity_probability >= 0) ||
      !(options.marker_probability >= 0) ||
      options.identity_tokens * options.identity_probability +
              options.marker_probability >
          1) {
    return InvalidField("identity_probability",
                        "and marker_probability must be non-negative, with "
                        "identity_tokens * identity_probability + "
                        "marker_probability <= 1");
  }

  PlantedCorpus corpus;
  for (int i = 0; i < options.identity_tokens; ++i) {
    corpus.identity.push_back('A' + i);
  }
  // Background: lower-case letters first (readable contexts), then every
  // other byte that is not taken.
  std::vector<bool> taken(256, false);
  taken[corpus.marker] = taken[corpus.marker_successor] = true;
  for (int64_t id : corpus.identity) taken[id] = true;
  for (int b = 'a'; b <= 'z'; ++b) taken[b] = true;
  for (int b = 'a'; b <= 'z'; ++b) corpus.background.push_back(b);
  for (int b = 0; b < 256; ++b) {
    if (!taken[b]) corpus.background.push_back(b);
  }
  corpus.background.resize(options.background_tokens);
  for (int i = 0; i < options.identity_tokens; ++i) {
    corpus.identity_successor.push_back(
        corpus.background[(i * 5) % options.background_tokens]);
  }
  corpus.after_marker.assign(
      corpus.background.begin(),
      corpus.background.begin() + options.after_marker_tokens);

  std::mt19937_64 rng(options.seed);
  std::string& text = corpus.text;
  text.reserve(options.num_tokens + 2);
  while (static_cast<int64_t>(text.size()) < options.num_tokens) {
    double u = Uniform(rng);
    if (u < options.marker_probability) {
      text.push_back(static_cast<char>(corpus.marker));
      text.push_back(static_cast<char>(
          corpus.after_marker[rng() % corpus.after_marker.size()]));
      text.push_back(static_cast<char>(corpus.marker_successor));
      continue;
    }
    u -= options.marker_probability;
    if (u < options.identity_tokens * options.identity_probability) {
      const int identity =
          std::min(static_cast<int>(u / options.identity_probability),
                   options.identity_tokens - 1);
      text.push_back(static_cast<char>(corpus.identity[identity]));
      text.push_back(static_cast<char>(corpus.identity_successor[identity]));
      continue;
    }
    text.push_back(
        static_cast<char>(corpus.background[rng() % corpus.background.size()]));
  }
  text.resize(options.num_tokens);
  return corpus;
}

std::vector<bool> FollowsMarker(const PlantedCorpus& corpus,
                                const std::vector<int64_t>& tokens,
                                int context_length) {
  std::vector<bool> follows(tokens.size(), false);
  for (size_t i = 0; i < tokens.size(); ++i) {
    follows[i] = i % context_length != 0 && tokens[i - 1] == corpus.marker;
  }
  return follows;
}

}  // namespace saetrack::engine::internal
