#include "server/internal/result_store.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "format/crc32c.h"
#include "server/internal/records.pb.h"
#include "storage/keys.h"

namespace saetrack::server {

using storage::Column;

void ResultStore::AddSaeWeights(const std::string& job_id, int32_t layer,
                                int64_t step, std::string weights,
                                storage::WriteBatch* batch) {
  batch->Put(Column::kSaeWeights, storage::SaeWeightsKey(job_id, layer, step),
             std::move(weights));
}

void ResultStore::AddFeaturePoints(const std::string& job_id, int32_t layer,
                                   int64_t step, int32_t chain_index,
                                   const v1::FeatureStatsBlock& stats,
                                   storage::WriteBatch* batch) {
  const int n = stats.frequency_size();
  const bool has_cos = stats.decoder_cos_prev_size() == n;
  v1::FeaturePoint point;
  point.set_step(step);
  point.set_chain_index(chain_index);
  std::string value;
  for (int i = 0; i < n; ++i) {
    point.set_frequency(stats.frequency(i));
    point.set_mean_activation(stats.mean_activation(i));
    point.set_max_activation(stats.max_activation(i));
    if (has_cos) point.set_decoder_cos_prev(stats.decoder_cos_prev(i));
    point.set_encoder_norm(stats.encoder_norm(i));
    point.SerializeToString(&value);
    batch->Put(Column::kFeatureHistory,
               storage::FeatureHistoryKey(job_id, layer, i, step), value);
  }
}

void ResultStore::AddCheckpointMetrics(const std::string& job_id,
                                       const v1::CheckpointMetrics& metrics,
                                       storage::WriteBatch* batch) {
  batch->Put(Column::kCheckpointMetrics,
             storage::CheckpointMetricsKey(job_id, metrics.layer(),
                                           metrics.chain_index()),
             metrics.SerializeAsString());
}

absl::Status ResultStore::AddAnalysis(const std::string& job_id, int32_t layer,
                                      int64_t step,
                                      const v1::FeatureAnalysisBlock& block,
                                      bool keep_block,
                                      storage::WriteBatch* batch) const {
  const int n = block.frequency_size();
  const int top_k = block.top_k();
  std::string value;
  for (int i = 0; i < n; ++i) {
    const std::string key = storage::FeatureHistoryKey(job_id, layer, i, step);
    absl::StatusOr<std::string> stored =
        store_->Get(Column::kFeatureHistory, key);
    if (absl::IsNotFound(stored.status())) {
      return absl::NotFoundError(
          absl::StrCat("no feature point stored for job '", job_id, "' layer ",
                       layer, " feature ", i, " step ", step));
    }
    if (!stored.ok()) return stored.status();
    v1::FeaturePoint point;
    if (!point.ParseFromString(*stored)) {
      return absl::DataLossError(absl::StrCat("feature point of job '", job_id,
                                              "' layer ", layer, " feature ", i,
                                              " step ", step, " is corrupt"));
    }
    point.set_analysed(true);
    point.set_frequency(block.frequency(i));
    point.set_mean_activation(block.mean_activation(i));
    point.set_max_activation(block.max_activation(i));
    point.clear_progress_activation();
    point.clear_progress_feature();
    if (std::isfinite(block.progress_activation(i))) {
      point.set_progress_activation(block.progress_activation(i));
    }
    if (std::isfinite(block.progress_feature(i))) {
      point.set_progress_feature(block.progress_feature(i));
    }
    point.clear_progress_token_controlled();
    if (i < block.progress_token_controlled_size() &&
        std::isfinite(block.progress_token_controlled(i))) {
      point.set_progress_token_controlled(block.progress_token_controlled(i));
    }
    point.clear_logit_effects();
    const int logit_k = block.logit_effects_k();
    if (logit_k > 0 && block.promoted_tokens_size() >= (i + 1) * logit_k) {
      v1::LogitEffects* effects = point.mutable_logit_effects();
      for (int j = i * logit_k; j < (i + 1) * logit_k; ++j) {
        v1::LogitEffect* promoted = effects->add_promoted();
        promoted->set_token_id(block.promoted_tokens(j));
        promoted->set_value(block.promoted_values(j));
        v1::LogitEffect* suppressed = effects->add_suppressed();
        suppressed->set_token_id(block.suppressed_tokens(j));
        suppressed->set_value(block.suppressed_values(j));
      }
    }
    point.clear_contexts();
    point.SerializeToString(&value);
    batch->Put(Column::kFeatureHistory, key, value);
    v1::FeaturePoint contexts;
    contexts.set_step(step);
    for (int j = i * top_k; j < (i + 1) * top_k; ++j) {
      if (block.top_positions(j) < 0) break;
      v1::FeatureContext* context = contexts.add_contexts();
      context->set_position(block.top_positions(j));
      context->set_activation(block.top_values(j));
      context->set_token(block.top_tokens(j));
    }
    AddFeatureContexts(job_id, layer, i, contexts, batch);
  }
  if (keep_block) {
    batch->Put(Column::kAnalysis,
               storage::AnalysisBlockKey(job_id, layer, step),
               block.SerializeAsString());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResultStore::GetAnalysisBlock(
    const std::string& job_id, int32_t layer, int64_t step) const {
  absl::StatusOr<std::string> value = store_->Get(
      Column::kAnalysis, storage::AnalysisBlockKey(job_id, layer, step));
  if (absl::IsNotFound(value.status())) {
    return absl::NotFoundError(
        absl::StrCat("no analysis block stored for job '", job_id, "' layer ",
                     layer, " step ", step));
  }
  return value;
}

void ResultStore::AddFeatureSummary(const std::string& job_id, int32_t layer,
                                    const v1::FeatureSummary& summary,
                                    storage::WriteBatch* batch) {
  batch->Put(Column::kFeatureSummaries,
             storage::FeatureSummaryKey(job_id, layer, summary.feature_id()),
             summary.SerializeAsString());
}

void ResultStore::AddDriftSummary(const v1::DriftSummary& summary,
                                  storage::WriteBatch* batch) {
  batch->Put(Column::kAnalysis,
             storage::DriftSummaryKey(summary.job_id(), summary.layer()),
             summary.SerializeAsString());
}

void ResultStore::AddFeaturePoint(const std::string& job_id, int32_t layer,
                                  int32_t feature,
                                  const v1::FeaturePoint& point,
                                  storage::WriteBatch* batch) {
  batch->Put(Column::kFeatureHistory,
             storage::FeatureHistoryKey(job_id, layer, feature, point.step()),
             point.SerializeAsString());
}

void ResultStore::AddFeatureContexts(const std::string& job_id, int32_t layer,
                                     int32_t feature,
                                     const v1::FeaturePoint& point,
                                     storage::WriteBatch* batch) {
  batch->Put(Column::kFeatureContexts,
             storage::FeatureHistoryKey(job_id, layer, feature, point.step()),
             point.SerializeAsString());
}

namespace {

template <typename T>
absl::StatusOr<std::optional<T>> GetMessage(const storage::KvStore& store,
                                            Column column,
                                            const std::string& key,
                                            const std::string& what) {
  absl::StatusOr<std::string> value = store.Get(column, key);
  if (absl::IsNotFound(value.status())) return std::nullopt;
  if (!value.ok()) return value.status();
  T message;
  if (!message.ParseFromString(*value)) {
    return absl::DataLossError(absl::StrCat(what, " is corrupt"));
  }
  return message;
}

}  // namespace

absl::StatusOr<std::optional<v1::FeatureSummary>>
ResultStore::GetFeatureSummary(const std::string& job_id, int32_t layer,
                               int32_t feature) const {
  return GetMessage<v1::FeatureSummary>(
      *store_, Column::kFeatureSummaries,
      storage::FeatureSummaryKey(job_id, layer, feature),
      absl::StrCat("feature summary of job '", job_id, "' layer ", layer,
                   " feature ", feature));
}

absl::StatusOr<std::optional<v1::FeaturePoint>>
ResultStore::GetFeatureContextsAt(const std::string& job_id, int32_t layer,
                                  int32_t feature, int64_t step) const {
  return GetMessage<v1::FeaturePoint>(
      *store_, Column::kFeatureContexts,
      storage::FeatureHistoryKey(job_id, layer, feature, step),
      absl::StrCat("contexts of job '", job_id, "' layer ", layer, " feature ",
                   feature, " step ", step));
}

absl::StatusOr<std::optional<v1::DriftSummary>> ResultStore::GetDriftSummary(
    const std::string& job_id, int32_t layer) const {
  return GetMessage<v1::DriftSummary>(
      *store_, Column::kAnalysis, storage::DriftSummaryKey(job_id, layer),
      absl::StrCat("drift summary of job '", job_id, "' layer ", layer));
}

absl::Status ResultStore::ScanFeatureSummaries(
    const std::string& job_id, int32_t layer,
    const std::function<bool(const v1::FeatureSummary&)>& fn) const {
  bool corrupt = false;
  v1::FeatureSummary summary;
  absl::Status s = store_->Scan(
      Column::kFeatureSummaries, storage::FeatureSummaryPrefix(job_id, layer),
      "", [&](std::string_view, std::string_view value) {
        if (!summary.ParseFromArray(value.data(),
                                    static_cast<int>(value.size()))) {
          corrupt = true;
          return false;
        }
        return fn(summary);
      });
  if (!s.ok()) return s;
  if (corrupt) {
    return absl::DataLossError(absl::StrCat("a feature summary of job '",
                                            job_id, "' layer ", layer,
                                            " is corrupt"));
  }
  return absl::OkStatus();
}

namespace {

std::string PendingSaeKey(const std::string& job_id, int32_t layer,
                          int64_t step, int64_t epoch) {
  return absl::StrCat("pending_sae/", storage::SaeWeightsPartKey(
                                          job_id, layer, step, epoch, 0));
}

constexpr char kPendingSaePrefix[] = "pending_sae/";

absl::Status DeleteParts(storage::KvStore* store, const SaeWeightsManifest& m) {
  storage::WriteBatch batch;
  for (int32_t i = 0; i < m.parts(); ++i) {
    batch.Delete(Column::kSaeWeights,
                 storage::SaeWeightsPartKey(m.job_id(), m.layer(), m.step(),
                                            m.lease_epoch(), i));
  }
  batch.Delete(Column::kMeta,
               PendingSaeKey(m.job_id(), m.layer(), m.step(), m.lease_epoch()));
  return store->Write(batch, {});
}

// The stored manifest of (job, layer, step), nullopt when there is none.
absl::StatusOr<std::optional<SaeWeightsManifest>> GetManifest(
    const storage::KvStore* store, const std::string& job_id, int32_t layer,
    int64_t step) {
  absl::StatusOr<std::string> bytes = store->Get(
      Column::kSaeWeights, storage::SaeWeightsManifestKey(job_id, layer, step));
  if (absl::IsNotFound(bytes.status())) return std::nullopt;
  if (!bytes.ok()) return bytes.status();
  SaeWeightsManifest m;
  if (!m.ParseFromString(*bytes)) {
    return absl::DataLossError(
        absl::StrCat("the parts manifest of the SAE of job '", job_id,
                     "' layer ", layer, " step ", step, " is corrupt"));
  }
  return m;
}

}  // namespace

absl::Status ResultStore::StageSaeWeights(const std::string& job_id,
                                          int32_t layer, int64_t step,
                                          int64_t lease_epoch, int64_t size,
                                          const ReadFn& read,
                                          storage::WriteBatch* batch) const {
  if (size <= sae_part_bytes_) {
    std::string all;
    if (absl::Status s = read(0, size, &all); !s.ok()) return s;
    // A smaller SAE replaces a parted one stored before (a job re-run).
    batch->Delete(Column::kSaeWeights,
                  storage::SaeWeightsManifestKey(job_id, layer, step));
    AddSaeWeights(job_id, layer, step, std::move(all), batch);
    return absl::OkStatus();
  }
  SaeWeightsManifest m;
  m.set_job_id(job_id);
  m.set_layer(layer);
  m.set_step(step);
  m.set_lease_epoch(lease_epoch);
  m.set_total_bytes(size);
  m.set_part_bytes(sae_part_bytes_);
  m.set_parts(
      static_cast<int32_t>((size + sae_part_bytes_ - 1) / sae_part_bytes_));
  const std::string pending = PendingSaeKey(job_id, layer, step, lease_epoch);
  {
    storage::WriteBatch note;
    note.Put(Column::kMeta, pending, m.SerializeAsString());
    if (absl::Status s = store_->Write(note, {}); !s.ok()) return s;
  }
  uint32_t crc = 0;
  std::string part;
  for (int32_t i = 0; i < m.parts(); ++i) {
    const int64_t offset = int64_t{i} * sae_part_bytes_;
    part.clear();
    if (absl::Status s =
            read(offset, std::min(sae_part_bytes_, size - offset), &part);
        !s.ok()) {
      return s;
    }
    crc = format::Crc32c(part, crc);
    storage::WriteBatch one;
    one.Put(Column::kSaeWeights,
            storage::SaeWeightsPartKey(job_id, layer, step, lease_epoch, i),
            std::move(part));
    part = std::string();
    if (absl::Status s = store_->Write(one, {}); !s.ok()) return s;
  }
  m.set_crc32c(crc);
  batch->Delete(Column::kSaeWeights,
                storage::SaeWeightsKey(job_id, layer, step));
  batch->Put(Column::kSaeWeights,
             storage::SaeWeightsManifestKey(job_id, layer, step),
             m.SerializeAsString());
  batch->Delete(Column::kMeta, pending);
  return absl::OkStatus();
}

absl::Status ResultStore::AbandonSaeParts(const std::string& job_id,
                                          int32_t layer, int64_t step,
                                          int64_t lease_epoch) const {
  absl::StatusOr<std::string> pending = store_->Get(
      Column::kMeta, PendingSaeKey(job_id, layer, step, lease_epoch));
  if (absl::IsNotFound(pending.status())) return absl::OkStatus();
  if (!pending.ok()) return pending.status();
  SaeWeightsManifest m;
  if (!m.ParseFromString(*pending)) {
    return absl::DataLossError("a pending SAE parts record is corrupt");
  }
  absl::StatusOr<std::optional<SaeWeightsManifest>> stored =
      GetManifest(store_, job_id, layer, step);
  if (!stored.ok()) return stored.status();
  if (stored->has_value() && (*stored)->lease_epoch() == lease_epoch) {
    // Committed by this very lease (a retried completion): the parts live.
    storage::WriteBatch batch;
    batch.Delete(Column::kMeta,
                 PendingSaeKey(job_id, layer, step, lease_epoch));
    return store_->Write(batch, {});
  }
  return DeleteParts(store_, m);
}

absl::StatusOr<int> ResultStore::RecoverSaeParts() const {
  std::vector<std::string> pending;
  absl::Status scan =
      store_->Scan(Column::kMeta, kPendingSaePrefix, "",
                   [&](std::string_view /*key*/, std::string_view value) {
                     pending.emplace_back(value);
                     return true;
                   });
  if (!scan.ok()) return scan;
  int cleaned = 0;
  for (const std::string& bytes : pending) {
    SaeWeightsManifest m;
    if (!m.ParseFromString(bytes)) {
      return absl::DataLossError("a pending SAE parts record is corrupt");
    }
    if (absl::Status s =
            AbandonSaeParts(m.job_id(), m.layer(), m.step(), m.lease_epoch());
        !s.ok()) {
      return s;
    }
    ++cleaned;
  }
  return cleaned;
}

absl::StatusOr<int64_t> ResultStore::ReadSaeWeights(
    const std::string& job_id, int32_t layer, int64_t step,
    const std::function<absl::Status(std::string_view)>& fn) const {
  const std::string what = absl::StrCat("the SAE of job '", job_id, "' layer ",
                                        layer, " step ", step);
  absl::StatusOr<std::string> value = store_->Get(
      Column::kSaeWeights, storage::SaeWeightsKey(job_id, layer, step));
  if (value.ok()) {
    if (absl::Status s = fn(*value); !s.ok()) return s;
    return static_cast<int64_t>(value->size());
  }
  if (!absl::IsNotFound(value.status())) return value.status();
  absl::StatusOr<std::optional<SaeWeightsManifest>> m =
      GetManifest(store_, job_id, layer, step);
  if (!m.ok()) return m.status();
  if (!m->has_value()) {
    return absl::NotFoundError(absl::StrCat("no SAE stored for job '", job_id,
                                            "' layer ", layer, " step ", step));
  }
  const SaeWeightsManifest& manifest = **m;
  int64_t total = 0;
  uint32_t crc = 0;
  for (int32_t i = 0; i < manifest.parts(); ++i) {
    absl::StatusOr<std::string> part =
        store_->Get(Column::kSaeWeights,
                    storage::SaeWeightsPartKey(job_id, layer, step,
                                               manifest.lease_epoch(), i));
    if (absl::IsNotFound(part.status())) {
      return absl::DataLossError(absl::StrCat(what, ": part ", i, " of ",
                                              manifest.parts(), " is missing"));
    }
    if (!part.ok()) return part.status();
    total += static_cast<int64_t>(part->size());
    crc = format::Crc32c(*part, crc);
    if (absl::Status s = fn(*part); !s.ok()) return s;
  }
  if (total != manifest.total_bytes() || crc != manifest.crc32c()) {
    return absl::DataLossError(
        absl::StrCat(what, ": its parts hold ", total, " bytes with CRC-32C ",
                     crc, ", its manifest says ", manifest.total_bytes(),
                     " bytes with ", manifest.crc32c()));
  }
  return total;
}

absl::StatusOr<std::string> ResultStore::GetSaeWeights(
    const std::string& job_id, int32_t layer, int64_t step) const {
  absl::StatusOr<std::string> value = store_->Get(
      Column::kSaeWeights, storage::SaeWeightsKey(job_id, layer, step));
  if (!absl::IsNotFound(value.status())) return value;  // Stored whole.
  std::string all;
  absl::StatusOr<int64_t> n =
      ReadSaeWeights(job_id, layer, step, [&](std::string_view piece) {
        if (all.empty()) {
          all = std::string(piece);
        } else {
          all.append(piece);
        }
        return absl::OkStatus();
      });
  if (!n.ok()) return n.status();
  return all;
}

namespace {

// Parses every value under `prefix` of `column`, in key order, as a T.
// kDataLoss naming `what` when one does not parse.
template <typename T>
absl::StatusOr<std::vector<T>> ScanMessages(const storage::KvStore& store,
                                            Column column,
                                            const std::string& prefix,
                                            const std::string& what) {
  std::vector<T> messages;
  bool corrupt = false;
  absl::Status s = store.Scan(
      column, prefix, "", [&](std::string_view, std::string_view value) {
        corrupt = !messages.emplace_back().ParseFromArray(
            value.data(), static_cast<int>(value.size()));
        return !corrupt;
      });
  if (!s.ok()) return s;
  if (corrupt) return absl::DataLossError(absl::StrCat(what, " is corrupt"));
  return messages;
}

}  // namespace

absl::StatusOr<std::vector<v1::FeaturePoint>> ResultStore::GetFeatureHistory(
    const std::string& job_id, int32_t layer, int32_t feature) const {
  absl::StatusOr<std::vector<v1::FeaturePoint>> points =
      ScanMessages<v1::FeaturePoint>(
          *store_, Column::kFeatureHistory,
          storage::FeatureHistoryPrefix(job_id, layer, feature),
          absl::StrCat("feature history of job '", job_id, "' layer ", layer,
                       " feature ", feature));
  if (!points.ok()) return points;
  // Keys are in step order; a BACKWARD chain runs against it.
  std::stable_sort(points->begin(), points->end(),
                   [](const v1::FeaturePoint& a, const v1::FeaturePoint& b) {
                     return a.chain_index() < b.chain_index();
                   });
  return points;
}

absl::StatusOr<std::vector<v1::FeaturePoint>> ResultStore::GetFeatureContexts(
    const std::string& job_id, int32_t layer, int32_t feature) const {
  return ScanMessages<v1::FeaturePoint>(
      *store_, Column::kFeatureContexts,
      storage::FeatureHistoryPrefix(job_id, layer, feature),
      absl::StrCat("contexts of job '", job_id, "' layer ", layer, " feature ",
                   feature));
}

absl::StatusOr<std::vector<v1::CheckpointMetrics>>
ResultStore::GetCheckpointMetrics(const std::string& job_id,
                                  int32_t layer) const {
  return ScanMessages<v1::CheckpointMetrics>(
      *store_, Column::kCheckpointMetrics,
      storage::CheckpointMetricsPrefix(job_id, layer),
      absl::StrCat("checkpoint metrics of job '", job_id, "' layer ", layer));
}

}  // namespace saetrack::server
