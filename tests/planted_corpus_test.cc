#include "tests/planted_corpus.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace saetrack::engine::internal {
namespace {

TEST(PlantedCorpusTest, PlantsTheStructureItDescribes) {
  PlantedCorpusOptions options;
  options.num_tokens = 50'000;
  options.background_tokens = 30;
  options.after_marker_tokens = 12;
  absl::StatusOr<PlantedCorpus> corpus = GeneratePlantedCorpus(options);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  ASSERT_EQ(corpus->text.size(), 50'000u);
  ASSERT_EQ(corpus->background.size(), 30u);
  EXPECT_EQ(corpus->background[0], 'a');
  EXPECT_EQ(corpus->background[25], 'z');
  ASSERT_EQ(corpus->identity.size(), 4u);
  EXPECT_EQ(corpus->identity[0], 'A');
  EXPECT_EQ(corpus->identity_successor[1], 'f');
  ASSERT_EQ(corpus->after_marker.size(), 12u);

  std::vector<int64_t> counts(256, 0);
  const std::string& text = corpus->text;
  for (size_t i = 0; i + 2 < text.size(); ++i) {
    const int64_t token = static_cast<unsigned char>(text[i]);
    const int64_t next = static_cast<unsigned char>(text[i + 1]);
    ++counts[token];
    for (size_t k = 0; k < corpus->identity.size(); ++k) {
      if (token == corpus->identity[k]) {
        ASSERT_EQ(next, corpus->identity_successor[k]) << "at " << i;
      }
    }
    if (token == corpus->marker) {
      ASSERT_NE(std::find(corpus->after_marker.begin(),
                          corpus->after_marker.end(), next),
                corpus->after_marker.end())
          << "at " << i;
      ASSERT_EQ(static_cast<unsigned char>(text[i + 2]),
                corpus->marker_successor)
          << "at " << i;
    }
    if (token == corpus->marker_successor) {
      ASSERT_GE(i, 2u);
      ASSERT_EQ(static_cast<unsigned char>(text[i - 2]), corpus->marker);
    }
  }
  // Groups: marker 5%, each identity 3%, else background, so per token
  // ~4.1% markers and ~2.5% of each identity token.
  const double n = static_cast<double>(text.size());
  EXPECT_NEAR(counts[corpus->marker] / n, 0.05 / 1.22, 0.004);
  EXPECT_NEAR(counts['A'] / n, 0.03 / 1.22, 0.003);

  // Deterministic for a seed; another seed, another corpus.
  absl::StatusOr<PlantedCorpus> again = GeneratePlantedCorpus(options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->text, text);
  options.seed = 2;
  absl::StatusOr<PlantedCorpus> other = GeneratePlantedCorpus(options);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->text, text);
}

TEST(PlantedCorpusTest, FollowsMarkerStaysWithinContexts) {
  PlantedCorpus corpus;
  corpus.marker = '#';
  // Two contexts of 4: "#a#b" and "c#d#"; the '#' ending context 0 does not
  // reach into context 1.
  const std::vector<int64_t> tokens = {'#', 'a', '#', 'b', 'c', '#', 'd', '#'};
  EXPECT_EQ(
      FollowsMarker(corpus, tokens, 4),
      (std::vector<bool>{false, true, false, true, false, false, true, false}));
  const std::vector<int64_t> across = {'a', 'b', 'c', '#', 'd', 'e'};
  EXPECT_EQ(FollowsMarker(corpus, across, 3),
            (std::vector<bool>{false, false, false, false, true, false}));
}

TEST(PlantedCorpusTest, RejectsBadOptionsNamingTheField) {
  PlantedCorpusOptions options;
  options.after_marker_tokens = 30;  // more than the 24 background tokens
  absl::Status status = GeneratePlantedCorpus(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("PlantedCorpusOptions.after_marker_tokens"),
            absl::string_view::npos)
      << status;

  options = {};
  options.background_tokens = 229;
  status = GeneratePlantedCorpus(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("background_tokens"),
            absl::string_view::npos);

  options = {};
  options.marker_probability = 0.95;  // + 4 * 0.03 > 1
  EXPECT_EQ(GeneratePlantedCorpus(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace saetrack::engine::internal
