#include "analysis/drift.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "format/safetensors.h"

namespace saetrack::analysis {
namespace {

// Decoder rows normalised to unit length (zero rows stay zero).
struct UnitRows {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;
};

absl::StatusOr<UnitRows> ReadDecoder(int index, const SaeWeightsSource& source,
                                     const UnitRows* like) {
  absl::StatusOr<std::string> bytes = source(index);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<format::SafetensorsFile> file =
      format::SafetensorsFile::FromBytes(
          *std::move(bytes), absl::StrCat("SAE weights of checkpoint ", index));
  if (!file.ok()) return file.status();
  const format::TensorView* w = file->Find("W_dec");
  if (w == nullptr || w->dtype != format::Dtype::kF32 || w->shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", index, ": no F32 W_dec [d_sae, d_in] in its weights"));
  }
  UnitRows out;
  out.rows = w->shape[0];
  out.cols = w->shape[1];
  if (like != nullptr && (out.rows != like->rows || out.cols != like->cols)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", index, ": W_dec is [", out.rows, ", ", out.cols,
        "], the final checkpoint's is [", like->rows, ", ", like->cols, "]"));
  }
  out.data.resize(static_cast<size_t>(out.rows * out.cols));
  std::memcpy(out.data.data(), w->bytes.data(), w->bytes.size());
  for (int64_t r = 0; r < out.rows; ++r) {
    float* row = out.data.data() + r * out.cols;
    double norm = 0;
    for (int64_t c = 0; c < out.cols; ++c) norm += double{row[c]} * row[c];
    norm = std::sqrt(norm);
    if (norm == 0) continue;
    for (int64_t c = 0; c < out.cols; ++c)
      row[c] = static_cast<float>(row[c] / norm);
  }
  return out;
}

std::vector<float> RowCosines(const UnitRows& a, const UnitRows& b) {
  std::vector<float> cos(static_cast<size_t>(a.rows));
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.data.data() + r * a.cols;
    const float* y = b.data.data() + r * b.cols;
    double dot = 0;
    for (int64_t c = 0; c < a.cols; ++c) dot += double{x[c]} * y[c];
    cos[r] = static_cast<float>(dot);
  }
  return cos;
}

Quantiles QuantilesOf(const std::vector<float>& values) {
  std::vector<double> v(values.begin(), values.end());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Quantiles q;
  q.q10 = Quantile(v, 0.10).value_or(nan);
  q.q25 = Quantile(v, 0.25).value_or(nan);
  q.q50 = Quantile(v, 0.50).value_or(nan);
  q.q75 = Quantile(v, 0.75).value_or(nan);
  q.q90 = Quantile(v, 0.90).value_or(nan);
  return q;
}

}  // namespace

absl::StatusOr<DecoderDrift> ComputeDecoderDrift(
    int num_checkpoints, const SaeWeightsSource& source) {
  if (num_checkpoints < 1) {
    return absl::InvalidArgumentError("decoder drift: no checkpoints");
  }
  absl::StatusOr<UnitRows> final_rows =
      ReadDecoder(num_checkpoints - 1, source, nullptr);
  if (!final_rows.ok()) return final_rows.status();
  DecoderDrift drift;
  std::optional<UnitRows> previous;
  for (int t = 0; t < num_checkpoints; ++t) {
    absl::StatusOr<UnitRows> rows = t == num_checkpoints - 1
                                        ? *final_rows
                                        : ReadDecoder(t, source, &*final_rows);
    if (!rows.ok()) return rows.status();
    drift.cos_to_final.push_back(RowCosines(*rows, *final_rows));
    drift.cos_to_previous.push_back(
        previous.has_value()
            ? RowCosines(*rows, *previous)
            : std::vector<float>(static_cast<size_t>(rows->rows),
                                 std::numeric_limits<float>::quiet_NaN()));
    previous = *std::move(rows);
  }
  return drift;
}

absl::StatusOr<DriftSummary> SummariseDrift(const std::vector<int64_t>& steps,
                                            const DecoderDrift& drift) {
  if (steps.size() != drift.cos_to_final.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("drift summary: ", steps.size(), " steps for ",
                     drift.cos_to_final.size(), " checkpoints"));
  }
  for (size_t i = 1; i < steps.size(); ++i) {
    if (steps[i] <= steps[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("drift summary: steps must increase (index ", i, ")"));
    }
  }
  DriftSummary summary;
  summary.steps = steps;
  std::vector<double> medians;
  for (size_t t = 0; t < steps.size(); ++t) {
    summary.to_final.push_back(QuantilesOf(drift.cos_to_final[t]));
    summary.to_previous.push_back(QuantilesOf(drift.cos_to_previous[t]));
    medians.push_back(summary.to_final.back().q50);
  }
  if (steps.size() >= kMinPhaseCheckpoints) {
    absl::StatusOr<PhaseModels> fit =
        FitPhases(LogSteps(steps), medians, kCosResolution);
    if (fit.ok()) summary.phases = *fit;
  }
  return summary;
}

std::optional<PhaseModels> FeaturePhases(const std::vector<int64_t>& steps,
                                         const DecoderDrift& drift,
                                         int feature) {
  if (steps.size() < kMinPhaseCheckpoints ||
      steps.size() != drift.cos_to_final.size()) {
    return std::nullopt;
  }
  std::vector<double> y;
  for (const std::vector<float>& checkpoint : drift.cos_to_final) {
    y.push_back(checkpoint.at(feature));
  }
  absl::StatusOr<PhaseModels> fit =
      FitPhases(LogSteps(steps), y, kCosResolution);
  if (!fit.ok()) return std::nullopt;
  return *fit;
}

absl::StatusOr<std::vector<Trajectory2d>> DecoderTrajectories(
    int num_checkpoints, const SaeWeightsSource& source,
    int64_t memory_budget_bytes) {
  if (num_checkpoints < 1) {
    return absl::InvalidArgumentError("decoder trajectories: no checkpoints");
  }
  absl::StatusOr<UnitRows> final_rows =
      ReadDecoder(num_checkpoints - 1, source, nullptr);
  if (!final_rows.ok()) return final_rows.status();
  const int64_t d_sae = final_rows->rows;
  const int64_t d_in = final_rows->cols;
  const int64_t per_feature =
      std::max<int64_t>(1, int64_t{num_checkpoints} * d_in * 4);
  const int64_t block =
      std::clamp<int64_t>(memory_budget_bytes / per_feature, 1, d_sae);
  std::vector<Trajectory2d> out;
  out.reserve(static_cast<size_t>(d_sae));
  for (int64_t begin = 0; begin < d_sae; begin += block) {
    const int64_t end = std::min(d_sae, begin + block);
    // rows[feature - begin][checkpoint] = unit direction.
    std::vector<std::vector<std::vector<float>>> rows(
        static_cast<size_t>(end - begin),
        std::vector<std::vector<float>>(num_checkpoints));
    for (int t = 0; t < num_checkpoints; ++t) {
      absl::StatusOr<UnitRows> read =
          t == num_checkpoints - 1 && begin == 0
              ? *final_rows
              : ReadDecoder(t, source, &*final_rows);
      if (!read.ok()) return read.status();
      for (int64_t f = begin; f < end; ++f) {
        const float* row = read->data.data() + f * d_in;
        rows[f - begin][t].assign(row, row + d_in);
      }
    }
    for (auto& trajectory : rows) {
      absl::StatusOr<Trajectory2d> pca = PcaTrajectory(trajectory);
      if (!pca.ok()) return pca.status();
      out.push_back(*std::move(pca));
    }
  }
  return out;
}

}  // namespace saetrack::analysis
