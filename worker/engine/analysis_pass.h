// The analysis pass of one checkpoint (DESIGN.md §4): the checkpoint's SAE
// and LM on the job's fixed analysis set — the held-out contexts, the same
// positions for every checkpoint — giving per-feature statistics, the top
// activating positions of this SAE, and the progress measure at positions
// chosen with the final SAE of the chain.
//
// The coordinator runs it once the chain is complete: first on the final
// checkpoint (reference_positions empty: its own top positions become the
// reference), then on every other checkpoint with those positions.
#ifndef SAETRACK_WORKER_ENGINE_ANALYSIS_PASS_H_
#define SAETRACK_WORKER_ENGINE_ANALYSIS_PASS_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::engine {

struct AnalysisInput {
  // The checkpoint and hook, as in TrainInput.
  std::string model_dir;
  std::string architecture = "gpt_neox";
  int layer = 0;
  std::string site = "resid_pre";
  std::string tokens_path;
  std::string token_dtype = "uint16";
  int context_length = 128;
  // The analysis set: this many held-out tokens (whole contexts).
  int64_t analysis_tokens = 65536;

  // The checkpoint's SAE (safetensors, SAELens layout) and its architecture.
  std::string sae_safetensors;
  std::string sae_architecture = "relu_l1";
  int k = 32;

  // Top activating positions kept per feature.
  int top_k = 25;
  // [d_sae * top_k] positions chosen with the final SAE (-1 padding); empty
  // on the final checkpoint itself.
  std::vector<int64_t> reference_positions;
  // Random analysis positions for the progress measure's baseline.
  int random_positions = 256;
  uint64_t seed = 0;
};

struct AnalysisOutput {
  int64_t analysis_positions = 0;  // rows of the analysis set
  int d_sae = 0;
  int top_k = 0;
  // Per feature, on the analysis set.
  std::vector<float> frequency;
  std::vector<float> mean_activation;
  std::vector<float> max_activation;
  // [d_sae * top_k], row-major by feature: this SAE's top positions (-1
  // where the feature fired on fewer), their code values and token ids
  // (-1 padding).
  std::vector<int64_t> top_positions;
  std::vector<float> top_values;
  std::vector<int64_t> top_tokens;
  // The positions the progress measure used (reference_positions, or
  // top_positions on the final checkpoint).
  std::vector<int64_t> reference_positions;
  // P_i at this checkpoint (NaN for features with fewer than two positions)
  // and the random-position baselines subtracted from them.
  std::vector<float> progress_activation;
  std::vector<float> progress_feature;
  double activation_baseline = 0;
  double feature_baseline = 0;
};

// Errors: kInvalidArgument naming the AnalysisInput field; kNotFound /
// kDataLoss for missing or malformed files. Never throws.
absl::StatusOr<AnalysisOutput> AnalyseCheckpoint(const AnalysisInput& input,
                                                 const torch::Device& device);

}  // namespace saetrack::engine

#endif  // SAETRACK_WORKER_ENGINE_ANALYSIS_PASS_H_
