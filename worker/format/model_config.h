// Hugging Face config.json of a tracked model, reduced to what saetrack needs.
// Torch-free: the coordinator links it to validate jobs up front.
#ifndef SAETRACK_WORKER_FORMAT_MODEL_CONFIG_H_
#define SAETRACK_WORKER_FORMAT_MODEL_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"

namespace saetrack::format {

struct ModelConfig {
  // "gpt_neox" (from model_type, or architectures[0] == "GPTNeoXForCausalLM").
  std::string architecture;
  int vocab_size = 0;
  int hidden_size = 0;  // d_model
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int intermediate_size = 0;
  int max_position_embeddings = 0;
  double rotary_pct = 0.25;
  int rotary_emb_base = 10000;
  double layer_norm_eps = 1e-5;
  bool use_parallel_residual = true;
  std::string hidden_act = "gelu";
  bool tie_word_embeddings = false;
};

// Parses `json_text` (the contents of a config.json; `origin` names the file in
// error messages). Errors: kInvalidArgument naming the file and the field (or
// the byte offset of a JSON syntax error) for malformed, unknown or
// inconsistent configs (e.g. hidden_size not divisible by num_attention_heads).
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view origin);

// Reads `dir`/config.json and checks that the weights exist
// (`dir`/model.safetensors or `dir`/model.safetensors.index.json).
// Errors: kNotFound naming the missing path; otherwise as ParseModelConfig.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace saetrack::format

#endif  // SAETRACK_WORKER_FORMAT_MODEL_CONFIG_H_
