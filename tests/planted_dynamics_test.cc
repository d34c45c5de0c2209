// Ground truth for the feature-dynamics analyses (DESIGN.md §4). A tiny
// GPT-NeoX is trained for real on a corpus with planted structure
// (internal/planted_corpus.h); a chain of SAEs is trained over its
// checkpoints; the analysis pass runs as the coordinator runs it (final
// checkpoint first, its top positions as everyone's reference); and the
// functions the coordinator classifies and dates features with
// (analysis/dynamics.h) must recover what was planted:
//
//   - each identity token has a feature, and it is token-level;
//   - "right after the marker" has a feature, and it is concept-level, as is
//     every feature whose top contexts sit mostly right after the marker;
//   - token features exist from the first checkpoint, and the contextual
//     ones form later on average (the paper's finding).
//
// Planted features are identified without the classifier: a token feature
// is the one whose firing best matches (F1) the token's positions on the
// analysis set, the concept feature likewise for the positions right after
// the marker.
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "analysis/dynamics.h"
#include "engine/features/analysis_pass.h"
#include "engine/lm/activations.h"
#include "engine/lm/language_model.h"
#include "engine/lm/lm_trainer.h"
#include "engine/sae/sae.h"
#include "engine/training_engine.h"
#include "format/mapped_file.h"
#include "format/token_file.h"
#include "gtest/gtest.h"
#include "tests/planted_corpus.h"

namespace saetrack::engine {
namespace {

using internal::PlantedCorpus;

// --- The corpus and the language model ---
constexpr int64_t kCorpusTokens = 200'000;
// Many background tokens, every one of which can follow the marker: the
// positions right after the marker then hold ~200 different token ids, as a
// real concept's contexts do. (With ~10 possible successors the SAE's
// concept features often ranked their top contexts by the successor's
// identity, putting 56-100% of the top 25 on one token.)
constexpr int kBackgroundTokens = 200;
constexpr int kContextLength = 64;
// Checkpoints 0, 1, 2, 4, ..., kLastStep (log-spaced, as Pythia's early
// ones). The loss reaches its floor around step 256.
constexpr int64_t kLastStep = 1024;

// --- The SAE chain ---
// The residual stream after the last block. Entering block 1 (resid_pre)
// the best match of the concept reached only F1 0.5-0.75 in our runs (the
// SAE mixed it with token directions); here >= 0.92 for seeds 1-6.
constexpr int kLayer = 1;
constexpr char kSite[] = "resid_post";
constexpr int kDSae = 128;
constexpr double kL1Coefficient = 5e-3;
constexpr int64_t kFirstSaeTokens = 131'072;  // from scratch
constexpr int64_t kNextSaeTokens = 65'536;    // from the previous SAE

// --- The analysis, with DESIGN.md §4's defaults ---
constexpr int64_t kAnalysisTokens = 16'384;
constexpr int kTopK = 25;
constexpr double kTau = 0.5;
constexpr double kTokenLevelThreshold = 0.8;

// --- Identifying the planted features ---
// An identity token's feature and the concept's feature must match their
// positions at least this well (F1 of firing vs. label). Measured with
// corpus and LM seeds 1-6 when the LM trained on the whole corpus: >= 0.94
// and >= 0.92; since it trains on the first 90% only (the held-out 10% is
// the analysis set), LM seeds 1-3 give a worst identity token of 0.87, 0.97
// and 0.84 (recall 1.00 each, precision 0.73-0.76 in the worst: the feature
// also fires weakly elsewhere) and a concept of 0.96-0.97.
constexpr double kMinTokenF1 = 0.8;
constexpr double kMinConceptF1 = 0.8;
// A feature is contextual when at least this share of its top positions
// (a full top-k) sit right after the marker.
constexpr double kContextualShare = 0.8;

std::string MakeTempDir(const std::string& name) {
  std::string pattern = ::testing::TempDir() + "/" + name + "_XXXXXX";
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return pattern;
}

std::string Checkpoint(const std::string& lm_dir, int64_t step) {
  return absl::StrCat(lm_dir, "/checkpoints/step-", step);
}

// The feature whose firing (code > 0) best matches `label` by F1.
struct FeatureMatch {
  int feature = -1;
  double f1 = 0;
  double precision = 0;
  double recall = 0;
};

FeatureMatch BestMatch(const torch::Tensor& fired, const torch::Tensor& label) {
  const torch::Tensor f = fired.to(torch::kFloat);
  const torch::Tensor l = label.to(torch::kFloat).unsqueeze(1);
  const torch::Tensor true_positives = (f * l).sum(0);
  const torch::Tensor firings = f.sum(0);
  const double positives = l.sum().item<double>();
  const torch::Tensor f1 =
      2 * true_positives / (firings + positives).clamp_min(1);
  FeatureMatch match;
  match.feature = static_cast<int>(f1.argmax().item<int64_t>());
  match.f1 = f1[match.feature].item<double>();
  const double tp = true_positives[match.feature].item<double>();
  match.precision = tp / std::max(1.0, firings[match.feature].item<double>());
  match.recall = tp / std::max(1.0, positives);
  return match;
}

// Trains the SAE chain over `steps` in order, each SAE initialised from the
// previous one; returns their safetensors.
absl::StatusOr<std::vector<std::string>> TrainChain(
    const std::string& lm_dir, const std::vector<int64_t>& steps) {
  EngineOptions engine_options;
  engine_options.threads = 1;
  absl::StatusOr<std::unique_ptr<SaeTrainingEngine>> engine =
      NewTorchEngine(engine_options);
  if (!engine.ok()) return engine.status();
  std::vector<std::string> saes;
  for (size_t i = 0; i < steps.size(); ++i) {
    TrainInput input;
    input.model_dir = Checkpoint(lm_dir, steps[i]);
    input.layer = kLayer;
    input.site = kSite;
    input.tokens_path = lm_dir + "/tokens.u16";
    input.context_length = kContextLength;
    input.d_sae = kDSae;
    input.l1_coefficient = kL1Coefficient;
    input.lr = 3e-3;
    input.warmup_steps = 20;
    input.batch_size = 256;
    input.train_tokens = i == 0 ? kFirstSaeTokens : kNextSaeTokens;
    input.eval_tokens = 4096;
    input.lm_eval_tokens = 0;
    input.ghost_grads = i == 0;  // as the worker: the first SAE of a chain
    input.seed = 3;
    if (i > 0) input.init_sae_safetensors = saes.back();
    absl::StatusOr<TrainOutput> output = (*engine)->Train(input, nullptr);
    if (!output.ok()) return output.status();
    saes.push_back(std::move(output->sae_safetensors));
  }
  return saes;
}

// The analysis pass over the chain, as the coordinator runs it: the final
// checkpoint first, then every other one against its top positions.
absl::StatusOr<std::vector<AnalysisOutput>> AnalyseChain(
    const std::string& lm_dir, const std::vector<int64_t>& steps,
    const std::vector<std::string>& saes) {
  AnalysisInput base;
  base.layer = kLayer;
  base.site = kSite;
  base.tokens_path = lm_dir + "/tokens.u16";
  base.context_length = kContextLength;
  base.analysis_tokens = kAnalysisTokens;
  base.top_k = kTopK;
  base.seed = 7;
  std::vector<AnalysisOutput> analyses(steps.size());
  for (size_t n = 0; n < steps.size(); ++n) {
    const size_t i = (steps.size() - 1 + n) % steps.size();  // last first
    AnalysisInput input = base;
    input.model_dir = Checkpoint(lm_dir, steps[i]);
    input.sae_safetensors = saes[i];
    if (n > 0) input.reference_positions = analyses.back().top_positions;
    absl::StatusOr<AnalysisOutput> output =
        AnalyseCheckpoint(input, torch::kCPU, nullptr);
    if (!output.ok()) return output.status();
    analyses[i] = *std::move(output);
  }
  return analyses;
}

// The analysis set's token ids (flattened [positions]) and, for the final
// checkpoint's LM and SAE, which features fire where ([positions, d_sae]
// bool), rebuilt as the analysis pass builds them.
struct AnalysisSet {
  torch::Tensor tokens;
  torch::Tensor fired;
  // The final LM's probability of the planted next token after each
  // identity token and after "marker, x" (mean over the analysis set).
  double identity_successor_probability = 0;
  double marker_successor_probability = 0;
};

absl::StatusOr<AnalysisSet> RebuildAnalysisSet(const std::string& lm_dir,
                                               int64_t final_step,
                                               const std::string& final_sae,
                                               const PlantedCorpus& corpus) {
  absl::StatusOr<format::TokenFile> file = format::TokenFile::Open(
      lm_dir + "/tokens.u16", format::TokenDtype::kUint16);
  if (!file.ok()) return file.status();
  absl::StatusOr<TokenSplit> split = SplitTokens(file->size(), kContextLength);
  if (!split.ok()) return split.status();
  const int64_t num_contexts =
      (kAnalysisTokens + kContextLength - 1) / kContextLength;
  absl::StatusOr<torch::Tensor> contexts = GatherContexts(
      *file, HeldOutContexts(*split, kContextLength, num_contexts),
      kContextLength, /*vocab_size=*/256);
  if (!contexts.ok()) return contexts.status();
  absl::StatusOr<std::unique_ptr<LanguageModel>> model =
      LoadLanguageModel(Checkpoint(lm_dir, final_step), torch::kCPU);
  if (!model.ok()) return model.status();
  absl::StatusOr<HookSite> site = ParseHookSite(kSite);
  if (!site.ok()) return site.status();
  absl::StatusOr<SaeWeights> weights =
      SaeFromSafetensors(final_sae, torch::kCPU);
  if (!weights.ok()) return weights.status();
  absl::StatusOr<std::unique_ptr<Sae>> sae =
      MakeSae(SaeSpec{}, *std::move(weights));
  if (!sae.ok()) return sae.status();

  torch::NoGradGuard no_grad;
  AnalysisSet set;
  set.tokens = contexts->reshape({-1});
  const torch::Tensor activations =
      CollectActivations(**model, *contexts, HookPoint{kLayer, *site},
                         /*contexts_per_forward=*/128, torch::kCPU);
  set.fired = (*sae)->Encode(activations) > 0;

  // Next-token probabilities of the final LM where the corpus fixes them.
  const torch::Tensor probabilities =
      torch::softmax((*model)->Logits(*contexts), -1);
  const torch::Tensor current = contexts->narrow(1, 0, kContextLength - 1);
  const torch::Tensor previous = contexts->narrow(1, 0, kContextLength - 2);
  const torch::Tensor next_probabilities =
      probabilities.narrow(1, 0, kContextLength - 1);
  torch::Tensor identity_sum = torch::zeros({}, torch::kDouble);
  int64_t identity_count = 0;
  for (size_t i = 0; i < corpus.identity.size(); ++i) {
    const torch::Tensor at = current == corpus.identity[i];
    identity_sum += next_probabilities.select(2, corpus.identity_successor[i])
                        .masked_select(at)
                        .sum();
    identity_count += at.sum().item<int64_t>();
  }
  const torch::Tensor after_marker =
      previous == corpus.marker;  // position t + 1 follows the marker at t
  const torch::Tensor marker_successor =
      probabilities.narrow(1, 1, kContextLength - 2)
          .select(2, corpus.marker_successor)
          .masked_select(after_marker);
  set.identity_successor_probability =
      identity_sum.item<double>() / std::max<int64_t>(1, identity_count);
  set.marker_successor_probability = marker_successor.mean().item<double>();
  return set;
}

// Feature `f`'s row of a [d_sae * top_k] array, without -1 padding (the
// contexts the coordinator stores for it).
std::vector<int64_t> Row(const std::vector<int64_t>& values, int f) {
  std::vector<int64_t> row(values.begin() + f * kTopK,
                           values.begin() + (f + 1) * kTopK);
  row.erase(std::remove(row.begin(), row.end(), -1), row.end());
  return row;
}

std::vector<double> ProgressSeries(const std::vector<AnalysisOutput>& analyses,
                                   int f) {
  std::vector<double> series;
  for (const AnalysisOutput& analysis : analyses) {
    series.push_back(analysis.progress_activation[f]);
  }
  return series;
}

std::string FormatSeries(const std::vector<double>& series) {
  std::vector<std::string> parts;
  for (double v : series) parts.push_back(absl::StrFormat("%.2f", v));
  return absl::StrJoin(parts, " ");
}

TEST(PlantedDynamicsTest, TokenFeaturesExistFromTheStartConceptsFormLater) {
  torch::set_num_threads(1);  // ctest runs tests two at a time on two cores
  const std::string dir = MakeTempDir("planted_dynamics");

  internal::PlantedCorpusOptions corpus_options;
  corpus_options.num_tokens = kCorpusTokens;
  corpus_options.seed = 1;
  corpus_options.background_tokens = kBackgroundTokens;
  corpus_options.after_marker_tokens = kBackgroundTokens;
  absl::StatusOr<PlantedCorpus> corpus =
      internal::GeneratePlantedCorpus(corpus_options);
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  ASSERT_TRUE(
      format::WriteFileAtomically(dir + "/corpus.bin", corpus->text).ok());

  std::vector<int64_t> steps = {0};
  for (int64_t step = 1; step <= kLastStep; step *= 2) steps.push_back(step);
  TinyLmOptions lm;
  lm.corpus_path = dir + "/corpus.bin";
  lm.out_dir = dir + "/lm";
  lm.checkpoint_steps = steps;
  lm.d_model = 64;
  lm.layers = 2;
  lm.heads = 4;
  lm.context_length = kContextLength;
  lm.batch_size = 16;
  lm.lr = 3e-3;
  // The schedule this corpus's planted features were sized for: a 10%
  // warm-up (not Pythia's 1%, which over 256 steps is 3 steps).
  lm.warmup_fraction = 0.1;
  lm.seed = 1;
  lm.threads = 1;
  absl::StatusOr<TinyLmResult> trained = TrainTinyLm(lm, nullptr);
  ASSERT_TRUE(trained.ok()) << trained.status();

  absl::StatusOr<std::vector<std::string>> saes = TrainChain(lm.out_dir, steps);
  ASSERT_TRUE(saes.ok()) << saes.status();
  absl::StatusOr<std::vector<AnalysisOutput>> analyses =
      AnalyseChain(lm.out_dir, steps, *saes);
  ASSERT_TRUE(analyses.ok()) << analyses.status();
  const AnalysisOutput& last = analyses->back();
  absl::StatusOr<AnalysisSet> set =
      RebuildAnalysisSet(lm.out_dir, steps.back(), saes->back(), *corpus);
  ASSERT_TRUE(set.ok()) << set.status();

  // The LM learned the planted structure (at step 0 each is ~1/256).
  std::cout << absl::StrFormat(
      "final LM: p(identity successor) %.3f, p(marker successor) %.3f\n",
      set->identity_successor_probability, set->marker_successor_probability);
  EXPECT_GT(set->identity_successor_probability, 0.9);
  EXPECT_GT(set->marker_successor_probability, 0.9);
  // The rebuilt analysis set is the analysis pass's.
  ASSERT_EQ(set->tokens.numel(), last.analysis_positions);
  for (size_t j = 0; j < last.top_positions.size(); ++j) {
    if (last.top_positions[j] < 0) continue;
    ASSERT_EQ(set->tokens[last.top_positions[j]].item<int64_t>(),
              last.top_tokens[j]);
  }

  const std::vector<int64_t> tokens(
      set->tokens.data_ptr<int64_t>(),
      set->tokens.data_ptr<int64_t>() + set->tokens.numel());
  const std::vector<bool> follows_marker =
      internal::FollowsMarker(*corpus, tokens, kContextLength);
  torch::Tensor follows_marker_mask =
      torch::zeros({static_cast<int64_t>(tokens.size())}, torch::kBool);
  for (size_t p = 0; p < tokens.size(); ++p) {
    if (follows_marker[p]) follows_marker_mask[p] = true;
  }

  // Token features: every identity token has one, token-level on that
  // token, formed at the first checkpoint.
  std::vector<int> token_formation;
  for (size_t i = 0; i < corpus->identity.size(); ++i) {
    const int64_t token = corpus->identity[i];
    const FeatureMatch match = BestMatch(set->fired, set->tokens == token);
    const analysis::TokenConcentration concentration = analysis::ClassifyTokens(
        Row(last.top_tokens, match.feature), kTokenLevelThreshold);
    const std::vector<double> progress =
        ProgressSeries(*analyses, match.feature);
    const std::optional<int> formed = analysis::FormationIndex(progress, kTau);
    const std::string summary = absl::StrFormat(
        "identity token %d: feature %d, F1 %.3f (precision %.3f, recall "
        "%.3f), top-token share %.2f, formation index %d, P = %s",
        token, match.feature, match.f1, match.precision, match.recall,
        concentration.share, formed.value_or(-1), FormatSeries(progress));
    std::cout << summary << "\n";
    EXPECT_GE(match.f1, kMinTokenF1) << summary;
    EXPECT_TRUE(concentration.token_level) << summary;
    EXPECT_EQ(concentration.top_token, token) << summary;
    ASSERT_TRUE(formed.has_value()) << summary;
    EXPECT_EQ(*formed, 0) << summary;
    token_formation.push_back(*formed);
  }

  // The concept: the best match of "right after the marker" is
  // concept-level and formed after the first checkpoint.
  const FeatureMatch concept_match = BestMatch(set->fired, follows_marker_mask);
  {
    const analysis::TokenConcentration concentration = analysis::ClassifyTokens(
        Row(last.top_tokens, concept_match.feature), kTokenLevelThreshold);
    const std::vector<double> progress =
        ProgressSeries(*analyses, concept_match.feature);
    const std::optional<int> formed = analysis::FormationIndex(progress, kTau);
    const std::string summary = absl::StrFormat(
        "after the marker: feature %d, F1 %.3f (precision %.3f, recall "
        "%.3f), top-token share %.2f, formation index %d, P = %s",
        concept_match.feature, concept_match.f1, concept_match.precision,
        concept_match.recall, concentration.share, formed.value_or(-1),
        FormatSeries(progress));
    std::cout << summary << "\n";
    EXPECT_GE(concept_match.f1, kMinConceptF1) << summary;
    EXPECT_FALSE(concentration.token_level) << summary;
    ASSERT_TRUE(formed.has_value()) << summary;
    EXPECT_GT(*formed, 0) << summary;
  }

  // Every contextual feature (top positions mostly right after the marker)
  // is concept-level; on average they form later than the token features.
  std::vector<int> contextual;
  std::vector<int> contextual_formation;
  for (int f = 0; f < last.d_sae; ++f) {
    const std::vector<int64_t> positions = Row(last.top_positions, f);
    if (static_cast<int>(positions.size()) < kTopK) continue;
    int after = 0;
    for (int64_t p : positions) after += follows_marker[p];
    if (after < kContextualShare * kTopK) continue;
    contextual.push_back(f);
    const analysis::TokenConcentration concentration =
        analysis::ClassifyTokens(Row(last.top_tokens, f), kTokenLevelThreshold);
    const std::vector<double> progress = ProgressSeries(*analyses, f);
    const std::optional<int> formed = analysis::FormationIndex(progress, kTau);
    const std::string summary = absl::StrFormat(
        "contextual feature %d: %d/%d top positions after the marker, "
        "top-token share %.2f, formation index %d, P = %s",
        f, after, kTopK, concentration.share, formed.value_or(-1),
        FormatSeries(progress));
    std::cout << summary << "\n";
    EXPECT_FALSE(concentration.token_level) << summary;
    // As the coordinator's tallies: a feature that never formed (final P not
    // positive) has no formation step to average.
    if (formed.has_value()) contextual_formation.push_back(*formed);
  }
  EXPECT_NE(
      std::find(contextual.begin(), contextual.end(), concept_match.feature),
      contextual.end());
  ASSERT_FALSE(contextual_formation.empty());
  auto mean = [](const std::vector<int>& v) {
    double sum = 0;
    for (int x : v) sum += x;
    return sum / v.size();
  };
  const double token_mean = mean(token_formation);
  const double contextual_mean = mean(contextual_formation);
  std::cout << absl::StrFormat(
      "mean formation index: token features %.2f (%d), contextual features "
      "%.2f (%d of %d formed); checkpoint steps %s\n",
      token_mean, token_formation.size(), contextual_mean,
      contextual_formation.size(), contextual.size(),
      absl::StrJoin(steps, ","));
  EXPECT_GT(contextual_mean, token_mean);
}

}  // namespace
}  // namespace saetrack::engine
