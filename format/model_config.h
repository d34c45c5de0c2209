// Hugging Face config.json of a tracked model, reduced to what saetrack needs.
// Torch-free: the coordinator links it to validate jobs up front.
#ifndef SAETRACK_FORMAT_MODEL_CONFIG_H_
#define SAETRACK_FORMAT_MODEL_CONFIG_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace saetrack::format {

// Field names follow GPTNeoXConfig; for GPT-2 each is filled from its
// GPT2Config counterpart (named in the comments), so code that needs only the
// shape (the job validator, the engine) reads every architecture alike.
struct ModelConfig {
  // "gpt_neox" (model_type, or architectures[0] == "GPTNeoXForCausalLM") or
  // "gpt2" (model_type, or architectures[0] == "GPT2LMHeadModel" or
  // "GPT2Model").
  std::string architecture;
  int vocab_size = 0;
  int hidden_size = 0;          // d_model; GPT-2: n_embd
  int num_hidden_layers = 0;    // GPT-2: n_layer
  int num_attention_heads = 0;  // GPT-2: n_head
  // GPT-2: n_inner, or 4 * n_embd when null or absent.
  int intermediate_size = 0;
  // GPT-2: n_positions (default 1024), a hard limit on the sequence length
  // because positions are learned. GPT-NeoX default 2048.
  int max_position_embeddings = 0;
  // Rotary embeddings: GPT-NeoX only (0 for GPT-2).
  double rotary_pct = 0.25;
  int rotary_emb_base = 10000;
  double layer_norm_eps = 1e-5;  // GPT-2: layer_norm_epsilon
  // GPT-NeoX only (false for GPT-2, whose residual is sequential).
  bool use_parallel_residual = true;
  // HF ACT2FN name; GPT-2: activation_function (default "gelu_new").
  std::string hidden_act = "gelu";
  // GPT-NeoX default false, GPT-2 default true.
  bool tie_word_embeddings = false;
};

// Parses `json_text` (the contents of a config.json; `origin` names the file in
// error messages). Errors: kInvalidArgument naming the file and the field (or
// the byte offset of a JSON syntax error) for malformed, unknown or
// inconsistent configs (e.g. hidden_size not divisible by num_attention_heads)
// and for variants the engine does not implement (GPT-2 with
// scale_attn_weights false or scale_attn_by_inverse_layer_idx true).
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view origin);

// A Hugging Face config.json is a few KiB; larger ones are refused unread.
inline constexpr int64_t kMaxModelConfigBytes = 1 << 20;

// Reads `dir`/config.json and checks that the weights exist
// (`dir`/model.safetensors or `dir`/model.safetensors.index.json).
// Errors: kNotFound naming the missing path; kInvalidArgument naming the file
// when it exceeds kMaxModelConfigBytes; otherwise as ParseModelConfig.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_MODEL_CONFIG_H_
