#include "server/internal/query_service.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "analysis/quality.h"
#include "format/saelens.h"
#include "format/safetensors.h"
#include "format/token_file.h"
#include "format/token_split.h"
#include "format/tokenizer.h"
#include "proto/saelens_config.h"
#include "server/internal/chunked_writer.h"

namespace saetrack::server {
namespace {

constexpr int kDefaultContextBefore = 8;
constexpr int kDefaultContextAfter = 4;
constexpr int kMaxContextSide = 128;
constexpr int kDefaultFeaturePage = 100;
constexpr int kMaxFeaturePage = 10000;
constexpr size_t kExportChunkBytes = size_t{1} << 20;

}  // namespace

grpc::Status QueryServiceImpl::ListFeatures(
    grpc::ServerContext* /*context*/, const v1::ListFeaturesRequest* request,
    v1::ListFeaturesResponse* response) {
  RpcTimer timer(metrics_, "ListFeatures");
  return timer.Finish(DoListFeatures(*request, response));
}

grpc::Status QueryServiceImpl::GetDriftSummary(
    grpc::ServerContext* /*context*/, const v1::GetDriftSummaryRequest* request,
    v1::DriftSummary* response) {
  RpcTimer timer(metrics_, "GetDriftSummary");
  return timer.Finish(DoGetDriftSummary(*request, response));
}

grpc::Status QueryServiceImpl::ExportSae(
    grpc::ServerContext* /*context*/, const v1::ExportSaeRequest* request,
    grpc::ServerWriter<v1::ExportChunk>* writer) {
  RpcTimer timer(metrics_, "ExportSae");
  return timer.Finish(DoExportSae(*request, writer));
}

grpc::Status QueryServiceImpl::GetFeatureHistory(
    grpc::ServerContext* /*context*/,
    const v1::GetFeatureHistoryRequest* request, v1::FeatureHistory* response) {
  RpcTimer timer(metrics_, "GetFeatureHistory");
  return timer.Finish(DoGetFeatureHistory(*request, response));
}

grpc::Status QueryServiceImpl::GetCheckpointMetrics(
    grpc::ServerContext* /*context*/,
    const v1::GetCheckpointMetricsRequest* request,
    v1::GetCheckpointMetricsResponse* response) {
  RpcTimer timer(metrics_, "GetCheckpointMetrics");
  return timer.Finish(DoGetCheckpointMetrics(*request, response));
}

grpc::Status QueryServiceImpl::GetQualityChecks(
    grpc::ServerContext* /*context*/,
    const v1::GetQualityChecksRequest* request,
    v1::GetQualityChecksResponse* response) {
  RpcTimer timer(metrics_, "GetQualityChecks");
  return timer.Finish(DoGetQualityChecks(*request, response));
}

absl::StatusOr<v1::Job> QueryServiceImpl::JobWithLayer(
    const std::string& job_id, int32_t layer) const {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id: required");
  absl::StatusOr<v1::Job> job = scheduler_->GetJob(job_id);
  if (!job.ok()) return job.status();
  std::vector<int32_t> layers;
  for (const v1::HookPoint& hook : job->spec().hooks()) {
    if (hook.layer() == layer) return job;
    layers.push_back(hook.layer());
  }
  return absl::NotFoundError(
      absl::StrCat("layer ", layer, " is not hooked by job '", job_id,
                   "' (hooked layers: ", absl::StrJoin(layers, ", "), ")"));
}

absl::Status QueryServiceImpl::DoGetFeatureHistory(
    const v1::GetFeatureHistoryRequest& request, v1::FeatureHistory* response) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  const int32_t d_sae = job->spec().sae().d_sae();
  if (request.feature_id() < 0 || request.feature_id() >= d_sae) {
    return absl::NotFoundError(
        absl::StrCat("feature_id ", request.feature_id(), " out of range [0, ",
                     d_sae, ") of job '", request.job_id(), "'"));
  }
  absl::StatusOr<std::vector<v1::FeaturePoint>> points =
      results_->GetFeatureHistory(request.job_id(), request.layer(),
                                  request.feature_id());
  if (!points.ok()) return points.status();
  response->set_job_id(request.job_id());
  response->set_layer(request.layer());
  response->set_feature_id(request.feature_id());
  // A following job's analysis is final once its final round is done.
  response->set_provisional(
      job->spec().model().has_follow() &&
      !(job->follow().final_round() && !job->follow().analysis_running()));
  for (v1::FeaturePoint& p : *points) *response->add_points() = std::move(p);
  absl::StatusOr<std::optional<v1::FeatureSummary>> summary =
      results_->GetFeatureSummary(request.job_id(), request.layer(),
                                  request.feature_id());
  if (!summary.ok()) return summary.status();
  if (summary->has_value()) *response->mutable_summary() = **summary;
  // Logit effects' tokens, decoded with the job's tokenizer (cached) when it
  // has one; ids the tokenizer does not know keep an empty token. A byte-
  // level token may be part of a character: its bytes that are not UTF-8
  // read as \xNN (a proto string must be UTF-8).
  if (const std::string& path = job->spec().data().tokenizer_path();
      !path.empty()) {
    std::shared_ptr<const format::Tokenizer> tokenizer = TokenizerAt(path);
    for (v1::FeaturePoint& p : *response->mutable_points()) {
      if (tokenizer == nullptr || !p.has_logit_effects()) continue;
      v1::LogitEffects* effects = p.mutable_logit_effects();
      for (auto* list :
           {effects->mutable_promoted(), effects->mutable_suppressed()}) {
        for (v1::LogitEffect& e : *list) {
          if (e.token_id() < 0) continue;
          absl::StatusOr<std::string> text =
              tokenizer->Decode({static_cast<uint32_t>(e.token_id())});
          if (text.ok()) e.set_token(format::EscapeInvalidUtf8(*text));
        }
      }
    }
  }
  if (request.include_contexts()) {
    // Stored apart from the points: most queries do not want them.
    absl::StatusOr<std::vector<v1::FeaturePoint>> contexts =
        results_->GetFeatureContexts(request.job_id(), request.layer(),
                                     request.feature_id());
    if (!contexts.ok()) return contexts.status();
    std::map<int64_t, v1::FeaturePoint*> by_step;
    for (v1::FeaturePoint& p : *response->mutable_points()) {
      by_step[p.step()] = &p;
    }
    for (v1::FeaturePoint& c : *contexts) {
      auto it = by_step.find(c.step());
      if (it != by_step.end())
        it->second->mutable_contexts()->Swap(c.mutable_contexts());
    }
    for (auto [field, value] :
         {std::pair{"context_before", request.context_before()},
          std::pair{"context_after", request.context_after()}}) {
      if (value < 0 || value > kMaxContextSide) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": ", value, " out of range [0, ", kMaxContextSide, "]"));
      }
    }
    if (absl::Status s =
            FillContexts(job->spec(),
                         request.context_before() > 0 ? request.context_before()
                                                      : kDefaultContextBefore,
                         request.context_after() > 0 ? request.context_after()
                                                     : kDefaultContextAfter,
                         response);
        !s.ok()) {
      return s;
    }
  }
  if (request.include_decoder()) {
    return FillDecoders(request.job_id(), request.layer(), response);
  }
  return absl::OkStatus();
}

std::shared_ptr<const format::Tokenizer> QueryServiceImpl::TokenizerAt(
    const std::string& path) {
  absl::MutexLock lock(&tokenizers_mu_);
  auto it = tokenizers_.find(path);
  if (it != tokenizers_.end()) return it->second;
  // Read through a confined open (a symlink swapped in after submission is
  // refused); a tokenizer that cannot be read leaves the text empty.
  absl::StatusOr<format::Tokenizer> loaded =
      absl::FailedPreconditionError("tokenizer not read");
  if (absl::StatusOr<format::MappedFile> file =
          format::MappedFile::Open(path, roots_);
      file.ok()) {
    loaded = format::Tokenizer::FromJson(file->data(), path);
  }
  std::shared_ptr<const format::Tokenizer> tokenizer;
  if (loaded.ok()) {
    tokenizer = std::make_shared<const format::Tokenizer>(*std::move(loaded));
  }
  tokenizers_[path] = tokenizer;
  return tokenizer;
}

absl::Status QueryServiceImpl::FillContexts(const v1::JobSpec& spec, int before,
                                            int after,
                                            v1::FeatureHistory* history) {
  const v1::DataSpec& data = spec.data();
  absl::StatusOr<format::TokenDtype> dtype =
      format::ParseTokenDtype(data.token_dtype());
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<format::TokenFile> tokens =
      format::TokenFile::Open(data.tokens_path(), *dtype, roots_);
  if (!tokens.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "contexts need the job's token file: ", tokens.status().message()));
  }
  const int context_length = data.context_length();
  absl::StatusOr<format::TokenSplit> split =
      format::SplitTokens(tokens->size(), context_length);
  if (!split.ok()) return split.status();
  const int64_t num_contexts =
      (spec.analysis().analysis_tokens() + context_length - 1) / context_length;
  const std::vector<int64_t> starts =
      format::HeldOutContexts(*split, context_length, num_contexts);
  std::shared_ptr<const format::Tokenizer> tokenizer =
      data.tokenizer_path().empty() ? nullptr
                                    : TokenizerAt(data.tokenizer_path());
  auto decode = [&](const std::vector<uint32_t>& ids) {
    absl::StatusOr<std::string> text = tokenizer->Decode(ids);
    return text.ok() ? *text : std::string();
  };
  for (v1::FeaturePoint& point : *history->mutable_points()) {
    for (v1::FeatureContext& context : *point.mutable_contexts()) {
      const int64_t row = context.position() / context_length;
      const int offset = static_cast<int>(context.position() % context_length);
      if (row >= num_contexts) {
        return absl::DataLossError(absl::StrCat(
            "stored position ", context.position(),
            " lies beyond the analysis set's ", num_contexts, " contexts"));
      }
      const int first = std::max(0, offset - before);
      const int last = std::min(context_length - 1, offset + after);
      const int64_t window_begin = starts[row] + first;
      const int64_t window_end =
          std::min<int64_t>(starts[row] + last + 1, tokens->size());
      std::vector<uint32_t> ids(
          static_cast<size_t>(std::max<int64_t>(0, window_end - window_begin)));
      if (absl::Status read = tokens->Read(
              window_begin, static_cast<int64_t>(ids.size()), ids.data());
          !read.ok()) {
        return read;
      }
      for (uint32_t id : ids) context.add_window(static_cast<int32_t>(id));
      context.set_focus(offset - first);
      if (tokenizer != nullptr &&
          offset - first < static_cast<int>(ids.size())) {
        const auto focus = ids.begin() + (offset - first);
        context.set_text(absl::StrCat(decode({ids.begin(), focus}), "[[",
                                      decode({*focus}), "]]",
                                      decode({focus + 1, ids.end()})));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::FillDecoders(const std::string& job_id,
                                            int32_t layer,
                                            v1::FeatureHistory* history) const {
  for (v1::FeaturePoint& point : *history->mutable_points()) {
    absl::StatusOr<std::string> bytes =
        results_->GetSaeWeights(job_id, layer, point.step());
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<format::SafetensorsFile> file =
        format::SafetensorsFile::FromBytes(
            *std::move(bytes), absl::StrCat("SAE of job '", job_id, "' layer ",
                                            layer, " step ", point.step()));
    if (!file.ok()) return file.status();
    const format::TensorView* w = file->Find("W_dec");
    if (w == nullptr || w->dtype != format::Dtype::kF32 ||
        w->shape.size() != 2 || history->feature_id() >= w->shape[0]) {
      return absl::DataLossError(absl::StrCat(
          "SAE of job '", job_id, "' layer ", layer, " step ", point.step(),
          " has no F32 W_dec holding feature ", history->feature_id()));
    }
    const int64_t d_in = w->shape[1];
    point.mutable_decoder()->Resize(static_cast<int>(d_in), 0.0f);
    std::memcpy(point.mutable_decoder()->mutable_data(),
                w->bytes.data() + history->feature_id() * d_in * sizeof(float),
                d_in * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::SummaryMissing(const v1::Job& job,
                                              int32_t layer) const {
  if (job.spec().analysis().analysis_tokens() <= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", job.job_id(),
        "' has no analysis pass (spec.analysis.analysis_tokens is 0)"));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "the analysis summary of job '", job.job_id(), "' layer ", layer,
      " is not computed yet (job ", v1::JobState_Name(job.state()), ", ",
      job.progress().analysis_tasks_done(), "/",
      job.progress().analysis_tasks_total(), " analysis tasks done)"));
}

absl::Status QueryServiceImpl::DoGetDriftSummary(
    const v1::GetDriftSummaryRequest& request, v1::DriftSummary* response) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  absl::StatusOr<std::optional<v1::DriftSummary>> summary =
      results_->GetDriftSummary(request.job_id(), request.layer());
  if (!summary.ok()) return summary.status();
  if (!summary->has_value()) return SummaryMissing(*job, request.layer());
  *response = **std::move(summary);
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::DoListFeatures(
    const v1::ListFeaturesRequest& request,
    v1::ListFeaturesResponse* response) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  if (!v1::FeatureKind_IsValid(request.kind())) {
    return absl::InvalidArgumentError(
        absl::StrCat("kind: ", request.kind(), " is not a feature kind"));
  }
  if (!v1::ListFeaturesRequest::Order_IsValid(request.order_by())) {
    return absl::InvalidArgumentError(
        absl::StrCat("order_by: ", request.order_by(), " is not an order"));
  }
  if (request.page_size() < 0 || request.page_size() > kMaxFeaturePage) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: ", request.page_size(), " out of range [0, ",
                     kMaxFeaturePage, "]"));
  }
  const int page_size =
      request.page_size() == 0 ? kDefaultFeaturePage : request.page_size();
  int64_t offset = 0;
  if (!request.page_token().empty() &&
      (!absl::SimpleAtoi(request.page_token(), &offset) || offset < 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_token: '", request.page_token(), "' is malformed"));
  }
  absl::StatusOr<std::optional<v1::DriftSummary>> drift =
      results_->GetDriftSummary(request.job_id(), request.layer());
  if (!drift.ok()) return drift.status();
  if (!drift->has_value()) return SummaryMissing(*job, request.layer());

  std::vector<v1::FeatureSummary> matched;
  absl::Status scanned = results_->ScanFeatureSummaries(
      request.job_id(), request.layer(), [&](const v1::FeatureSummary& f) {
        if (request.kind() != v1::FEATURE_KIND_UNSPECIFIED &&
            f.kind() != request.kind()) {
          return true;
        }
        if (request.has_min_formation_step() &&
            (!f.has_formation_step() ||
             f.formation_step() < request.min_formation_step())) {
          return true;
        }
        if (request.has_max_formation_step() &&
            (!f.has_formation_step() ||
             f.formation_step() > request.max_formation_step())) {
          return true;
        }
        if (request.has_min_frequency() &&
            f.final_frequency() < request.min_frequency()) {
          return true;
        }
        if (request.has_max_frequency() &&
            f.final_frequency() > request.max_frequency()) {
          return true;
        }
        matched.push_back(f);
        return true;
      });
  if (!scanned.ok()) return scanned;
  auto by_id = [](const v1::FeatureSummary& a, const v1::FeatureSummary& b) {
    return a.feature_id() < b.feature_id();
  };
  switch (request.order_by()) {
    case v1::ListFeaturesRequest::FORMATION_STEP:
      std::stable_sort(
          matched.begin(), matched.end(),
          [](const v1::FeatureSummary& a, const v1::FeatureSummary& b) {
            const int64_t none = std::numeric_limits<int64_t>::max();
            return (a.has_formation_step() ? a.formation_step() : none) <
                   (b.has_formation_step() ? b.formation_step() : none);
          });
      break;
    case v1::ListFeaturesRequest::FINAL_DRIFT:
      std::stable_sort(
          matched.begin(), matched.end(),
          [](const v1::FeatureSummary& a, const v1::FeatureSummary& b) {
            return a.cos_first_to_final() < b.cos_first_to_final();
          });
      break;
    case v1::ListFeaturesRequest::FREQUENCY:
      std::stable_sort(
          matched.begin(), matched.end(),
          [](const v1::FeatureSummary& a, const v1::FeatureSummary& b) {
            return a.final_frequency() > b.final_frequency();
          });
      break;
    default:
      std::stable_sort(matched.begin(), matched.end(), by_id);
      break;
  }
  response->set_total(static_cast<int32_t>(matched.size()));
  const int64_t total = static_cast<int64_t>(matched.size());
  if (offset > total) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_token: '", request.page_token(),
                     "' lies beyond the last of the ", total, " features"));
  }
  // offset <= total: no overflow.
  const int64_t end = std::min<int64_t>(total, offset + page_size);
  for (int64_t i = offset; i < end; ++i) {
    *response->add_features() = std::move(matched[i]);
  }
  if (end < static_cast<int64_t>(matched.size())) {
    response->set_next_page_token(absl::StrCat(end));
  }
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::DoExportSae(
    const v1::ExportSaeRequest& request,
    grpc::ServerWriter<v1::ExportChunk>* writer) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  const v1::JobSpec& spec = job->spec();
  std::optional<int64_t> step;
  for (const v1::Checkpoint& checkpoint : spec.model().checkpoints()) {
    if (request.has_step() ? checkpoint.step() == request.step()
                           : !step.has_value() || checkpoint.step() > *step) {
      step = checkpoint.step();
    }
  }
  if (!step.has_value()) {
    return absl::NotFoundError(absl::StrCat("step ", request.step(),
                                            " is not a checkpoint of job '",
                                            request.job_id(), "'"));
  }
  absl::StatusOr<std::string> weights =
      results_->GetSaeWeights(request.job_id(), request.layer(), *step);
  if (!weights.ok()) return weights.status();
  absl::StatusOr<format::SafetensorsFile> file =
      format::SafetensorsFile::FromBytes(*weights, "stored SAE");
  if (!file.ok()) return file.status();
  const format::TensorView* w_dec = file->Find("W_dec");
  if (w_dec == nullptr || w_dec->shape.size() != 2) {
    return absl::DataLossError("stored SAE has no 2-D W_dec");
  }
  const format::SaelensConfig cfg =
      SaelensConfigForJob(spec, request.job_id(), request.layer(), *step,
                          w_dec->shape[1], w_dec->shape[0]);
  // The weights first, cfg.json last: a reader that has the config has the
  // weights it describes.
  const std::pair<const char*, std::string> files[] = {
      {format::kSaelensWeightsFile, *std::move(weights)},
      {format::kSaelensConfigFile, format::SaelensConfigToJson(cfg)}};
  for (const auto& [name, bytes] : files) {
    v1::ExportChunk prototype;
    prototype.set_file(name);
    prototype.set_step(*step);
    if (absl::Status s = WriteChunked(bytes, kExportChunkBytes, prototype,
                                      writer, "ExportSae");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::DoGetCheckpointMetrics(
    const v1::GetCheckpointMetricsRequest& request,
    v1::GetCheckpointMetricsResponse* response) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  absl::StatusOr<std::vector<v1::CheckpointMetrics>> metrics =
      results_->GetCheckpointMetrics(request.job_id(), request.layer());
  if (!metrics.ok()) return metrics.status();
  for (v1::CheckpointMetrics& m : *metrics) {
    *response->add_checkpoints() = std::move(m);
  }
  return absl::OkStatus();
}

absl::Status QueryServiceImpl::DoGetQualityChecks(
    const v1::GetQualityChecksRequest& request,
    v1::GetQualityChecksResponse* response) {
  absl::StatusOr<v1::Job> job = JobWithLayer(request.job_id(), request.layer());
  if (!job.ok()) return job.status();
  absl::StatusOr<std::vector<v1::CheckpointMetrics>> metrics =
      results_->GetCheckpointMetrics(request.job_id(), request.layer());
  if (!metrics.ok()) return metrics.status();
  std::vector<analysis::ReferencePoint> points;
  for (v1::CheckpointMetrics& m : *metrics) {
    if (!m.has_reference()) continue;
    const v1::ReferenceCheck& r = m.reference();
    analysis::ReferencePoint& p = points.emplace_back();
    p.step = m.step();
    p.chain_index = m.chain_index();
    p.chain_loss = m.held_out_loss();
    p.chain_l0 = m.l0();
    p.chain_median_cos_init = m.median_decoder_cos_init();
    p.chain_converged = m.converged();
    p.reference_loss = r.held_out_loss();
    p.reference_l0 = r.l0();
    p.reference_median_cos_init = r.median_decoder_cos_init();
    p.match_median = r.match_median_cosine();
    p.match_above_0_9 = r.match_fraction_above_0_9();
    p.random_median = r.random_median_cosine();
    if (r.has_speedup()) {
      const v1::RecurrenceSpeedup& in = r.speedup();
      analysis::RecurrenceSpeedup& s = p.speedup.emplace();
      s.tolerance = in.tolerance();
      s.scratch_loss = in.scratch_loss();
      s.target_loss = in.target_loss();
      s.scratch_tokens = in.scratch_tokens();
      s.scratch_l0 = in.scratch_l0();
      s.batch_tokens = std::max(1, job->spec().sae().batch_size());
      if (in.scratch_curve_size() > 0) {
        const v1::LossPoint& last = *in.scratch_curve().rbegin();
        s.scratch_curve.emplace_back(last.tokens(), last.loss());
      }
      for (const auto& [arm, arm_in] : {std::pair{&s.same_lr, &in.same_lr()},
                                        std::pair{&s.slow_lr, &in.slow_lr()}}) {
        arm->lr = arm_in->lr();
        arm->init_loss = arm_in->init_loss();
        if (arm_in->has_tokens()) arm->tokens = arm_in->tokens();
        arm->l0 = arm_in->l0();
      }
    }
    *response->add_checkpoints() = std::move(m);
  }
  for (const analysis::QualityVerdict& v : analysis::QualityVerdicts(points)) {
    v1::QualityVerdict* out = response->add_verdicts();
    out->set_check(v.check);
    out->set_step(v.step);
    out->set_passed(v.passed);
    out->set_verdict(v.verdict);
  }
  return absl::OkStatus();
}

}  // namespace saetrack::server
