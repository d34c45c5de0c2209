// Range checks of everything a worker uploads, run before anything of a
// completion is stored: a worker (or anyone holding its lease) must not be
// able to store numbers that no SAE can produce -- negative counts,
// fractions beyond [0, 1], NaN or infinite values, tensors or positions that
// do not fit the job's spec. Pure functions: thread-safe.
#ifndef SAETRACK_SERVER_INTERNAL_UPLOAD_CHECKS_H_
#define SAETRACK_SERVER_INTERNAL_UPLOAD_CHECKS_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "saetrack/v1/job.pb.h"
#include "saetrack/v1/worker.pb.h"

namespace saetrack::server {

// The lease a checked upload belongs to.
struct UploadLease {
  int32_t layer = 0;
  int64_t step = 0;
  int32_t chain_index = 0;
  // spec.sae.d_sae and spec.analysis.top_k of the job.
  int32_t d_sae = 0;
  int32_t top_k = 0;
};

// CompleteTask's metrics of a training task. Every double finite; every
// integer >= 0; fields named *fraction* in [0, 1]; cosines (*cos*) in
// [-1, 1]; every other double >= 0 except loss_recovered (any finite value:
// an SAE may do worse than ablation); l0 <= d_sae; d_sae equal to the
// lease's (0: filled in); layer, step and chain_index 0 (filled in by the
// coordinator) or the lease's. Errors: kInvalidArgument naming the field as
// "metrics.<path>", e.g. "metrics.dead_fraction: -5 out of range [0, 1]".
absl::Status CheckCheckpointMetrics(const v1::CheckpointMetrics& metrics,
                                    const UploadLease& lease);

// A FEATURE_STATS block: every list d_sae long (decoder_cos_prev may be
// empty); frequency in [0, 1]; mean and max activation finite; encoder
// norms finite and >= 0; decoder_cos_prev in [-1, 1] or NaN (undefined).
// Errors: kInvalidArgument naming "FEATURE_STATS.<field>[i]".
absl::Status CheckFeatureStats(const v1::FeatureStatsBlock& stats, int d_sae);

// A FEATURE_ANALYSIS block against the job's `spec`: top_k equal to the
// spec's, analysis_positions a positive multiple of data.context_length no
// larger than the analysis set (analysis.analysis_tokens rounded up to
// contexts), lengths d_sae or d_sae * top_k, top_positions -1 (padding) or in
// [0, analysis_positions), top_tokens -1 or >= 0, frequency in [0, 1],
// activations finite, progress values and baselines finite or NaN
// (undefined); logit effects: logit_effects_k in [0,
// spec.analysis.logit_effects_k], the four lists d_sae * logit_effects_k
// long, token ids in [0, 2^24) (the coordinator does not know the model's
// vocab), values finite, promoted descending and suppressed ascending per
// feature. Errors: kInvalidArgument naming "FEATURE_ANALYSIS.<field>".
absl::Status CheckFeatureAnalysis(const v1::FeatureAnalysisBlock& block,
                                  const UploadLease& lease,
                                  const v1::JobSpec& spec);

// The header of uploaded SAE weights (safetensors): tensors W_enc
// [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] with
// d_sae the lease's and d_in > 0 (and equal to `d_in` when that is > 0).
// `header` is the JSON header (the bytes after the 8-byte length).
// Errors: kInvalidArgument naming "SAE_WEIGHTS.<tensor>".
absl::Status CheckSaeWeightsHeader(std::string_view header, int d_sae,
                                   int d_in);

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_UPLOAD_CHECKS_H_
