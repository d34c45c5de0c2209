#include "engine/lm/gpt2.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/lm/internal/transformer_ops.h"
#include "base/status_macros.h"
#include "format/safetensors.h"

namespace saetrack::engine {
namespace {

// HF's GPT2Config.initializer_range.
constexpr double kInitializerRange = 0.02;
// GPT2LMHeadModel nests the transformer under this prefix; GPT2Model
// checkpoints (the original hub "gpt2" files) do not.
constexpr char kTransformerPrefix[] = "transformer.";
constexpr char kLmHead[] = "lm_head.weight";

// HF's Conv1D: y = x W + b with W [in, out].
torch::Tensor Conv1D(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias) {
  return torch::matmul(x, weight) + bias;
}

// Weights whose output is added to the residual stream: HF scales their
// initialisation by 1/sqrt(2 * layers) so the stream's variance does not grow
// with depth.
bool IsResidualOutput(const std::string& name) {
  return name.find("c_proj.weight") != std::string::npos;
}

}  // namespace

std::vector<Gpt2Model::ParameterSlot> Gpt2Model::TransformerSlots() {
  const int64_t hidden = config_.hidden_size;
  const int64_t inner = config_.intermediate_size;
  std::vector<ParameterSlot> slots = {
      {"wte.weight", {config_.vocab_size, hidden}, &wte_},
      {"wpe.weight", {config_.max_position_embeddings, hidden}, &wpe_},
  };
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Gpt2Block& block = blocks_[i];
    const std::string prefix = absl::StrCat("h.", i, ".");
    const std::vector<ParameterSlot> block_slots = {
        {"ln_1.weight", {hidden}, &block.ln_1_weight},
        {"ln_1.bias", {hidden}, &block.ln_1_bias},
        {"attn.c_attn.weight", {hidden, 3 * hidden}, &block.c_attn_weight},
        {"attn.c_attn.bias", {3 * hidden}, &block.c_attn_bias},
        {"attn.c_proj.weight", {hidden, hidden}, &block.attn_c_proj_weight},
        {"attn.c_proj.bias", {hidden}, &block.attn_c_proj_bias},
        {"ln_2.weight", {hidden}, &block.ln_2_weight},
        {"ln_2.bias", {hidden}, &block.ln_2_bias},
        {"mlp.c_fc.weight", {hidden, inner}, &block.c_fc_weight},
        {"mlp.c_fc.bias", {inner}, &block.c_fc_bias},
        {"mlp.c_proj.weight", {inner, hidden}, &block.mlp_c_proj_weight},
        {"mlp.c_proj.bias", {hidden}, &block.mlp_c_proj_bias},
    };
    for (const ParameterSlot& slot : block_slots) {
      slots.push_back({prefix + slot.name, slot.shape, slot.tensor});
    }
  }
  slots.push_back({"ln_f.weight", {hidden}, &ln_f_weight_});
  slots.push_back({"ln_f.bias", {hidden}, &ln_f_bias_});
  return slots;
}

absl::StatusOr<Gpt2Model> Gpt2Model::Load(const std::string& dir,
                                          const torch::Device& device) {
  SAETRACK_ASSIGN_OR_RETURN(format::ModelConfig config,
                            format::LoadModelConfig(dir));
  if (config.architecture != "gpt2") {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, "/config.json describes a \"", config.architecture,
                     "\" model, not \"gpt2\""));
  }
  SAETRACK_ASSIGN_OR_RETURN(format::SafetensorsCheckpoint checkpoint,
                            format::SafetensorsCheckpoint::Open(dir));
  Gpt2Model model;
  model.config_ = config;
  model.head_dim_ = config.hidden_size / config.num_attention_heads;
  model.blocks_.resize(config.num_hidden_layers);
  const std::string prefix =
      checkpoint.Get(absl::StrCat(kTransformerPrefix, "wte.weight")).ok()
          ? kTransformerPrefix
          : "";
  for (const ParameterSlot& slot : model.TransformerSlots()) {
    SAETRACK_ASSIGN_OR_RETURN(
        *slot.tensor,
        internal::LoadCheckpointTensor(checkpoint, dir, prefix + slot.name,
                                       slot.shape, device));
  }
  // save_pretrained drops a tied lm_head, so its absence means "tied".
  if (checkpoint.Get(kLmHead).ok() || !config.tie_word_embeddings) {
    SAETRACK_ASSIGN_OR_RETURN(
        model.lm_head_, internal::LoadCheckpointTensor(
                            checkpoint, dir, kLmHead,
                            {config.vocab_size, config.hidden_size}, device));
    model.lm_head_tied_ = false;
  } else {
    model.lm_head_ = model.wte_;
    model.lm_head_tied_ = true;
  }
  return model;
}

Gpt2Model Gpt2Model::RandomInit(const format::ModelConfig& config,
                                uint64_t seed, const torch::Device& device) {
  Gpt2Model model;
  model.config_ = config;
  model.head_dim_ = config.hidden_size / config.num_attention_heads;
  model.blocks_.resize(config.num_hidden_layers);
  // A private generator keeps initialisation deterministic without touching
  // LibTorch's global seed.
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const double output_std =
      kInitializerRange / std::sqrt(2.0 * config.num_hidden_layers);
  auto normal = [&](const std::vector<int64_t>& shape, double std) {
    return (torch::randn(shape, generator, torch::kFloat32) * std).to(device);
  };
  for (const ParameterSlot& slot : model.TransformerSlots()) {
    const bool is_layer_norm = slot.name.find("ln_") != std::string::npos;
    const bool is_bias =
        slot.name.size() >= 5 &&
        slot.name.compare(slot.name.size() - 5, 5, ".bias") == 0;
    if (is_layer_norm && !is_bias) {
      *slot.tensor =
          torch::ones(slot.shape, torch::dtype(torch::kFloat32).device(device));
    } else if (is_bias) {
      *slot.tensor = torch::zeros(slot.shape,
                                  torch::dtype(torch::kFloat32).device(device));
    } else {
      *slot.tensor =
          normal(slot.shape,
                 IsResidualOutput(slot.name) ? output_std : kInitializerRange);
    }
  }
  model.lm_head_tied_ = config.tie_word_embeddings;
  model.lm_head_ =
      config.tie_word_embeddings
          ? model.wte_
          : normal({config.vocab_size, config.hidden_size}, kInitializerRange);
  return model;
}

std::vector<std::pair<std::string, torch::Tensor>> Gpt2Model::NamedParameters()
    const {
  std::vector<std::pair<std::string, torch::Tensor>> named;
  // TransformerSlots hands out pointers for loading; here they are only read.
  for (const ParameterSlot& slot :
       const_cast<Gpt2Model*>(this)->TransformerSlots()) {
    named.emplace_back(kTransformerPrefix + slot.name, *slot.tensor);
  }
  if (!lm_head_tied_) named.emplace_back(kLmHead, lm_head_);
  return named;
}

absl::Status Gpt2Model::SaveHuggingFace(const std::string& dir,
                                        const std::string& config_json) const {
  return internal::SaveHuggingFace(dir, config_json, NamedParameters());
}

std::string Gpt2ConfigJson(const format::ModelConfig& config) {
  return absl::StrCat(
      "{\n  \"activation_function\": \"", config.hidden_act,
      "\",\n  \"architectures\": [\"GPT2LMHeadModel\"],\n"
      "  \"layer_norm_epsilon\": ",
      config.layer_norm_eps,
      ",\n  \"model_type\": \"gpt2\",\n  \"n_embd\": ", config.hidden_size,
      ",\n  \"n_head\": ", config.num_attention_heads,
      ",\n  \"n_inner\": ", config.intermediate_size,
      ",\n  \"n_layer\": ", config.num_hidden_layers,
      ",\n  \"n_positions\": ", config.max_position_embeddings,
      ",\n  \"tie_word_embeddings\": ",
      config.tie_word_embeddings ? "true" : "false",
      ",\n  \"torch_dtype\": \"float32\",\n  \"vocab_size\": ",
      config.vocab_size, "\n}\n");
}

torch::Tensor Gpt2Model::LayerNorm(const torch::Tensor& x,
                                   const torch::Tensor& weight,
                                   const torch::Tensor& bias) const {
  return torch::layer_norm(x, {config_.hidden_size}, weight, bias,
                           config_.layer_norm_eps);
}

torch::Tensor Gpt2Model::Embed(const torch::Tensor& tokens) const {
  const int64_t seq = tokens.size(1);
  TORCH_CHECK(seq <= config_.max_position_embeddings, "sequence of ", seq,
              " tokens exceeds GPT-2's n_positions (",
              config_.max_position_embeddings, ")");
  return torch::embedding(wte_, tokens) + wpe_.narrow(0, 0, seq);
}

torch::Tensor Gpt2Model::Block(int layer, const torch::Tensor& resid_pre,
                               const SiteInterceptor& intercept) const {
  const Gpt2Block& block = blocks_[layer];
  const int64_t batch = resid_pre.size(0);
  const int64_t seq = resid_pre.size(1);
  const int64_t hidden = config_.hidden_size;
  const int64_t heads = config_.num_attention_heads;
  const torch::Tensor qkv =
      Conv1D(LayerNorm(resid_pre, block.ln_1_weight, block.ln_1_bias),
             block.c_attn_weight, block.c_attn_bias);
  // Unlike GPT-NeoX's per-head interleaving, q, k and v are the three
  // consecutive thirds of the projection.
  auto split_heads = [&](int64_t part) {
    return qkv.narrow(-1, part * hidden, hidden)
        .view({batch, seq, heads, head_dim_})
        .permute({0, 2, 1, 3});
  };
  const torch::Tensor context = internal::CausalSelfAttention(
      split_heads(0), split_heads(1), split_heads(2));
  const torch::Tensor attn_out = intercept(
      HookSite::kAttnOut,
      Conv1D(context, block.attn_c_proj_weight, block.attn_c_proj_bias));
  const torch::Tensor mid = resid_pre + attn_out;
  const torch::Tensor inner = internal::Activation(
      config_.hidden_act,
      Conv1D(LayerNorm(mid, block.ln_2_weight, block.ln_2_bias),
             block.c_fc_weight, block.c_fc_bias));
  const torch::Tensor mlp_out =
      intercept(HookSite::kMlpOut,
                Conv1D(inner, block.mlp_c_proj_weight, block.mlp_c_proj_bias));
  return mid + mlp_out;
}

torch::Tensor Gpt2Model::FinalNorm(const torch::Tensor& resid) const {
  return LayerNorm(resid, ln_f_weight_, ln_f_bias_);
}

torch::Tensor Gpt2Model::Unembed(const torch::Tensor& normed) const {
  return torch::matmul(normed, lm_head_.t());
}

}  // namespace saetrack::engine
