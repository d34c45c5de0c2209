// The SAE training engine: trains one SAE of a SAE-Track chain on one
// checkpoint. This is the seam between the worker's RPC loop and LibTorch:
// nothing in this header mentions gRPC, RocksDB or torch, so the loop can be
// tested against a fake engine and the engine builds with LibTorch alone.
#ifndef SAETRACK_ENGINE_TRAINING_ENGINE_H_
#define SAETRACK_ENGINE_TRAINING_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "analysis/speedup.h"

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
  // Every hook (layer, site) of the job. When it names hooks besides this
  // one, the checkpoint's activations are collected at all of them in one
  // forward pass (stopping after the deepest) and the others' are kept for
  // the next Train or Analyse calls on this engine for the same checkpoint
  // (engine/lm/activation_cache.h): a job with several hooks runs the LM
  // once per checkpoint. Streamed training sets (beyond
  // max_activation_set_bytes) are not shared.
  std::vector<std::pair<int, std::string>> job_hooks;

  // --- data ---
  // Flat little-endian token file; "uint16" or "uint32".
  std::string tokens_path;
  std::string token_dtype = "uint16";
  int context_length = 128;

  // --- SAE ---
  // "relu_l1" (the paper's) or "topk".
  std::string sae_architecture = "relu_l1";
  // topk: active latents per token (k), latents in the AuxK loss (0: 2 * k)
  // and the AuxK loss coefficient.
  int k = 32;
  int aux_k = 0;
  double aux_coefficient = 1.0 / 32;
  // d_sae; when 0, expansion_factor * d_model.
  int d_sae = 0;
  int expansion_factor = 64;
  double l1_coefficient = 8e-5;
  double lr = 4e-4;
  int warmup_steps = 5000;
  int batch_size = 4096;
  int64_t train_tokens = 300'000'000;
  // A feature is dead when it has not fired on any of the last
  // dead_window_tokens training tokens (0: a tenth of train_tokens).
  int64_t dead_window_tokens = 0;
  // relu_l1: ghost grads for dead features (the worker enables them for the
  // first SAE of a chain).
  bool ghost_grads = false;
  // Convergence: the held-out total loss (reconstruction + sparsity, in
  // normalised coordinates) is measured every quarter window; it has
  // plateaued when it improved by less than adaptive_tolerance times its
  // value over the last window. With adaptive_window_tokens > 0 training stops
  // at the plateau (so it trains at least one window and at most
  // train_tokens); with 0 it trains all train_tokens and only reports
  // whether the last quarter of them still improved the loss (window
  // train_tokens / 4).
  int64_t adaptive_window_tokens = 0;
  double adaptive_tolerance = 0.01;
  // Training activations are computed once and kept in memory, reused over
  // epochs (in a fresh order each) when train_tokens exceeds the distinct
  // training tokens, as long as they fit in this many bytes; beyond that
  // they are streamed, each context drawn at random with replacement.
  int64_t max_activation_set_bytes = int64_t{1} << 30;
  // Held-out tokens (a fixed split, disjoint from training tokens, the same
  // positions for every checkpoint of a job) used for evaluation and feature
  // statistics.
  int64_t eval_tokens = 65536;
  uint64_t seed = 0;
  // Held-out tokens over which the language model's cross-entropy is measured
  // clean, with the SAE's reconstruction spliced in, and with the hook
  // zero-ablated (a prefix of the eval contexts). 0 skips the LM evaluation.
  int64_t lm_eval_tokens = 8192;

  // Training state: when state_dir is set, the trainer saves its state there
  // every checkpoint_every_tokens tokens (0: never) and resumes from a state
  // it finds there (written for the same input) instead of starting over.
  std::string state_dir;
  int64_t checkpoint_every_tokens = 0;

  // Trust check (DESIGN.md §3) at this checkpoint: after the chain's SAE,
  // train an independent SAE from scratch on the same activations with
  // reference_seed and the first SAE's recipe (reference_lr,
  // reference_warmup_steps, reference_train_tokens; ghost grads for relu_l1),
  // and compare the two (TrainOutput.reference). With init_sae_safetensors
  // it also measures the speed-up of recurrent initialisation against that
  // independent SAE (ReferenceCheck.speedup): the initial SAE trained with
  // the same recipe and batches until it comes within speedup_tolerance of
  // the independent SAE's final held-out total loss, and again at a tenth of
  // reference_lr.
  bool reference_check = false;
  uint64_t reference_seed = 1;
  double reference_lr = 4e-4;
  int reference_warmup_steps = 5000;
  int64_t reference_train_tokens = 300'000'000;
  double speedup_tolerance = 0.02;

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
  // cos(W_dec[i], its initial value), from scratch as well (the random
  // initialisation): how far training moved each feature.
  std::vector<float> decoder_cos_init;
  std::vector<float> encoder_norm;  // ||W_enc[:, i]||
};

// Feature density histogram: bin 0 counts dead features (frequency 0); bin
// i >= 1 counts features with log10(frequency) in
// [kDensityLog10Min + (i - 1) * kDensityLog10Width, ... + kDensityLog10Width),
// the lowest bin also taking everything below it, the highest ending at 0.
inline constexpr double kDensityLog10Min = -7.0;
inline constexpr double kDensityLog10Width = 0.5;
inline constexpr int kDensityBins = 1 + 14;

// The language model with the SAE's reconstruction spliced in at the hook, on
// held-out contexts (nats per token).
struct LmEvaluation {
  double ce_clean = 0;         // the unmodified model
  double ce_spliced = 0;       // hook activations replaced by the SAE's output
  double ce_zero_ablated = 0;  // hook activations replaced by zeros
  // (ce_zero_ablated - ce_spliced) / (ce_zero_ablated - ce_clean).
  double loss_recovered = 0;
  // Mean over tokens of KL(clean || spliced) of the next-token distributions.
  double kl_divergence = 0;
  int64_t tokens = 0;
};

// The trust check of TrainInput.reference_check: an independent SAE trained
// from scratch on the same checkpoint, and how the chain's SAE compares.
struct ReferenceCheck {
  uint64_t seed = 0;
  int64_t tokens_trained = 0;
  // The independent SAE's held-out numbers, as TrainOutput's.
  double held_out_loss = 0;
  double fvu = 0;
  double l0 = 0;
  double dead_fraction = 0;
  double median_decoder_cos_init = 0;
  bool converged = false;
  std::optional<double> loss_recovered;
  // The chain's SAE against the independent one: decoder rows matched one to
  // one by cosine (analysis::MatchDictionaries).
  int matched = 0;
  std::string match_method;
  double match_median_cosine = 0;
  double match_fraction_above_0_9 = 0;
  double match_fraction_above_0_7 = 0;
  // Two random initialisations of the same shape matched the same way: the
  // level a match must beat to mean anything.
  double random_median_cosine = 0;
  double random_fraction_above_0_9 = 0;
  // The speed-up of recurrent initialisation at this checkpoint; absent at
  // the chain's first checkpoint (nothing to initialise from).
  std::optional<analysis::RecurrenceSpeedup> speedup;
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
  // kDensityBins counts (see kDensityLog10Min).
  std::vector<int64_t> density_histogram;
  // Absent when TrainInput.lm_eval_tokens is 0.
  std::optional<LmEvaluation> lm;
  // The adaptive budget stopped training before train_tokens.
  bool stopped_early = false;
  // The held-out total loss had plateaued when training ended (see
  // TrainInput.adaptive_window_tokens); false means more tokens would still
  // have helped.
  bool converged = false;
  // The held-out total loss at the end, in normalised coordinates, and the
  // (tokens, loss) pairs the convergence monitor measured.
  double held_out_loss = 0;
  std::vector<std::pair<int64_t, double>> loss_curve;
  // The activation normalisation s = sqrt(d_in) / E||x|| of this checkpoint
  // (the SAE trained on s·x; sae_safetensors has it folded in and works on
  // raw activations).
  double activation_scale = 1;
  // Distinct training tokens behind the training batches and how often each
  // was seen on average (tokens_trained / distinct_tokens).
  int64_t distinct_tokens = 0;
  double epochs = 0;
  // Median over features of cos(W_dec[i], its initial value).
  double median_decoder_cos_init = 0;
  // Present when TrainInput.reference_check.
  std::optional<ReferenceCheck> reference;
  // Tokens already trained in the saved state training resumed from (0 when
  // it started from the beginning).
  int64_t resumed_from_tokens = 0;
  // Activation sets (held-out, training) taken from the forward pass of
  // another hook's task of this checkpoint (TrainInput.job_hooks) instead of
  // running the LM: 0, 1 or 2.
  int shared_activation_sets = 0;
  FeatureStats features;
};

// Called every few steps with the tokens trained so far and the latest loss.
// Returning false cancels training: Train then returns kCancelled.
using ProgressFn = std::function<bool(int64_t tokens_done, double loss)>;

// Thread-compatible: one Train call at a time per instance.
// The analysis pass of one checkpoint (analysis_pass.h): its SAE and LM on
// the job's fixed analysis set.
struct AnalysisInput {
  // The checkpoint and hook, as in TrainInput.
  std::string model_dir;
  std::string architecture = "gpt_neox";
  int layer = 0;
  std::string site = "resid_pre";
  // As TrainInput.job_hooks: the analysis set's activations are shared
  // between the hooks of one checkpoint.
  std::vector<std::pair<int, std::string>> job_hooks;
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
  // Logit effects per feature: this many promoted and suppressed tokens
  // (ComputeLogitEffects, analysis_pass.h); 0 skips them.
  int logit_effects_k = 10;
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
  // Token-controlled P_i in activation space (feature_analysis.h).
  std::vector<float> progress_token_controlled;
  // Logit effects (LogitEffects, analysis_pass.h); empty when
  // logit_effects_k is 0.
  int logit_effects_k = 0;
  std::vector<int32_t> promoted_tokens;    // [d_sae * logit_effects_k]
  std::vector<float> promoted_values;      // descending per feature
  std::vector<int32_t> suppressed_tokens;  // [d_sae * logit_effects_k]
  std::vector<float> suppressed_values;    // ascending per feature
};

class SaeTrainingEngine {
 public:
  virtual ~SaeTrainingEngine() = default;

  // Runs the analysis pass of one checkpoint (analysis_pass.h). Errors as
  // AnalyseCheckpoint's. The default returns kUnimplemented.
  virtual absl::StatusOr<AnalysisOutput> Analyse(const AnalysisInput& input);

  // Trains one SAE. Errors: kInvalidArgument (bad input values, layer out of
  // range, init SAE of the wrong shape), kNotFound / kDataLoss (missing or
  // malformed checkpoint or token file, message names the file and offset),
  // kCancelled (progress returned false). Never throws.
  virtual absl::StatusOr<TrainOutput> Train(const TrainInput& input,
                                            const ProgressFn& progress) = 0;
};

inline absl::StatusOr<AnalysisOutput> SaeTrainingEngine::Analyse(
    const AnalysisInput& /*input*/) {
  return absl::UnimplementedError("this engine has no analysis pass");
}

struct EngineOptions {
  // "cpu" or "cuda".
  std::string device = "cpu";
  // Intra-op threads for LibTorch on CPU; 0 keeps LibTorch's default (which
  // can come up as 1, so set it).
  int threads = 0;
  // Precision of the SAE's matrix products: "fp32", "bf16" (bf16 operands,
  // fp32 accumulation and master weights), or "auto" (bf16 on CUDA, fp32 on
  // CPU).
  std::string matmul_precision = "auto";
  // Activations of other hooks of the current checkpoint kept for their
  // tasks (TrainInput.job_hooks), at most this many bytes.
  int64_t shared_activation_bytes = int64_t{2} << 30;
};

// The LibTorch engine.
absl::StatusOr<std::unique_ptr<SaeTrainingEngine>> NewTorchEngine(
    const EngineOptions& options);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_TRAINING_ENGINE_H_
