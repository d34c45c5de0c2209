#include "worker/engine/gpt_neox.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/format/internal/absl_compat.h"
#include "worker/format/internal/status_macros.h"
#include "worker/format/mapped_file.h"
#include "worker/format/safetensors.h"

namespace saetrack::engine {
namespace {

using format::AsAbsl;

// HF's GPTNeoXConfig.initializer_range.
constexpr double kInitializerRange = 0.02;

absl::StatusOr<torch::Tensor> LoadTensor(
    const format::SafetensorsCheckpoint& checkpoint, const std::string& name,
    const std::vector<int64_t>& expected_shape, const torch::Device& device) {
  absl::StatusOr<const format::TensorView*> found = checkpoint.Get(name);
  if (!found.ok()) {
    // A checkpoint without one of the architecture's tensors is malformed.
    return absl::DataLossError(found.status().message());
  }
  const format::TensorView* view = *found;
  torch::Dtype dtype;
  switch (view->dtype) {
    case format::Dtype::kF32:
      dtype = torch::kFloat32;
      break;
    case format::Dtype::kF16:
      dtype = torch::kFloat16;
      break;
    case format::Dtype::kBF16:
      dtype = torch::kBFloat16;
      break;
    default:
      return absl::DataLossError(absl::StrCat(
          "tensor \"", name, "\" (at byte ", view->file_offset, ") has dtype ",
          format::DtypeName(view->dtype), ", expected F32, F16 or BF16"));
  }
  if (view->shape != expected_shape) {
    return absl::DataLossError(absl::StrCat(
        "tensor \"", name, "\" (at byte ", view->file_offset, ") has shape [",
        absl::StrJoin(view->shape, ", "), "], expected [",
        absl::StrJoin(expected_shape, ", "), "] from config.json"));
  }
  // Copy rather than from_blob: the mapped bytes need not be aligned for the
  // element type, and the mapping may go away before the model does.
  torch::Tensor tensor = torch::empty(view->shape, torch::dtype(dtype));
  std::memcpy(tensor.data_ptr(), view->bytes.data(), view->bytes.size());
  return tensor.to(device, torch::kFloat32);
}

torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias) {
  return torch::nn::functional::linear(x, weight, bias);
}

}  // namespace

absl::StatusOr<HookSite> ParseHookSite(std::string_view name) {
  if (name == "resid_pre") return HookSite::kResidPre;
  if (name == "resid_post") return HookSite::kResidPost;
  if (name == "attn_out") return HookSite::kAttnOut;
  if (name == "mlp_out") return HookSite::kMlpOut;
  return absl::InvalidArgumentError(
      absl::StrCat("hook site \"", AsAbsl(name),
                   "\" is not one of resid_pre, resid_post, attn_out, "
                   "mlp_out"));
}

const char* HookSiteName(HookSite site) {
  switch (site) {
    case HookSite::kResidPre:
      return "resid_pre";
    case HookSite::kResidPost:
      return "resid_post";
    case HookSite::kAttnOut:
      return "attn_out";
    case HookSite::kMlpOut:
      return "mlp_out";
  }
  return "?";
}

absl::StatusOr<GptNeoxModel> GptNeoxModel::Load(const std::string& dir,
                                                const torch::Device& device) {
  SAETRACK_ASSIGN_OR_RETURN(format::ModelConfig config,
                            format::LoadModelConfig(dir));
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
    absl::StatusOr<torch::Tensor> tensor =
        LoadTensor(checkpoint, name, shape, device);
    if (!tensor.ok()) {
      return absl::Status(tensor.status().code(),
                          absl::StrCat(dir, ": ", tensor.status().message()));
    }
    *out = *std::move(tensor);
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
  torch::Tensor scores =
      torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(head_dim_));
  torch::Tensor future =
      torch::ones({seq, seq}, torch::dtype(torch::kBool).device(x.device()))
          .triu(1);
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  torch::Tensor weights = torch::softmax(scores, -1);
  torch::Tensor context = torch::matmul(weights, v)
                              .permute({0, 2, 1, 3})
                              .reshape({batch, seq, heads * head_dim_});
  return Linear(context, block.attention_dense_weight,
                block.attention_dense_bias);
}

torch::Tensor GptNeoxModel::Mlp(const GptNeoxBlock& block,
                                const torch::Tensor& x) const {
  torch::Tensor h =
      Linear(x, block.mlp_dense_h_to_4h_weight, block.mlp_dense_h_to_4h_bias);
  if (config_.hidden_act == "gelu") {
    h = torch::gelu(h);
  } else if (config_.hidden_act == "relu") {
    h = torch::relu(h);
  } else {
    // gelu_new, gelu_fast, gelu_pytorch_tanh: the tanh approximation.
    h = torch::gelu(h, "tanh");
  }
  return Linear(h, block.mlp_dense_4h_to_h_weight,
                block.mlp_dense_4h_to_h_bias);
}

std::vector<torch::Tensor> GptNeoxModel::RunToHooks(
    const torch::Tensor& tokens, const std::vector<HookPoint>& hooks) const {
  std::vector<torch::Tensor> out(hooks.size());
  int last_layer = -1;
  for (const HookPoint& hook : hooks)
    last_layer = std::max(last_layer, hook.layer);
  auto capture = [&](int layer, HookSite site, const torch::Tensor& value) {
    for (size_t i = 0; i < hooks.size(); ++i) {
      if (hooks[i].layer == layer && hooks[i].site == site) out[i] = value;
    }
  };
  torch::Tensor x = torch::embedding(embed_in_, tokens);
  for (int layer = 0; layer <= last_layer; ++layer) {
    const GptNeoxBlock& block = blocks_[layer];
    capture(layer, HookSite::kResidPre, x);
    torch::Tensor attn_out = Attention(
        block,
        LayerNorm(x, block.input_layernorm_weight, block.input_layernorm_bias));
    capture(layer, HookSite::kAttnOut, attn_out);
    torch::Tensor mlp_out;
    if (config_.use_parallel_residual) {
      // x + attn(ln1(x)) + mlp(ln2(x))
      mlp_out = Mlp(block, LayerNorm(x, block.post_attention_layernorm_weight,
                                     block.post_attention_layernorm_bias));
      x = x + attn_out + mlp_out;
    } else {
      x = x + attn_out;
      mlp_out = Mlp(block, LayerNorm(x, block.post_attention_layernorm_weight,
                                     block.post_attention_layernorm_bias));
      x = x + mlp_out;
    }
    capture(layer, HookSite::kMlpOut, mlp_out);
    capture(layer, HookSite::kResidPost, x);
  }
  return out;
}

torch::Tensor GptNeoxModel::Logits(const torch::Tensor& tokens) const {
  torch::Tensor x = RunToHooks(
      tokens, {{config_.num_hidden_layers - 1, HookSite::kResidPost}})[0];
  x = LayerNorm(x, final_layer_norm_weight_, final_layer_norm_bias_);
  return torch::matmul(x, embed_out_.t());
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
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", dir));
  }
  format::SafetensorsWriter writer;
  // HF's save_pretrained marks PyTorch checkpoints this way.
  writer.SetMetadata("format", "pt");
  for (const auto& [name, tensor] : NamedParameters()) {
    torch::Tensor cpu =
        tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    SAETRACK_RETURN_IF_ERROR(writer.AddF32(
        name, std::vector<int64_t>(cpu.sizes().begin(), cpu.sizes().end()),
        cpu.data_ptr<float>()));
  }
  SAETRACK_RETURN_IF_ERROR(format::WriteFileAtomically(
      absl::StrCat(dir, "/model.safetensors"), writer.Serialize()));
  return format::WriteFileAtomically(absl::StrCat(dir, "/config.json"),
                                     config_json);
}

}  // namespace saetrack::engine
