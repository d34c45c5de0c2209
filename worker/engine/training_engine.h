// The SAE training engine: trains one SAE of a SAE-Track chain on one
// checkpoint. This is the seam between the worker's RPC loop and LibTorch:
// nothing in this header mentions gRPC, RocksDB or torch, so the loop can be
// tested against a fake engine and the engine builds with LibTorch alone.
#ifndef SAETRACK_WORKER_ENGINE_TRAINING_ENGINE_H_
#define SAETRACK_WORKER_ENGINE_TRAINING_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace saetrack::engine {

// Everything needed to train one SAE of a chain. Plain values; the worker fills
// it from the leased task.
struct TrainInput {
  // --- model and hook ---
  // Hugging Face style directory (config.json + model.safetensors).
  std::string model_dir;
  // "gpt_neox" (Pythia) or "gpt2"; must match the checkpoint's config.json.
  std::string architecture = "gpt_neox";
  int layer = 0;
  // "resid_pre" (default), "resid_post", "attn_out", "mlp_out".
  std::string site = "resid_pre";

  // --- data ---
  // Flat little-endian token file; "uint16" or "uint32".
  std::string tokens_path;
  std::string token_dtype = "uint16";
  int context_length = 128;

  // --- SAE ---
  // "relu_l1".
  std::string sae_architecture = "relu_l1";
  // d_sae; when 0, expansion_factor * d_model.
  int d_sae = 0;
  int expansion_factor = 64;
  double l1_coefficient = 8e-5;
  double lr = 4e-4;
  int warmup_steps = 5000;
  int batch_size = 4096;
  int64_t train_tokens = 300'000'000;
  // Held-out tokens (a fixed split, disjoint from training tokens, the same
  // positions for every checkpoint of a job) used for evaluation and feature
  // statistics.
  int64_t eval_tokens = 65536;
  uint64_t seed = 0;

  // SAE weights of the previous checkpoint (safetensors bytes as produced in
  // TrainOutput::sae_safetensors). Absent: train from scratch (Kaiming-uniform,
  // unit-norm decoder, b_dec at the geometric median of a sample).
  std::optional<std::string> init_sae_safetensors;
};

// Per-feature statistics on the held-out set; entry i belongs to feature i.
struct FeatureStats {
  std::vector<float> frequency;        // fraction of tokens with f_i > 0
  std::vector<float> mean_activation;  // mean of f_i over all tokens
  std::vector<float> max_activation;
  // cos(W_dec[i], W_dec_init[i]); empty when trained from scratch.
  std::vector<float> decoder_cos_prev;
  std::vector<float> encoder_norm;  // ||W_enc[:, i]||
};

struct TrainOutput {
  // SAE weights as a safetensors file: W_enc [d_in, d_sae], b_enc [d_sae],
  // W_dec [d_sae, d_in], b_dec [d_in], all F32 (SAELens layout).
  std::string sae_safetensors;
  int d_in = 0;
  int d_sae = 0;
  int64_t tokens_trained = 0;
  double wall_time_s = 0;
  // Held-out evaluation of the trained SAE.
  double mse = 0;            // mean over tokens of ||x_hat - x||^2 / d_in
  double fvu = 0;            // sum ||x_hat - x||^2 / sum ||x - mean(x)||^2
  double l0 = 0;             // mean active features per token
  double dead_fraction = 0;  // features that never fired on the held-out set
  // FVU of the initial SAE (before any training step) on the same held-out
  // activations.
  double init_fvu = 0;
  FeatureStats features;
};

// Called every few steps with the tokens trained so far and the latest loss.
// Returning false cancels training: Train then returns kCancelled.
using ProgressFn = std::function<bool(int64_t tokens_done, double loss)>;

// Thread-compatible: one Train call at a time per instance.
class SaeTrainingEngine {
 public:
  virtual ~SaeTrainingEngine() = default;

  // Trains one SAE. Errors: kInvalidArgument (bad input values, layer out of
  // range, init SAE of the wrong shape), kNotFound / kDataLoss (missing or
  // malformed checkpoint or token file, message names the file and offset),
  // kCancelled (progress returned false). Never throws.
  virtual absl::StatusOr<TrainOutput> Train(const TrainInput& input,
                                            const ProgressFn& progress) = 0;
};

struct EngineOptions {
  // "cpu" or "cuda".
  std::string device = "cpu";
  // Intra-op threads for LibTorch on CPU; 0 keeps LibTorch's default (which
  // can come up as 1, so set it).
  int threads = 0;
};

// The LibTorch engine.
absl::StatusOr<std::unique_ptr<SaeTrainingEngine>> NewTorchEngine(
    const EngineOptions& options);

}  // namespace saetrack::engine

#endif  // SAETRACK_WORKER_ENGINE_TRAINING_ENGINE_H_
