// A GPT-NeoX (Pythia) language model in LibTorch: loading from a Hugging Face
// directory, forward passes with activation hooks, random initialisation and
// saving for the tiny-LM trainer. The forward pass matches HF's
// GPTNeoXForCausalLM (parallel or sequential residual, partial rotary
// embeddings with the rotate_half convention, causal softmax attention).
#ifndef SAETRACK_ENGINE_LM_GPT_NEOX_H_
#define SAETRACK_ENGINE_LM_GPT_NEOX_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/language_model.h"
#include "format/model_config.h"

namespace saetrack::engine {

// Weights of one transformer block, in HF layout ([out, in] linear weights).
struct GptNeoxBlock {
  torch::Tensor input_layernorm_weight, input_layernorm_bias;
  torch::Tensor post_attention_layernorm_weight, post_attention_layernorm_bias;
  // [3 * hidden, hidden]; rows grouped per head as [q, k, v] (HF layout).
  torch::Tensor query_key_value_weight, query_key_value_bias;
  torch::Tensor attention_dense_weight, attention_dense_bias;
  torch::Tensor mlp_dense_h_to_4h_weight, mlp_dense_h_to_4h_bias;
  torch::Tensor mlp_dense_4h_to_h_weight, mlp_dense_4h_to_h_bias;
};

// The model. Owns its weight tensors (float32, on one device). Forward calls
// do not modify the model, so concurrent forwards are safe; training (through
// the tensors of NamedParameters()) is not. Copies share weight tensors.
class GptNeoxModel : public LanguageModel {
 public:
  // Loads `dir`/config.json and the safetensors weights (single or sharded;
  // F32, F16 or BF16, converted to float32) onto `device`. Errors: as
  // format::LoadModelConfig and format::SafetensorsCheckpoint::Open;
  // kInvalidArgument when the config is not a GPT-NeoX one; kDataLoss naming
  // the tensor when a tensor is missing or has the wrong shape or dtype.
  static absl::StatusOr<GptNeoxModel> Load(const std::string& dir,
                                           const torch::Device& device);

  // A freshly initialised model (HF initializer_range 0.02, output
  // projections scaled by 1/sqrt(2 * layers)), deterministic for `seed`.
  // REQUIRES: `config` passed format::ParseModelConfig's checks.
  static GptNeoxModel RandomInit(const format::ModelConfig& config,
                                 uint64_t seed, const torch::Device& device);

  // Forward passes (Logits, RunToHooks, ...) come from LanguageModel; they
  // work with autograd when the parameters require grad.

  // Every weight tensor with its HF name, in a fixed order.
  std::vector<std::pair<std::string, torch::Tensor>> NamedParameters() const;

  // Writes `dir`/config.json (from `config_json`, the full HF config text)
  // and `dir`/model.safetensors (F32, HF names). Creates `dir`.
  absl::Status SaveHuggingFace(const std::string& dir,
                               const std::string& config_json) const;

  const format::ModelConfig& config() const override { return config_; }

 protected:
  torch::Tensor Embed(const torch::Tensor& tokens) const override;
  torch::Tensor Block(int layer, const torch::Tensor& resid_pre,
                      const SiteInterceptor& intercept) const override;
  torch::Tensor FinalNorm(const torch::Tensor& resid) const override;
  torch::Tensor Unembed(const torch::Tensor& normed) const override;

 private:
  GptNeoxModel() = default;

  torch::Tensor LayerNorm(const torch::Tensor& x, const torch::Tensor& weight,
                          const torch::Tensor& bias) const;
  torch::Tensor Attention(const GptNeoxBlock& block,
                          const torch::Tensor& x) const;
  torch::Tensor Mlp(const GptNeoxBlock& block, const torch::Tensor& x) const;
  // Applies rotary embeddings to the first rotary_dims of q or k
  // [batch, heads, seq, head_dim].
  torch::Tensor ApplyRotary(const torch::Tensor& x, const torch::Tensor& cos,
                            const torch::Tensor& sin) const;

  format::ModelConfig config_;
  int head_dim_ = 0;
  int rotary_dims_ = 0;
  torch::Tensor embed_in_;  // [vocab, hidden]
  std::vector<GptNeoxBlock> blocks_;
  torch::Tensor final_layer_norm_weight_, final_layer_norm_bias_;
  torch::Tensor embed_out_;  // [vocab, hidden]; aliases embed_in_ when tied
};

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_LM_GPT_NEOX_H_
