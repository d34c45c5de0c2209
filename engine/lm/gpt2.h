// GPT-2 (Hugging Face GPT2LMHeadModel) in LibTorch: learned position
// embeddings, pre-LayerNorm sequential residual blocks, causal softmax
// attention scaled by 1/sqrt(head_dim), an MLP with HF's configured activation
// (gelu_new, the tanh approximation, for GPT-2), a final LayerNorm and an
// unembedding tied to the token embedding unless the checkpoint has its own
// lm_head.weight.
#ifndef SAETRACK_ENGINE_LM_GPT2_H_
#define SAETRACK_ENGINE_LM_GPT2_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lm/language_model.h"
#include "format/model_config.h"

namespace saetrack::engine {

// Weights of one block. The projections are HF Conv1D layers, whose weight
// is [in, out] (y = x W + b), the transpose of a torch Linear's.
struct Gpt2Block {
  torch::Tensor ln_1_weight, ln_1_bias;
  // [hidden, 3 * hidden]: output columns are [q | k | v], each split into
  // heads of head_dim consecutive columns.
  torch::Tensor c_attn_weight, c_attn_bias;
  torch::Tensor attn_c_proj_weight, attn_c_proj_bias;  // [hidden, hidden]
  torch::Tensor ln_2_weight, ln_2_bias;
  torch::Tensor c_fc_weight, c_fc_bias;              // [hidden, inner]
  torch::Tensor mlp_c_proj_weight, mlp_c_proj_bias;  // [inner, hidden]
};

// The model. Owns its weight tensors (float32, on one device); forward calls
// do not modify them, so concurrent forwards are safe. Copies share weight
// tensors.
class Gpt2Model : public LanguageModel {
 public:
  // Loads `dir`/config.json and the safetensors weights (single or sharded;
  // F32, F16 or BF16, converted to float32) onto `device`. Tensor names may
  // carry GPT2LMHeadModel's "transformer." prefix or not (GPT2Model, as in
  // the original hub checkpoints); extra tensors (attention-mask buffers)
  // are ignored. lm_head.weight, when absent, is tied to wte.weight.
  // Errors: as format::LoadModelConfig and format::SafetensorsCheckpoint::
  // Open; kInvalidArgument when the config is not a GPT-2 one; kDataLoss
  // naming the tensor when a tensor is missing or has the wrong shape or
  // dtype, or lm_head.weight is absent with tie_word_embeddings false.
  static absl::StatusOr<Gpt2Model> Load(const std::string& dir,
                                        const torch::Device& device);

  // A freshly initialised model as HF initialises GPT-2 (normal(0, 0.02)
  // weights and embeddings, output projections scaled by 1/sqrt(2 * layers),
  // unit LayerNorms, zero biases), deterministic for `seed`.
  // REQUIRES: `config` passed format::ParseModelConfig's checks.
  static Gpt2Model RandomInit(const format::ModelConfig& config, uint64_t seed,
                              const torch::Device& device);

  // Every weight tensor with its GPT2LMHeadModel name ("transformer.wte.
  // weight", ...), in a fixed order; lm_head.weight only when untied.
  std::vector<std::pair<std::string, torch::Tensor>> NamedParameters() const;

  // Writes `dir`/config.json (`config_json`, the full HF config text) and
  // `dir`/model.safetensors (F32, NamedParameters names). Creates `dir`.
  absl::Status SaveHuggingFace(const std::string& dir,
                               const std::string& config_json) const;

  const format::ModelConfig& config() const override { return config_; }

 protected:
  // Token plus position embeddings. REQUIRES (checked): seq <=
  // max_position_embeddings (n_positions).
  torch::Tensor Embed(const torch::Tensor& tokens) const override;
  torch::Tensor Block(int layer, const torch::Tensor& resid_pre,
                      const SiteInterceptor& intercept) const override;
  torch::Tensor FinalNorm(const torch::Tensor& resid) const override;
  torch::Tensor Unembed(const torch::Tensor& normed) const override;

 private:
  Gpt2Model() = default;

  // One entry per weight tensor: HF name without the "transformer." prefix,
  // shape, and the member that holds it.
  struct ParameterSlot {
    std::string name;
    std::vector<int64_t> shape;
    torch::Tensor* tensor;
  };
  // The transformer's weights (everything but lm_head) in NamedParameters
  // order. REQUIRES: blocks_ has num_hidden_layers entries.
  std::vector<ParameterSlot> TransformerSlots();

  torch::Tensor LayerNorm(const torch::Tensor& x, const torch::Tensor& weight,
                          const torch::Tensor& bias) const;

  format::ModelConfig config_;
  int head_dim_ = 0;
  torch::Tensor wte_;  // [vocab, hidden]
  torch::Tensor wpe_;  // [n_positions, hidden]
  std::vector<Gpt2Block> blocks_;
  torch::Tensor ln_f_weight_, ln_f_bias_;
  torch::Tensor lm_head_;  // [vocab, hidden]; aliases wte_ when tied
  bool lm_head_tied_ = true;
};

// A Hugging Face config.json for a GPT2LMHeadModel with `config` (its
// hidden_size as n_embd, etc.; see format::ModelConfig).
std::string Gpt2ConfigJson(const format::ModelConfig& config);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_LM_GPT2_H_
