

#include "absl/strings/str_cat.h"
#include "client/internal/cli_commands.h"
#include "client/output.h"

namespace saetrack::client {
namespace internal {

bool Cli::ExpectLayer() {
  if (inv_.layer.has_value()) return true;
  Usage(absl::StrCat(inv_.command, " needs --layer"));
  return false;
}

int Cli::Metrics() {
  if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
  absl::StatusOr<v1::GetCheckpointMetricsResponse> metrics =
      client_->GetCheckpointMetrics(inv_.positional[0], *inv_.layer);
  if (!metrics.ok()) return Fail(metrics.status());
  if (inv_.json) {
    // Proto JSON: every field, new ones included, without listing them.
    out_ << ToJson(*metrics) << "\n";
    return kExitOk;
  }
  out_ << FormatCheckpointMetrics(*metrics);
  return kExitOk;
}

int Cli::Quality() {
  if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
  absl::StatusOr<v1::GetQualityChecksResponse> checks =
      client_->GetQualityChecks(inv_.positional[0], *inv_.layer);
  if (!checks.ok()) return Fail(checks.status());
  if (inv_.json) {
    out_ << ToJson(*checks) << "\n";
    return kExitOk;
  }
  out_ << FormatQualityChecks(*checks);
  return kExitOk;
}

int Cli::Feature() {
  if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
  if (!inv_.feature_id.has_value()) return Usage("feature needs --feature");
  v1::GetFeatureHistoryRequest request;
  request.set_job_id(inv_.positional[0]);
  request.set_layer(*inv_.layer);
  request.set_feature_id(*inv_.feature_id);
  request.set_include_contexts(inv_.contexts);
  request.set_include_decoder(inv_.decoder);
  absl::StatusOr<v1::FeatureHistory> history =
      client_->GetFeatureHistory(request);
  if (!history.ok()) return Fail(history.status());
  if (inv_.json) {
    out_ << ToJson(*history) << "\n";
    return kExitOk;
  }
  out_ << FormatFeatureHistory(*history, inv_.contexts, inv_.decoder,
                               inv_.logits);
  return kExitOk;
}

int Cli::Features() {
  if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
  if (inv_.formed_from.has_value() && inv_.formed_to.has_value() &&
      *inv_.formed_from > *inv_.formed_to) {
    return Usage(absl::StrCat("--formed-from ", *inv_.formed_from,
                              " is after --formed-to ", *inv_.formed_to));
  }
  if (inv_.min_freq.has_value() && inv_.max_freq.has_value() &&
      *inv_.min_freq > *inv_.max_freq) {
    return Usage(absl::StrCat("--min-freq ", *inv_.min_freq,
                              " is above --max-freq ", *inv_.max_freq));
  }
  v1::ListFeaturesRequest request;
  request.set_job_id(inv_.positional[0]);
  request.set_layer(*inv_.layer);
  if (inv_.kind.has_value()) request.set_kind(*inv_.kind);
  if (inv_.formed_from.has_value()) {
    request.set_min_formation_step(*inv_.formed_from);
  }
  if (inv_.formed_to.has_value()) {
    request.set_max_formation_step(*inv_.formed_to);
  }
  if (inv_.min_freq.has_value()) request.set_min_frequency(*inv_.min_freq);
  if (inv_.max_freq.has_value()) request.set_max_frequency(*inv_.max_freq);
  if (inv_.order.has_value()) request.set_order_by(*inv_.order);
  if (inv_.limit.has_value()) request.set_page_size(*inv_.limit);
  request.set_page_token(inv_.page_token);
  absl::StatusOr<v1::ListFeaturesResponse> list =
      client_->ListFeatures(request);
  if (!list.ok()) return Fail(list.status());
  if (inv_.json) {
    out_ << ToJson(*list) << "\n";
    return kExitOk;
  }
  out_ << FormatFeatureList(*list);
  return kExitOk;
}

int Cli::Drift() {
  if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
  absl::StatusOr<v1::DriftSummary> drift =
      client_->GetDriftSummary(inv_.positional[0], *inv_.layer);
  if (!drift.ok()) return Fail(drift.status());
  if (inv_.json) {
    out_ << ToJson(*drift) << "\n";
    return kExitOk;
  }
  out_ << FormatDriftSummary(*drift);
  return kExitOk;
}

}  // namespace internal

}  // namespace saetrack::client
