#include "engine/eval/lm_evaluation.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/lm/gpt2.h"
#include "engine/lm/gpt_neox.h"

namespace saetrack::engine {
namespace {

// Below this, zero-ablating the hook leaves the loss unchanged and the
// loss-recovered ratio is noise over noise.
constexpr double kMinLossGap = 1e-9;

std::string ShapeString(const torch::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

// The device of the model's weights. LanguageModel does not expose it, so
// ask the two implementations; nullopt for others.
std::optional<torch::Device> WeightDevice(const LanguageModel& model) {
  std::vector<std::pair<std::string, torch::Tensor>> parameters;
  if (const auto* neox = dynamic_cast<const GptNeoxModel*>(&model)) {
    parameters = neox->NamedParameters();
  } else if (const auto* gpt2 = dynamic_cast<const Gpt2Model*>(&model)) {
    parameters = gpt2->NamedParameters();
  }
  if (parameters.empty() || !parameters.front().second.defined()) {
    return std::nullopt;
  }
  return parameters.front().second.device();
}

// Checks everything that can be checked before a forward pass, so that bad
// input is kInvalidArgument rather than a LibTorch error deep in a block.
absl::Status ValidateInput(
    const LanguageModel& model, const torch::Tensor& contexts,
    const HookPoint& hook,
    const std::function<torch::Tensor(const torch::Tensor&)>& reconstruct,
    int64_t contexts_per_forward) {
  if (!contexts.defined() || contexts.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LM evaluation: contexts must be a 2-D [num_contexts, context_length] "
        "tensor, got ",
        contexts.defined() ? absl::StrCat("shape ", ShapeString(contexts))
                           : std::string("an undefined tensor")));
  }
  if (contexts.scalar_type() != torch::kInt64) {
    return absl::InvalidArgumentError(
        absl::StrCat("LM evaluation: contexts must be int64 token ids, got ",
                     c10::toString(contexts.scalar_type())));
  }
  if (contexts.size(0) < 1) {
    return absl::InvalidArgumentError("LM evaluation: no contexts");
  }
  if (contexts.size(1) < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("LM evaluation: contexts of ", contexts.size(1),
                     " tokens; next-token loss needs at least 2"));
  }
  const format::ModelConfig& config = model.config();
  // GPT-2's positions are learned: a longer context has no embedding.
  if (config.architecture == "gpt2" &&
      contexts.size(1) > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("LM evaluation: contexts of ", contexts.size(1),
                     " tokens exceed the model's max_position_embeddings (",
                     config.max_position_embeddings, ")"));
  }
  if (contexts_per_forward < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("LM evaluation: contexts_per_forward must be >= 1, got ",
                     contexts_per_forward));
  }
  if (hook.layer < 0 || hook.layer >= model.num_layers()) {
    // LogitsWithReplacement would silently never call the replacement for a
    // layer past the last one.
    return absl::InvalidArgumentError(absl::StrCat(
        "LM evaluation: hook layer ", hook.layer,
        " is out of range: the model has ", model.num_layers(), " layers"));
  }
  if (!reconstruct) {
    return absl::InvalidArgumentError("LM evaluation: no reconstruct function");
  }
  const torch::Tensor bad =
      contexts.lt(0).logical_or(contexts.ge(config.vocab_size));
  if (bad.any().item<bool>()) {
    const torch::Tensor where = bad.nonzero()[0].cpu();
    const int64_t context = where[0].item<int64_t>();
    const int64_t position = where[1].item<int64_t>();
    return absl::InvalidArgumentError(absl::StrCat(
        "LM evaluation: token id ", contexts[context][position].item<int64_t>(),
        " at context ", context, ", position ", position,
        " is outside the vocabulary [0, ", config.vocab_size, ")"));
  }
  return absl::OkStatus();
}

// Sums over predicted positions, kept on the device (float64 scalars) so
// that chunks do not synchronise with the host.
struct Sums {
  torch::Tensor ce_clean, ce_spliced, ce_zero, kl;
};

// Adds one chunk's contributions to `sums`.
void AccumulateChunk(const LanguageModel& model, const torch::Tensor& batch,
                     const HookPoint& hook, const ActivationReplacement& splice,
                     Sums& sums) {
  const int64_t seq = batch.size(1);
  // Position t predicts token t + 1.
  const torch::Tensor targets = batch.narrow(1, 1, seq - 1).unsqueeze(-1);
  // float64 log-softmax: KL of nearly equal distributions is a difference of
  // nearly equal numbers, which float32 would drown in rounding.
  const auto log_probs = [seq](const torch::Tensor& logits) {
    return torch::log_softmax(logits.narrow(1, 0, seq - 1).to(torch::kFloat64),
                              -1);
  };
  const auto nll_sum = [&targets](const torch::Tensor& log_p) {
    return -log_p.gather(-1, targets).sum();
  };
  const ActivationReplacement zeros = [](const torch::Tensor& activation) {
    return torch::zeros_like(activation);
  };

  const torch::Tensor clean = log_probs(model.Logits(batch));
  sums.ce_clean += nll_sum(clean);
  {
    const torch::Tensor spliced =
        log_probs(model.LogitsWithReplacement(batch, hook, splice));
    sums.ce_spliced += nll_sum(spliced);
    sums.kl += (clean.exp() * (clean - spliced)).sum();
  }
  sums.ce_zero +=
      nll_sum(log_probs(model.LogitsWithReplacement(batch, hook, zeros)));
}

}  // namespace

absl::StatusOr<LmEvaluation> EvaluateWithSplice(
    const LanguageModel& model, const torch::Tensor& contexts,
    const HookPoint& hook,
    const std::function<torch::Tensor(const torch::Tensor&)>& reconstruct,
    int64_t contexts_per_forward) {
  const std::string where =
      absl::StrCat("LM evaluation with the SAE spliced in at ",
                   HookSiteName(hook.site), " of layer ", hook.layer);
  // A bad reconstruction is found inside the forward pass, where the only way
  // out is an exception; the status it should become waits here.
  absl::Status splice_error;
  try {
    torch::NoGradGuard no_grad;
    if (absl::Status status = ValidateInput(model, contexts, hook, reconstruct,
                                            contexts_per_forward);
        !status.ok()) {
      return status;
    }
    const torch::Device device =
        WeightDevice(model).value_or(contexts.device());

    const ActivationReplacement splice =
        [&](const torch::Tensor& activation) -> torch::Tensor {
      const torch::Tensor flat = activation.reshape({-1, activation.size(-1)});
      const torch::Tensor out = reconstruct(flat);
      if (!out.defined() || out.sizes() != flat.sizes() ||
          out.scalar_type() != flat.scalar_type() ||
          out.device() != flat.device()) {
        splice_error = absl::InvalidArgumentError(absl::StrCat(
            where, ": the reconstruction of activations ", ShapeString(flat),
            " (", c10::toString(flat.scalar_type()), " on ",
            flat.device().str(), ") is ",
            out.defined() ? absl::StrCat(ShapeString(out), " (",
                                         c10::toString(out.scalar_type()),
                                         " on ", out.device().str(), ")")
                          : std::string("an undefined tensor"),
            "; expected the same shape, dtype and device"));
        TORCH_CHECK(false, std::string(splice_error.message()));
      }
      return out.reshape(activation.sizes());
    };

    const auto scalar = [&device] {
      return torch::zeros({}, torch::dtype(torch::kFloat64).device(device));
    };
    Sums sums{scalar(), scalar(), scalar(), scalar()};
    const int64_t n = contexts.size(0);
    for (int64_t start = 0; start < n; start += contexts_per_forward) {
      const torch::Tensor batch =
          contexts.narrow(0, start, std::min(contexts_per_forward, n - start))
              .to(device);
      AccumulateChunk(model, batch, hook, splice, sums);
    }

    LmEvaluation result;
    result.tokens = n * (contexts.size(1) - 1);
    const double count = static_cast<double>(result.tokens);
    result.ce_clean = sums.ce_clean.item<double>() / count;
    result.ce_spliced = sums.ce_spliced.item<double>() / count;
    result.ce_zero_ablated = sums.ce_zero.item<double>() / count;
    result.kl_divergence = sums.kl.item<double>() / count;
    const double gap = result.ce_zero_ablated - result.ce_clean;
    result.loss_recovered =
        std::abs(gap) < kMinLossGap
            ? 0.0
            : (result.ce_zero_ablated - result.ce_spliced) / gap;
    return result;
  } catch (const c10::Error& error) {
    if (!splice_error.ok()) return splice_error;
    const std::string what = error.what_without_backtrace();
    if (what.find("out of memory") != std::string::npos) {
      return absl::ResourceExhaustedError(absl::StrCat(where, ": ", what));
    }
    return absl::InternalError(absl::StrCat(where, ": ", what));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(where, ": out of memory"));
  } catch (const std::exception& error) {
    // From `reconstruct`, which is the caller's code.
    return absl::InternalError(absl::StrCat(where, ": ", error.what()));
  }
}

}  // namespace saetrack::engine
