#include "storage/keys.h"

#include <cassert>

#include "absl/status/status.h"

namespace saetrack::storage {
namespace {

void AppendBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
}

absl::StatusOr<uint64_t> ConsumeBigEndian(std::string_view* rest, int bytes) {
  if (rest->size() < static_cast<size_t>(bytes)) {
    return absl::InvalidArgumentError("key too short for an integer");
  }
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    v = (v << 8) | static_cast<unsigned char>((*rest)[i]);
  }
  rest->remove_prefix(bytes);
  return v;
}

constexpr uint32_t kSign32 = 0x80000000u;
constexpr uint64_t kSign64 = 0x8000000000000000ull;

}  // namespace

KeyBuilder& KeyBuilder::AddString(std::string_view s) {
  assert(s.find('\0') == std::string_view::npos);
  key_.append(s.data(), s.size());
  key_.push_back('\0');
  return *this;
}

KeyBuilder& KeyBuilder::AddInt32(int32_t v) {
  AppendBigEndian(&key_, static_cast<uint32_t>(v) ^ kSign32, 4);
  return *this;
}

KeyBuilder& KeyBuilder::AddInt64(int64_t v) {
  AppendBigEndian(&key_, static_cast<uint64_t>(v) ^ kSign64, 8);
  return *this;
}

absl::StatusOr<std::string> KeyReader::ReadString() {
  size_t end = rest_.find('\0');
  if (end == std::string_view::npos) {
    return absl::InvalidArgumentError("key string without terminator");
  }
  std::string s(rest_.substr(0, end));
  rest_.remove_prefix(end + 1);
  return s;
}

absl::StatusOr<int32_t> KeyReader::ReadInt32() {
  absl::StatusOr<uint64_t> v = ConsumeBigEndian(&rest_, 4);
  if (!v.ok()) return v.status();
  return static_cast<int32_t>(static_cast<uint32_t>(*v) ^ kSign32);
}

absl::StatusOr<int64_t> KeyReader::ReadInt64() {
  absl::StatusOr<uint64_t> v = ConsumeBigEndian(&rest_, 8);
  if (!v.ok()) return v.status();
  return static_cast<int64_t>(*v ^ kSign64);
}

std::string JobKey(std::string_view job_id) {
  return KeyBuilder().AddString(job_id).Release();
}

std::string TaskKey(std::string_view job_id, int32_t hook_index,
                    int32_t chain_index) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(hook_index)
      .AddInt32(chain_index)
      .Release();
}

std::string TaskKey(std::string_view job_id, int32_t hook_index,
                    int32_t chain_index, int32_t kind) {
  KeyBuilder key;
  key.AddString(job_id).AddInt32(hook_index).AddInt32(chain_index);
  if (kind > 0) key.AddInt32(kind);
  return key.Release();
}

std::string TaskPrefix(std::string_view job_id) {
  return KeyBuilder().AddString(job_id).Release();
}

std::string SaeWeightsKey(std::string_view job_id, int32_t layer,
                          int64_t step) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt64(step)
      .Release();
}

std::string SaeWeightsManifestKey(std::string_view job_id, int32_t layer,
                                  int64_t step) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt64(step)
      .AddString("manifest")
      .Release();
}

std::string SaeWeightsPartKey(std::string_view job_id, int32_t layer,
                              int64_t step, int64_t lease_epoch, int32_t part) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt64(step)
      .AddString("part")
      .AddInt64(lease_epoch)
      .AddInt32(part)
      .Release();
}

std::string FeatureHistoryKey(std::string_view job_id, int32_t layer,
                              int32_t feature, int64_t step) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt32(feature)
      .AddInt64(step)
      .Release();
}

std::string FeatureHistoryPrefix(std::string_view job_id, int32_t layer,
                                 int32_t feature) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt32(feature)
      .Release();
}

absl::StatusOr<FeatureHistoryKeyParts> ParseFeatureHistoryKey(
    std::string_view key) {
  KeyReader reader(key);
  FeatureHistoryKeyParts parts;
  absl::StatusOr<std::string> job = reader.ReadString();
  if (!job.ok()) return job.status();
  parts.job_id = *std::move(job);
  absl::StatusOr<int32_t> layer = reader.ReadInt32();
  if (!layer.ok()) return layer.status();
  absl::StatusOr<int32_t> feature = reader.ReadInt32();
  if (!feature.ok()) return feature.status();
  absl::StatusOr<int64_t> step = reader.ReadInt64();
  if (!step.ok()) return step.status();
  if (!reader.AtEnd()) {
    return absl::InvalidArgumentError("trailing bytes in feature-history key");
  }
  parts.layer = *layer;
  parts.feature = *feature;
  parts.step = *step;
  return parts;
}

std::string CheckpointMetricsKey(std::string_view job_id, int32_t layer,
                                 int32_t chain_index) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt32(chain_index)
      .Release();
}

std::string CheckpointMetricsPrefix(std::string_view job_id, int32_t layer) {
  return KeyBuilder().AddString(job_id).AddInt32(layer).Release();
}

std::string FeatureSummaryKey(std::string_view job_id, int32_t layer,
                              int32_t feature) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt32(feature)
      .Release();
}

std::string FeatureSummaryPrefix(std::string_view job_id, int32_t layer) {
  return KeyBuilder().AddString(job_id).AddInt32(layer).Release();
}

namespace {
// Record types of the analysis column, after job and layer.
constexpr int32_t kDriftSummaryTag = 0;
constexpr int32_t kAnalysisBlockTag = 1;
}  // namespace

std::string DriftSummaryKey(std::string_view job_id, int32_t layer) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt32(kDriftSummaryTag)
      .Release();
}

std::string AnalysisBlockKey(std::string_view job_id, int32_t layer,
                             int64_t step) {
  return KeyBuilder()
      .AddString(job_id)
      .AddInt32(layer)
      .AddInt32(kAnalysisBlockTag)
      .AddInt64(step)
      .Release();
}

}  // namespace saetrack::storage
