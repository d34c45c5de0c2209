#include "server/internal/summariser.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "analysis/drift.h"
#include "analysis/dynamics.h"
#include "format/tokenizer.h"

namespace saetrack::server {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

v1::Quantiles QuantilesOf(const std::vector<double>& values) {
  v1::Quantiles q;
  q.set_q10(analysis::Quantile(values, 0.10).value_or(kNaN));
  q.set_q25(analysis::Quantile(values, 0.25).value_or(kNaN));
  q.set_q50(analysis::Quantile(values, 0.50).value_or(kNaN));
  q.set_q75(analysis::Quantile(values, 0.75).value_or(kNaN));
  q.set_q90(analysis::Quantile(values, 0.90).value_or(kNaN));
  return q;
}

v1::PhaseFit ToProto(const analysis::PhaseModels& models) {
  const analysis::PhaseFit& fit = models.best();
  v1::PhaseFit out;
  out.set_breakpoint1_x(fit.breakpoint1);
  out.set_breakpoint2_x(fit.breakpoint2);
  out.set_breakpoint1_step(std::expm1(fit.breakpoint1));
  out.set_breakpoint2_step(std::expm1(fit.breakpoint2));
  out.set_slope1(fit.slope1);
  out.set_slope2(fit.slope2);
  out.set_slope3(fit.slope3);
  out.set_intercept(fit.intercept);
  out.set_r_squared(fit.r_squared);
  out.set_segments(fit.segments);
  out.set_rss(fit.rss);
  if (models.fits[0].has_value()) out.set_bic1(models.fits[0]->bic);
  if (models.fits[1].has_value()) out.set_bic2(models.fits[1]->bic);
  if (models.fits[2].has_value()) out.set_bic3(models.fits[2]->bic);
  return out;
}

double Median(std::vector<double> values) {
  return analysis::Quantile(std::move(values), 0.5).value_or(kNaN);
}

}  // namespace

Summariser::Summariser(TaskScheduler* scheduler, ResultStore* results,
                       storage::KvStore* store,
                       const SummariserOptions& options)
    : scheduler_(scheduler),
      results_(results),
      store_(store),
      options_(options) {}

Summariser::~Summariser() { Stop(); }

void Summariser::Start() {
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void Summariser::Stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

void Summariser::Loop() {
  while (!stopping_) {
    std::optional<SummaryWork> work =
        scheduler_->TakeSummary(absl::Milliseconds(500));
    if (!work.has_value()) continue;
    absl::Status s = Run(*work);
    if (s.ok()) {
      std::cerr << "summary " << work->task_id << " stored\n";
      continue;
    }
    if (absl::IsAborted(s)) {
      // No longer this summary's to store (a newer analysis round, the job
      // ended): nothing to report.
      std::cerr << "summary " << work->task_id << " dropped: " << s << "\n";
      continue;
    }
    std::cerr << "summary " << work->task_id << " failed: " << s << "\n";
    // Storage trouble may pass; anything else is in the stored results.
    const bool retryable = absl::IsUnavailable(s) ||
                           absl::IsResourceExhausted(s) ||
                           absl::IsInternal(s) || absl::IsDeadlineExceeded(s);
    if (absl::Status f =
            scheduler_->FailSummary(work->task_id, s.ToString(), retryable);
        !f.ok() && !absl::IsAborted(f)) {
      std::cerr << "summary " << work->task_id
                << " could not be marked failed: " << f << "\n";
    }
  }
}

absl::Status Summariser::Run(const SummaryWork& work) {
  const v1::AnalysisConfig& config = work.spec.analysis();
  const int d_sae = work.spec.sae().d_sae();
  std::vector<int64_t> steps = work.steps;
  std::sort(steps.begin(), steps.end());
  const int num_checkpoints = static_cast<int>(steps.size());
  const analysis::SaeWeightsSource source =
      [&](int index) -> absl::StatusOr<std::string> {
    return results_->GetSaeWeights(work.job_id, work.layer, steps.at(index));
  };
  absl::StatusOr<analysis::DecoderDrift> drift =
      analysis::ComputeDecoderDrift(num_checkpoints, source);
  if (!drift.ok()) return drift.status();
  if (static_cast<int>(drift->cos_to_final.back().size()) != d_sae) {
    return absl::DataLossError(absl::StrCat(
        "stored SAEs of job '", work.job_id, "' layer ", work.layer, " have ",
        drift->cos_to_final.back().size(), " features, the spec says ", d_sae));
  }
  absl::StatusOr<std::vector<analysis::Trajectory2d>> trajectories =
      analysis::DecoderTrajectories(num_checkpoints, source,
                                    options_.pca_memory_budget_bytes);
  if (!trajectories.ok()) return trajectories.status();

  std::optional<format::Tokenizer> tokenizer;
  if (!work.spec.data().tokenizer_path().empty()) {
    absl::StatusOr<format::Tokenizer> loaded =
        format::Tokenizer::Load(work.spec.data().tokenizer_path());
    if (loaded.ok()) {
      tokenizer = *std::move(loaded);
    } else {
      std::cerr << "summary " << work.task_id
                << ": tokens stay undecoded: " << loaded.status() << "\n";
    }
  }

  // Per checkpoint (step order), values over live features.
  std::vector<std::vector<double>> cos_final(num_checkpoints),
      cos_previous(num_checkpoints), progress_act(num_checkpoints),
      progress_feat(num_checkpoints), progress_token(num_checkpoints);
  std::vector<int> formed_by(num_checkpoints, 0);
  std::vector<int32_t> chain_of_step(num_checkpoints, 0);
  struct KindTally {
    int count = 0;
    std::vector<double> formation_steps;
    std::vector<double> formation_chain;
    // At the final checkpoint, where defined.
    std::vector<double> final_progress;
    std::vector<double> final_token_controlled;
  };
  std::map<v1::FeatureKind, KindTally> kinds;
  for (v1::FeatureKind kind :
       {v1::FEATURE_KIND_TOKEN_LEVEL, v1::FEATURE_KIND_CONCEPT_LEVEL,
        v1::FEATURE_KIND_DEAD}) {
    kinds[kind];
  }

  storage::WriteBatch batch;
  for (int i = 0; i < d_sae; ++i) {
    absl::StatusOr<std::vector<v1::FeaturePoint>> points =
        results_->GetFeatureHistory(work.job_id, work.layer, i);
    if (!points.ok()) return points.status();
    std::map<int64_t, v1::FeaturePoint*> by_step;
    for (v1::FeaturePoint& p : *points) by_step[p.step()] = &p;
    std::vector<v1::FeaturePoint*> ordered;
    for (int64_t step : steps) {
      auto it = by_step.find(step);
      if (it == by_step.end() || !it->second->analysed()) {
        return absl::DataLossError(absl::StrCat(
            "job '", work.job_id, "' layer ", work.layer, " feature ", i,
            ": no analysed point stored for step ", step));
      }
      ordered.push_back(it->second);
    }
    const analysis::Trajectory2d& trajectory = (*trajectories)[i];
    std::vector<double> act(num_checkpoints), feat(num_checkpoints),
        token_controlled(num_checkpoints);
    for (int t = 0; t < num_checkpoints; ++t) {
      v1::FeaturePoint& p = *ordered[t];
      p.set_decoder_cos_final(drift->cos_to_final[t][i]);
      p.set_pca_x(trajectory.points[t].first);
      p.set_pca_y(trajectory.points[t].second);
      act[t] = p.has_progress_activation() ? p.progress_activation() : kNaN;
      feat[t] = p.has_progress_feature() ? p.progress_feature() : kNaN;
      token_controlled[t] = p.has_progress_token_controlled()
                                ? p.progress_token_controlled()
                                : kNaN;
      chain_of_step[t] = p.chain_index();
    }

    const v1::FeaturePoint& last = *ordered.back();
    v1::FeatureSummary summary;
    summary.set_feature_id(i);
    summary.set_final_frequency(last.frequency());
    summary.set_cos_first_to_final(drift->cos_to_final[0][i]);
    summary.set_pca_explained1(trajectory.explained1);
    summary.set_pca_explained2(trajectory.explained2);
    absl::StatusOr<std::optional<v1::FeaturePoint>> final_contexts =
        results_->GetFeatureContextsAt(work.job_id, work.layer, i,
                                       steps.back());
    if (!final_contexts.ok()) return final_contexts.status();
    std::vector<int64_t> tokens;
    if (final_contexts->has_value()) {
      for (const v1::FeatureContext& c : (*final_contexts)->contexts()) {
        tokens.push_back(c.token());
      }
    }
    const bool dead = last.frequency() <= 0 || tokens.empty();
    if (dead) {
      summary.set_kind(v1::FEATURE_KIND_DEAD);
    } else {
      const analysis::TokenConcentration concentration =
          analysis::ClassifyTokens(tokens, config.token_level_threshold());
      summary.set_kind(concentration.token_level
                           ? v1::FEATURE_KIND_TOKEN_LEVEL
                           : v1::FEATURE_KIND_CONCEPT_LEVEL);
      summary.set_top_token(static_cast<int32_t>(concentration.top_token));
      summary.set_top_token_share(concentration.share);
      if (tokenizer.has_value()) {
        absl::StatusOr<std::string> text =
            tokenizer->Decode({static_cast<uint32_t>(concentration.top_token)});
        if (text.ok()) summary.set_top_token_text(*text);
      }
    }
    std::optional<int> formed =
        analysis::FormationIndex(act, config.formation_tau());
    if (formed.has_value()) {
      summary.set_formation_step(steps[*formed]);
      summary.set_formation_chain_index(chain_of_step[*formed]);
    }
    if (std::optional<int> formed_feature =
            analysis::FormationIndex(feat, config.formation_tau())) {
      summary.set_formation_step_feature(steps[*formed_feature]);
    }
    if (std::optional<analysis::PhaseModels> phases =
            analysis::FeaturePhases(steps, *drift, i)) {
      *summary.mutable_phases() = ToProto(*phases);
    }

    KindTally& tally = kinds[summary.kind()];
    ++tally.count;
    if (std::isfinite(act.back())) tally.final_progress.push_back(act.back());
    if (std::isfinite(token_controlled.back())) {
      tally.final_token_controlled.push_back(token_controlled.back());
    }
    if (formed.has_value()) {
      tally.formation_steps.push_back(static_cast<double>(steps[*formed]));
      tally.formation_chain.push_back(chain_of_step[*formed]);
    }
    if (!dead) {
      for (int t = 0; t < num_checkpoints; ++t) {
        cos_final[t].push_back(drift->cos_to_final[t][i]);
        if (t > 0) cos_previous[t].push_back(drift->cos_to_previous[t][i]);
        if (std::isfinite(act[t])) progress_act[t].push_back(act[t]);
        if (std::isfinite(feat[t])) progress_feat[t].push_back(feat[t]);
        if (std::isfinite(token_controlled[t])) {
          progress_token[t].push_back(token_controlled[t]);
        }
        if (formed.has_value() && *formed <= t) ++formed_by[t];
      }
    }

    for (const v1::FeaturePoint* p : ordered) {
      ResultStore::AddFeaturePoint(work.job_id, work.layer, i, *p, &batch);
    }
    ResultStore::AddFeatureSummary(work.job_id, work.layer, summary, &batch);
    if ((i + 1) % options_.features_per_batch == 0) {
      // Not synced: the final, synced batch that completes the task makes
      // the write-ahead log durable up to it.
      if (absl::Status s = store_->Write(batch, {.sync = false}); !s.ok()) {
        return s;
      }
      batch = storage::WriteBatch();
    }
  }

  v1::DriftSummary drift_summary;
  drift_summary.set_job_id(work.job_id);
  drift_summary.set_layer(work.layer);
  drift_summary.set_formation_tau(config.formation_tau());
  drift_summary.set_token_level_threshold(config.token_level_threshold());
  drift_summary.set_top_k(config.top_k());
  drift_summary.set_analysis_tokens(config.analysis_tokens());
  drift_summary.set_provisional(work.provisional);
  drift_summary.set_through_step(steps.back());
  std::vector<double> medians;
  for (int t = 0; t < num_checkpoints; ++t) {
    v1::CheckpointDrift* c = drift_summary.add_checkpoints();
    c->set_step(steps[t]);
    c->set_chain_index(chain_of_step[t]);
    *c->mutable_cos_to_final() = QuantilesOf(cos_final[t]);
    medians.push_back(c->cos_to_final().q50());
    if (t > 0) *c->mutable_cos_to_previous() = QuantilesOf(cos_previous[t]);
    *c->mutable_progress_activation() = QuantilesOf(progress_act[t]);
    *c->mutable_progress_feature() = QuantilesOf(progress_feat[t]);
    if (!progress_token[t].empty()) {
      *c->mutable_progress_token_controlled() = QuantilesOf(progress_token[t]);
    }
    c->set_formed(formed_by[t]);
  }
  if (num_checkpoints >= analysis::kMinPhaseCheckpoints &&
      std::all_of(medians.begin(), medians.end(),
                  [](double m) { return std::isfinite(m); })) {
    absl::StatusOr<analysis::PhaseModels> fit = analysis::FitPhases(
        analysis::LogSteps(steps), medians, analysis::kCosResolution);
    if (fit.ok()) *drift_summary.mutable_phases() = ToProto(*fit);
  }
  for (const auto& [kind, tally] : kinds) {
    v1::KindSummary* k = drift_summary.add_kinds();
    k->set_kind(kind);
    k->set_count(tally.count);
    k->set_formed(static_cast<int32_t>(tally.formation_steps.size()));
    if (!tally.final_progress.empty()) {
      k->set_final_progress_q50(Median(tally.final_progress));
    }
    if (!tally.final_token_controlled.empty()) {
      k->set_final_progress_token_controlled_q50(
          Median(tally.final_token_controlled));
    }
    if (!tally.formation_steps.empty()) {
      const double n = static_cast<double>(tally.formation_steps.size());
      k->set_mean_formation_step(std::accumulate(tally.formation_steps.begin(),
                                                 tally.formation_steps.end(),
                                                 0.0) /
                                 n);
      k->set_median_formation_step(Median(tally.formation_steps));
      k->set_mean_formation_chain_index(
          std::accumulate(tally.formation_chain.begin(),
                          tally.formation_chain.end(), 0.0) /
          n);
    }
  }
  ResultStore::AddDriftSummary(drift_summary, &batch);
  return scheduler_->CompleteSummary(work.task_id, std::move(batch));
}

}  // namespace saetrack::server
