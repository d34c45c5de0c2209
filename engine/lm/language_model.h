// The language models whose activations saetrack tracks, behind one
// interface: forward passes stopped at hook points, logits, next-token loss,
// and forward passes with one hook point's activation replaced (for the
// "fraction of loss recovered" of an SAE). GptNeoxModel (Pythia) and
// Gpt2Model implement it; LoadLanguageModel picks one from a Hugging Face
// directory's config.json.
//
// Errors inside a forward pass (a bad token id, a replacement of the wrong
// shape, out of memory) are LibTorch exceptions (c10::Error), as everywhere
// in LibTorch; the engine boundary (SaeTrainingEngine::Train) turns them into
// absl::Status. Loading never throws.
#ifndef SAETRACK_ENGINE_LM_LANGUAGE_MODEL_H_
#define SAETRACK_ENGINE_LM_LANGUAGE_MODEL_H_

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "format/model_config.h"

namespace saetrack::engine {

// Where in a block an activation is read.
enum class HookSite {
  kResidPre,   // residual stream entering block L
  kResidPost,  // residual stream leaving block L (== resid_pre of L + 1)
  kAttnOut,    // attention output of block L (after its output projection)
  kMlpOut,     // MLP output of block L (after its output projection)
};

// "resid_pre", "resid_post", "attn_out", "mlp_out". Errors: kInvalidArgument
// naming the value.
absl::StatusOr<HookSite> ParseHookSite(std::string_view name);
const char* HookSiteName(HookSite site);

struct HookPoint {
  int layer = 0;
  HookSite site = HookSite::kResidPre;
};

// Receives the clean activation [batch, seq, d_model] at a hook point and
// returns what the forward pass continues with: a tensor of the same shape on
// the same device (an SAE reconstruction, zeros for ablation, ...).
using ActivationReplacement =
    std::function<torch::Tensor(const torch::Tensor& activation)>;

// Mean next-token cross-entropy (nats) of `logits` [batch, seq, vocab] for
// `tokens` [batch, seq]: position t predicts token t + 1. REQUIRES: seq >= 2.
torch::Tensor NextTokenCrossEntropy(const torch::Tensor& logits,
                                    const torch::Tensor& tokens);

// A causal decoder-only transformer LM. Tokens are int64 tensors
// [batch, seq] on the model's device; activations are float32
// [batch, seq, d_model]. Implementations own their weights and never modify
// them in a forward pass, so concurrent forward calls are safe. Forward
// methods follow the caller's autograd mode (the tiny-LM trainer
// differentiates through Logits) except the CrossEntropy methods, which
// evaluate without autograd.
class LanguageModel {
 public:
  virtual ~LanguageModel() = default;

  virtual const format::ModelConfig& config() const = 0;
  int d_model() const { return config().hidden_size; }
  int num_layers() const { return config().num_hidden_layers; }

  // Activations at each hook, in the order given; runs blocks only up to the
  // deepest hooked layer. REQUIRES: every hook layer in [0, num_layers()).
  std::vector<torch::Tensor> RunToHooks(
      const torch::Tensor& tokens, const std::vector<HookPoint>& hooks) const;

  // Logits [batch, seq, vocab].
  torch::Tensor Logits(const torch::Tensor& tokens) const;

  // The unembedding alone applied to vectors [..., d_model] (no final layer
  // norm): logits [..., vocab]. The "logit lens" of a direction.
  torch::Tensor UnembedDirections(const torch::Tensor& directions) const {
    return Unembed(directions);
  }

  // Logits of a forward pass in which the activation at `hook` is replaced by
  // replacement(activation) and everything after it is computed from the
  // replacement. REQUIRES: hook.layer in [0, num_layers()); the replacement
  // has the activation's shape (checked: c10::Error otherwise).
  torch::Tensor LogitsWithReplacement(
      const torch::Tensor& tokens, const HookPoint& hook,
      const ActivationReplacement& replacement) const;

  // Hugging Face's output_hidden_states: num_layers() + 1 tensors, entry i <
  // num_layers() the resid_pre of layer i, the last one the final layer
  // norm's output (what the unembedding reads).
  std::vector<torch::Tensor> HiddenStates(const torch::Tensor& tokens) const;

  // Mean next-token cross-entropy (nats) of the clean model, and with the
  // activation at `hook` replaced. Evaluation only: no autograd graph.
  // REQUIRES: seq >= 2.
  double CrossEntropy(const torch::Tensor& tokens) const;
  double CrossEntropyWithReplacement(
      const torch::Tensor& tokens, const HookPoint& hook,
      const ActivationReplacement& replacement) const;

 protected:
  LanguageModel() = default;
  LanguageModel(const LanguageModel&) = default;
  LanguageModel& operator=(const LanguageModel&) = default;

  // Lets the forward pass read or replace an activation inside a block
  // (kAttnOut, kMlpOut): returns the tensor the block continues with.
  using SiteInterceptor =
      std::function<torch::Tensor(HookSite site, torch::Tensor activation)>;

  // The architecture's pieces. The base class strings them together, so
  // every architecture gets hooks and replacement with the same semantics.
  // Residual stream entering block 0 (token and, where learned, position
  // embeddings).
  virtual torch::Tensor Embed(const torch::Tensor& tokens) const = 0;
  // Block `layer` applied to the residual stream `resid_pre`; returns its
  // resid_post. Must pass attn_out and mlp_out through `intercept` and use
  // what it returns in their place.
  virtual torch::Tensor Block(int layer, const torch::Tensor& resid_pre,
                              const SiteInterceptor& intercept) const = 0;
  // The final layer norm applied to the last block's resid_post.
  virtual torch::Tensor FinalNorm(const torch::Tensor& resid) const = 0;
  // Logits from the final layer norm's output.
  virtual torch::Tensor Unembed(const torch::Tensor& normed) const = 0;

 private:
  // Called at every hook site of the forward in order; returns the value the
  // forward continues with (the activation itself when only reading).
  using SiteVisitor = std::function<torch::Tensor(int layer, HookSite site,
                                                  torch::Tensor activation)>;

  // Embeds and runs blocks 0..last_layer; returns the last resid_post (or
  // the embeddings when last_layer is -1).
  torch::Tensor Forward(const torch::Tensor& tokens, int last_layer,
                        const SiteVisitor& visit) const;
};

// Loads the model in `dir` (config.json + safetensors weights, single or
// sharded, F32/F16/BF16 converted to float32) onto `device`, choosing the
// implementation from the config's architecture ("gpt_neox", "gpt2").
// Errors: as format::LoadModelConfig (kNotFound, kInvalidArgument naming the
// field); kDataLoss naming the tensor for missing or misshapen weights;
// kResourceExhausted when the weights do not fit; kInternal for other
// LibTorch failures.
absl::StatusOr<std::unique_ptr<LanguageModel>> LoadLanguageModel(
    const std::string& dir, const torch::Device& device);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_LM_LANGUAGE_MODEL_H_
