#include "engine/lm/gpt_neox.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/lm/internal/transformer_ops.h"
#include "base/status_macros.h"
#include "format/safetensors.h"

namespace saetrack::engine {
namespace {

// HF's GPTNeoXConfig.initializer_range.
constexpr double kInitializerRange = 0.02;

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias) {
  return torch::nn::functional::linear(x, weight, bias);
}

}  // namespace

absl::StatusOr<GptNeoxModel> GptNeoxModel::Load(const std::string& dir,
                                                const torch::Device& device) {
  SAETRACK_ASSIGN_OR_RETURN(format::ModelConfig config,
                            format::LoadModelConfig(dir));
  if (config.architecture != "gpt_neox") {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, "/config.json describes a \"", config.architecture,
                     "\" model, not \"gpt_neox\""));
  }
  SAETRACK_ASSIGN_OR_RETURN(format::SafetensorsCheckpoint checkpoint,
                            format::SafetensorsCheckpoint::Open(dir));
  GptNeoxModel model;
  model.config_ = config;
  model.head_dim_ = config.hidden_size / config.num_attention_heads;
  model.rotary_dims_ = static_cast<int>(model.head_dim_ * config.rotary_pct);
  const int64_t hidden = config.hidden_size;
  const int64_t inner = config.intermediate_size;
  const int64_t vocab = config.vocab_size;
  auto load = [&](const std::string& name, std::vector<int64_t> shape,
                  torch::Tensor* out) -> absl::Status {
    SAETRACK_ASSIGN_OR_RETURN(*out, internal::LoadCheckpointTensor(
                                        checkpoint, dir, name, shape, device));
    return absl::OkStatus();
  };
  SAETRACK_RETURN_IF_ERROR(
      load("gpt_neox.embed_in.weight", {vocab, hidden}, &model.embed_in_));
  model.blocks_.resize(config.num_hidden_layers);
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    GptNeoxBlock& block = model.blocks_[i];
    const std::string prefix = absl::StrCat("gpt_neox.layers.", i, ".");
    const std::vector<
        std::pair<std::string, std::pair<std::vector<int64_t>, torch::Tensor*>>>
        tensors = {
            {"input_layernorm.weight",
             {{hidden}, &block.input_layernorm_weight}},
            {"input_layernorm.bias", {{hidden}, &block.input_layernorm_bias}},
            {"post_attention_layernorm.weight",
             {{hidden}, &block.post_attention_layernorm_weight}},
            {"post_attention_layernorm.bias",
             {{hidden}, &block.post_attention_layernorm_bias}},
            {"attention.query_key_value.weight",
             {{3 * hidden, hidden}, &block.query_key_value_weight}},
            {"attention.query_key_value.bias",
             {{3 * hidden}, &block.query_key_value_bias}},
            {"attention.dense.weight",
             {{hidden, hidden}, &block.attention_dense_weight}},
            {"attention.dense.bias", {{hidden}, &block.attention_dense_bias}},
            {"mlp.dense_h_to_4h.weight",
             {{inner, hidden}, &block.mlp_dense_h_to_4h_weight}},
            {"mlp.dense_h_to_4h.bias",
             {{inner}, &block.mlp_dense_h_to_4h_bias}},
            {"mlp.dense_4h_to_h.weight",
             {{hidden, inner}, &block.mlp_dense_4h_to_h_weight}},
            {"mlp.dense_4h_to_h.bias",
             {{hidden}, &block.mlp_dense_4h_to_h_bias}},
        };
    for (const auto& [suffix, spec] : tensors) {
      SAETRACK_RETURN_IF_ERROR(load(prefix + suffix, spec.first, spec.second));
    }
  }
  SAETRACK_RETURN_IF_ERROR(load("gpt_neox.final_layer_norm.weight", {hidden},
                                &model.final_layer_norm_weight_));
  SAETRACK_RETURN_IF_ERROR(load("gpt_neox.final_layer_norm.bias", {hidden},
                                &model.final_layer_norm_bias_));
  if (config.tie_word_embeddings && !checkpoint.Get("embed_out.weight").ok()) {
    model.embed_out_ = model.embed_in_;
  } else {
    SAETRACK_RETURN_IF_ERROR(
        load("embed_out.weight", {vocab, hidden}, &model.embed_out_));
  }
  return model;
}

GptNeoxModel GptNeoxModel::RandomInit(const format::ModelConfig& config,
                                      uint64_t seed,
                                      const torch::Device& device) {
  GptNeoxModel model;
  model.config_ = config;
  model.head_dim_ = config.hidden_size / config.num_attention_heads;
  model.rotary_dims_ = static_cast<int>(model.head_dim_ * config.rotary_pct);
  // A private generator keeps initialisation deterministic without touching
  // LibTorch's global seed (other engines may run in the same process).
  at::Generator generator = at::detail::createCPUGenerator(seed);
  const int64_t hidden = config.hidden_size;
  const int64_t inner = config.intermediate_size;
  const int64_t vocab = config.vocab_size;
  auto normal = [&](std::vector<int64_t> shape, double std) {
    return (torch::randn(shape, generator, torch::kFloat32) * std).to(device);
  };
  auto zeros = [&](int64_t size) {
    return torch::zeros({size}, torch::dtype(torch::kFloat32).device(device));
  };
  auto ones = [&](int64_t size) {
    return torch::ones({size}, torch::dtype(torch::kFloat32).device(device));
  };
  // GPT-2 style scaling of the projections that write into the residual
  // stream, so its variance does not grow with depth.
  const double output_std =
      kInitializerRange / std::sqrt(2.0 * config.num_hidden_layers);
  model.embed_in_ = normal({vocab, hidden}, kInitializerRange);
  model.blocks_.resize(config.num_hidden_layers);
  for (GptNeoxBlock& block : model.blocks_) {
    block.input_layernorm_weight = ones(hidden);
    block.input_layernorm_bias = zeros(hidden);
    block.post_attention_layernorm_weight = ones(hidden);
    block.post_attention_layernorm_bias = zeros(hidden);
    block.query_key_value_weight =
        normal({3 * hidden, hidden}, kInitializerRange);
    block.query_key_value_bias = zeros(3 * hidden);
    block.attention_dense_weight = normal({hidden, hidden}, output_std);
    block.attention_dense_bias = zeros(hidden);
    block.mlp_dense_h_to_4h_weight = normal({inner, hidden}, kInitializerRange);
    block.mlp_dense_h_to_4h_bias = zeros(inner);
    block.mlp_dense_4h_to_h_weight = normal({hidden, inner}, output_std);
    block.mlp_dense_4h_to_h_bias = zeros(hidden);
  }
  model.final_layer_norm_weight_ = ones(hidden);
  model.final_layer_norm_bias_ = zeros(hidden);
  model.embed_out_ = config.tie_word_embeddings
                         ? model.embed_in_
                         : normal({vocab, hidden}, kInitializerRange);
  return model;
}

torch::Tensor GptNeoxModel::LayerNorm(const torch::Tensor& x,
                                      const torch::Tensor& weight,
                                      const torch::Tensor& bias) const {
  return torch::layer_norm(x, {config_.hidden_size}, weight, bias,
                           config_.layer_norm_eps);
}

torch::Tensor GptNeoxModel::ApplyRotary(const torch::Tensor& x,
                                        const torch::Tensor& cos,
                                        const torch::Tensor& sin) const {
  const int64_t half = rotary_dims_ / 2;
  torch::Tensor rotary = x.narrow(-1, 0, rotary_dims_);
  torch::Tensor pass = x.narrow(-1, rotary_dims_, head_dim_ - rotary_dims_);
  // HF rotate_half: cat(-x2, x1) over the two halves of the rotary dims.
  torch::Tensor rotated = torch::cat(
      {-rotary.narrow(-1, half, half), rotary.narrow(-1, 0, half)}, -1);
  return torch::cat({rotary * cos + rotated * sin, pass}, -1);
}

torch::Tensor GptNeoxModel::Attention(const GptNeoxBlock& block,
                                      const torch::Tensor& x) const {
  const int64_t batch = x.size(0);
  const int64_t seq = x.size(1);
  const int64_t heads = config_.num_attention_heads;
  // HF layout: the fused projection is [heads, 3 * head_dim] per position,
  // each head holding its own q, k, v in that order.
  torch::Tensor qkv =
      Linear(x, block.query_key_value_weight, block.query_key_value_bias)
          .view({batch, seq, heads, 3 * head_dim_});
  torch::Tensor q = qkv.narrow(-1, 0, head_dim_).permute({0, 2, 1, 3});
  torch::Tensor k = qkv.narrow(-1, head_dim_, head_dim_).permute({0, 2, 1, 3});
  torch::Tensor v =
      qkv.narrow(-1, 2 * head_dim_, head_dim_).permute({0, 2, 1, 3});
  if (rotary_dims_ > 0) {
    const auto options = torch::dtype(torch::kFloat32).device(x.device());
    torch::Tensor inv_freq =
        1.0 / torch::pow(static_cast<double>(config_.rotary_emb_base),
                         torch::arange(0, rotary_dims_, 2, options) /
                             static_cast<double>(rotary_dims_));
    torch::Tensor positions = torch::arange(seq, options);
    torch::Tensor freqs = torch::outer(positions, inv_freq);
    torch::Tensor angles = torch::cat({freqs, freqs}, -1);  // [seq, rotary]
    torch::Tensor cos = angles.cos();
    torch::Tensor sin = angles.sin();
    q = ApplyRotary(q, cos, sin);
    k = ApplyRotary(k, cos, sin);
  }
  const torch::Tensor context = internal::CausalSelfAttention(q, k, v);
  return Linear(context, block.attention_dense_weight,
                block.attention_dense_bias);
}

torch::Tensor GptNeoxModel::Mlp(const GptNeoxBlock& block,
                                const torch::Tensor& x) const {
  torch::Tensor h =
      Linear(x, block.mlp_dense_h_to_4h_weight, block.mlp_dense_h_to_4h_bias);
  h = internal::Activation(config_.hidden_act, h);
  return Linear(h, block.mlp_dense_4h_to_h_weight,
                block.mlp_dense_4h_to_h_bias);
}

torch::Tensor GptNeoxModel::Embed(const torch::Tensor& tokens) const {
  return torch::embedding(embed_in_, tokens);
}

torch::Tensor GptNeoxModel::Block(int layer, const torch::Tensor& resid_pre,
                                  const SiteInterceptor& intercept) const {
  const GptNeoxBlock& block = blocks_[layer];
  const torch::Tensor attn_out = intercept(
      HookSite::kAttnOut,
      Attention(block, LayerNorm(resid_pre, block.input_layernorm_weight,
                                 block.input_layernorm_bias)));
  if (config_.use_parallel_residual) {
    // x + attn(ln1(x)) + mlp(ln2(x))
    const torch::Tensor mlp_out = intercept(
        HookSite::kMlpOut,
        Mlp(block, LayerNorm(resid_pre, block.post_attention_layernorm_weight,
                             block.post_attention_layernorm_bias)));
    return resid_pre + attn_out + mlp_out;
  }
  const torch::Tensor mid = resid_pre + attn_out;
  const torch::Tensor mlp_out =
      intercept(HookSite::kMlpOut,
                Mlp(block, LayerNorm(mid, block.post_attention_layernorm_weight,
                                     block.post_attention_layernorm_bias)));
  return mid + mlp_out;
}

torch::Tensor GptNeoxModel::FinalNorm(const torch::Tensor& resid) const {
  return LayerNorm(resid, final_layer_norm_weight_, final_layer_norm_bias_);
}

torch::Tensor GptNeoxModel::Unembed(const torch::Tensor& normed) const {
  return torch::matmul(normed, embed_out_.t());
}

std::vector<std::pair<std::string, torch::Tensor>>
GptNeoxModel::NamedParameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> named;
  named.emplace_back("gpt_neox.embed_in.weight", embed_in_);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const GptNeoxBlock& block = blocks_[i];
    const std::string prefix = absl::StrCat("gpt_neox.layers.", i, ".");
    named.emplace_back(prefix + "input_layernorm.weight",
                       block.input_layernorm_weight);
    named.emplace_back(prefix + "input_layernorm.bias",
                       block.input_layernorm_bias);
    named.emplace_back(prefix + "post_attention_layernorm.weight",
                       block.post_attention_layernorm_weight);
    named.emplace_back(prefix + "post_attention_layernorm.bias",
                       block.post_attention_layernorm_bias);
    named.emplace_back(prefix + "attention.query_key_value.weight",
                       block.query_key_value_weight);
    named.emplace_back(prefix + "attention.query_key_value.bias",
                       block.query_key_value_bias);
    named.emplace_back(prefix + "attention.dense.weight",
                       block.attention_dense_weight);
    named.emplace_back(prefix + "attention.dense.bias",
                       block.attention_dense_bias);
    named.emplace_back(prefix + "mlp.dense_h_to_4h.weight",
                       block.mlp_dense_h_to_4h_weight);
    named.emplace_back(prefix + "mlp.dense_h_to_4h.bias",
                       block.mlp_dense_h_to_4h_bias);
    named.emplace_back(prefix + "mlp.dense_4h_to_h.weight",
                       block.mlp_dense_4h_to_h_weight);
    named.emplace_back(prefix + "mlp.dense_4h_to_h.bias",
                       block.mlp_dense_4h_to_h_bias);
  }
  named.emplace_back("gpt_neox.final_layer_norm.weight",
                     final_layer_norm_weight_);
  named.emplace_back("gpt_neox.final_layer_norm.bias", final_layer_norm_bias_);
  if (!config_.tie_word_embeddings) {
    named.emplace_back("embed_out.weight", embed_out_);
  }
  return named;
}

absl::Status GptNeoxModel::SaveHuggingFace(
    const std::string& dir, const std::string& config_json) const {
  return internal::SaveHuggingFace(dir, config_json, NamedParameters());
}

}  // namespace saetrack::engine
