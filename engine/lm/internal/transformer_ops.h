// Pieces shared by the transformer implementations of the engine (loading a
// weight from a Hugging Face checkpoint, activations, causal attention).
// Private to worker/engine.
#ifndef SAETRACK_ENGINE_LM_INTERNAL_TRANSFORMER_OPS_H_
#define SAETRACK_ENGINE_LM_INTERNAL_TRANSFORMER_OPS_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "format/safetensors.h"

namespace saetrack::engine::internal {

// Tensor `name` of `checkpoint` (the directory `dir`) as float32 on
// `device`. Errors: kDataLoss naming `dir`, the tensor and its byte offset
// when it is missing, has a dtype other than F32/F16/BF16, or a shape other
// than `expected_shape`.
absl::StatusOr<torch::Tensor> LoadCheckpointTensor(
    const format::SafetensorsCheckpoint& checkpoint, const std::string& dir,
    const std::string& name, const std::vector<int64_t>& expected_shape,
    const torch::Device& device);

// Hugging Face's ACT2FN[`name`] for the names format::ParseModelConfig
// accepts: "gelu" (exact erf), "relu", and the tanh approximation for
// "gelu_new", "gelu_fast" and "gelu_pytorch_tanh".
torch::Tensor Activation(const std::string& name, const torch::Tensor& x);

// softmax(q kᵀ / sqrt(head_dim), causal) v for q, k, v
// [batch, heads, seq, head_dim]; returns the heads concatenated,
// [batch, seq, heads * head_dim].
torch::Tensor CausalSelfAttention(const torch::Tensor& q,
                                  const torch::Tensor& k,
                                  const torch::Tensor& v);

// The bytes of a model.safetensors holding `named_tensors` as F32 under
// their names, with Hugging Face's {"format": "pt"} metadata.
absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<std::pair<std::string, torch::Tensor>>& named_tensors);

// Writes `dir`/model.safetensors (SerializeSafetensors) and
// `dir`/config.json (`config_json`), each atomically, creating `dir`.
absl::Status SaveHuggingFace(
    const std::string& dir, const std::string& config_json,
    const std::vector<std::pair<std::string, torch::Tensor>>& named_tensors);

}  // namespace saetrack::engine::internal

#endif  // SAETRACK_ENGINE_LM_INTERNAL_TRANSFORMER_OPS_H_
