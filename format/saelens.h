// SAEs in SAELens's on-disk layout (https://github.com/jbloomAus/SAELens),
// so that an SAE saetrack trained loads with `SAE.load_from_disk(dir)` and
// the SAELens ecosystem (dashboards, evals) can use it, and so that saetrack
// can read SAEs SAELens wrote.
//
// A SAELens SAE is a directory holding
//   cfg.json                 the config (below)
//   sae_weights.safetensors  W_enc [d_in, d_sae], b_enc [d_sae],
//                            W_dec [d_sae, d_in], b_dec [d_in]
// The weights are exactly saetrack's own SAE safetensors (engine/sae.h,
// TrainOutput::sae_safetensors), so only the config needs translating.
//
// Torch-free, like the rest of worker/format.
#ifndef SAETRACK_FORMAT_SAELENS_H_
#define SAETRACK_FORMAT_SAELENS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saetrack::format {

// File names inside a SAELens SAE directory.
inline constexpr char kSaelensConfigFile[] = "cfg.json";
inline constexpr char kSaelensWeightsFile[] = "sae_weights.safetensors";

// What saetrack needs from (and writes into) a cfg.json.
struct SaelensConfig {
  // saetrack's name: "relu_l1" (SAELens "standard") or "topk".
  std::string architecture;
  int64_t d_in = 0;
  int64_t d_sae = 0;
  // Active latents per token; topk only (0 otherwise).
  int k = 0;
  // SAELens's runtime dtype (a torch dtype name). saetrack itself only
  // writes and reads F32 weights.
  std::string dtype = "float32";

  // --- metadata ---
  // The model the SAE reads (a checkpoint directory or a job's model name).
  std::string model_name;
  // TransformerLens hook name, e.g. "blocks.1.hook_resid_pre" (HookName).
  std::string hook_name;
  int hook_layer = 0;
  // The training step of the checkpoint the SAE was trained on.
  int64_t checkpoint_step = 0;
  // The saetrack job; may be empty.
  std::string job_id;
};

// TransformerLens's name of saetrack hook site `site` of block `layer`:
// "blocks.<layer>.hook_<site>", i.e. "resid_pre" -> "blocks.L.hook_resid_pre",
// and likewise for "resid_post", "attn_out" and "mlp_out" (the four sites
// saetrack hooks, engine/language_model.h). Other sites are not checked and
// follow the same pattern.
std::string HookName(int layer, std::string_view site);

// `cfg` as a cfg.json that SAELens loads (pre-6.0 layout, which SAELens 6
// still reads): "architecture" in SAELens's spelling ("standard" for relu_l1,
// "topk"), the fields SAELens's SAEConfig requires, "activation_fn_kwargs":
// {"k": K} and a top-level "k" for topk, and a "metadata" object with the
// saetrack-specific fields (saetrack_architecture, checkpoint_step, job_id,
// model_name, hook_name). Pretty-printed with two-space indentation, ending
// in a newline. Does not validate `cfg` (WriteSaelensDir does).
std::string SaelensConfigToJson(const SaelensConfig& cfg);

// Parses a cfg.json written by SaelensConfigToJson or by SAELens itself
// (versions 3 to 6: hook fields at the top level or in "metadata"; TopK as
// architecture "topk" or as architecture "standard" with activation_fn_str
// "topk"). `origin` names the file in errors. Accepted architecture names:
// "standard" / "relu" / "relu_l1" -> relu_l1, "topk" -> topk; absent means
// "standard", as in SAELens. Null counts as absent for optional fields;
// unknown fields are ignored. hook_layer, when absent, is taken from a
// "blocks.<L>." hook_name.
// Errors: kInvalidArgument naming `origin`, the field (dotted for nested
// ones, e.g. "activation_fn_kwargs.k") and its byte offset, for: invalid
// JSON (the syntax error's offset), a top level that is not an object,
// missing or non-positive d_in / d_sae, a field of the wrong type, an
// unsupported architecture or activation function, topk without k, k out of
// [1, d_sae], two spellings of k or of the architecture that disagree.
absl::StatusOr<SaelensConfig> ParseSaelensConfig(std::string_view json,
                                                 std::string_view origin);

// Writes `dir`/sae_weights.safetensors (`sae_safetensors`, unchanged) and
// `dir`/cfg.json (SaelensConfigToJson(cfg)), creating `dir` and its parents
// when needed. Each file is written atomically (a temporary file, then
// rename); the weights go first, so a reader that finds a new cfg.json also
// finds the weights it describes. Nothing is written unless `cfg` and the
// weights are consistent (the checks of ReadSaelensDir).
// Errors: kInvalidArgument for an invalid cfg (unknown architecture, d_in or
// d_sae not positive, topk without a k in [1, d_sae]) or weights that do not
// match it (naming the tensor); kDataLoss for malformed safetensors bytes;
// errno-derived codes naming the path for file-system failures.
absl::Status WriteSaelensDir(const std::string& dir, const SaelensConfig& cfg,
                             std::string_view sae_safetensors);

struct SaelensSae {
  SaelensConfig config;
  // The whole sae_weights.safetensors file.
  std::string safetensors;
};

// Reads and validates a SAELens SAE directory: the config parses
// (ParseSaelensConfig) and the weights hold exactly W_enc, b_enc, W_dec and
// b_dec, all F32, with shapes [d_in, d_sae], [d_sae], [d_sae, d_in], [d_in]
// for the config's d_in and d_sae.
// Errors: kNotFound naming the missing file; kInvalidArgument as
// ParseSaelensConfig, or naming the weights file and the tensor for a
// missing, extra, non-F32 or misshapen tensor; kDataLoss for malformed
// safetensors (as SafetensorsFile::Open).
absl::StatusOr<SaelensSae> ReadSaelensDir(const std::string& dir);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_SAELENS_H_
