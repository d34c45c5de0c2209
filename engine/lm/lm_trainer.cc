#include "engine/lm/lm_trainer.h"

#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <random>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/lm/gpt_neox.h"
#include "format/crc32c.h"
#include "base/status_macros.h"
#include "format/json.h"
#include "format/mapped_file.h"

namespace saetrack::engine {
namespace {

using format::JsonValue;

constexpr int kByteVocab = 256;
// Pythia's AdamW settings.
constexpr double kAdamBeta1 = 0.9;
constexpr double kAdamBeta2 = 0.95;
constexpr double kWeightDecay = 0.01;
constexpr double kGradClipNorm = 1.0;
// The learning rate decays (cosine) to this fraction of its peak.
constexpr double kFinalLrFraction = 0.1;

absl::Status MakeDirs(const std::string& path) {
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (prefix.empty()) continue;
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", prefix));
    }
  }
  return absl::OkStatus();
}

bool FileExists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

std::string CheckpointDir(const TinyLmOptions& options, int64_t step) {
  return absl::StrCat(options.out_dir, "/checkpoints/step-", step);
}

absl::Status ValidateOptions(const TinyLmOptions& options) {
  auto invalid = [](const char* flag, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", what));
  };
  if (options.corpus_path.empty()) return invalid("corpus", "is required");
  if (options.out_dir.empty()) return invalid("out", "is required");
  if (options.checkpoint_steps.empty()) {
    return invalid("steps", "must list at least one step");
  }
  for (int64_t step : options.checkpoint_steps) {
    if (step < 0)
      return invalid("steps", absl::StrCat("has negative step ", step));
  }
  if (options.d_model <= 0) return invalid("d_model", "must be positive");
  if (options.layers <= 0) return invalid("layers", "must be positive");
  if (options.heads <= 0) return invalid("heads", "must be positive");
  if (options.d_model % options.heads != 0) {
    return invalid("d_model", absl::StrCat("(", options.d_model,
                                           ") must be divisible by --heads (",
                                           options.heads, ")"));
  }
  if (options.context_length <= 0) return invalid("ctx", "must be positive");
  if (options.batch_size <= 0) return invalid("batch", "must be positive");
  if (!std::isfinite(options.lr) || options.lr <= 0) {
    return invalid("lr", "must be finite and positive");
  }
  if (options.threads < 0) return invalid("threads", "must be >= 0");
  return absl::OkStatus();
}

format::ModelConfig TinyConfig(const TinyLmOptions& options) {
  format::ModelConfig config;
  config.architecture = "gpt_neox";
  config.vocab_size = kByteVocab;
  config.hidden_size = options.d_model;
  config.num_hidden_layers = options.layers;
  config.num_attention_heads = options.heads;
  config.intermediate_size = 4 * options.d_model;
  config.max_position_embeddings = options.context_length;
  config.rotary_pct = 0.25;
  config.rotary_emb_base = 10000;
  config.layer_norm_eps = 1e-5;
  config.use_parallel_residual = true;
  config.hidden_act = "gelu";
  config.tie_word_embeddings = false;
  return config;
}

// Everything that determines the checkpoints, recorded in .complete.
std::string CacheKey(const TinyLmOptions& options, std::string_view corpus) {
  return absl::StrFormat(
      "corpus_bytes=%d corpus_crc32c=%08x steps=%s d_model=%d layers=%d "
      "heads=%d ctx=%d batch=%d lr=%.17g seed=%d threads=%d\n",
      corpus.size(), format::Crc32c(corpus),
      absl::StrJoin(options.checkpoint_steps, ","), options.d_model,
      options.layers, options.heads, options.context_length, options.batch_size,
      options.lr, options.seed, options.threads);
}

bool IsCached(const TinyLmOptions& options, const std::string& key) {
  absl::StatusOr<std::string> marker =
      format::ReadFileToString(options.out_dir + "/.complete");
  if (!marker.ok() || *marker != key) return false;
  if (!FileExists(options.out_dir + "/tokens.u16")) return false;
  for (int64_t step : options.checkpoint_steps) {
    const std::string dir = CheckpointDir(options, step);
    if (!FileExists(dir + "/config.json") ||
        !FileExists(dir + "/model.safetensors")) {
      return false;
    }
  }
  return true;
}

// Peak lr after a linear warm-up over the first 10% of steps, then a cosine
// decay to kFinalLrFraction of the peak at the last step.
double LearningRate(const TinyLmOptions& options, int64_t step,
                    int64_t total_steps) {
  const int64_t warmup = std::max<int64_t>(1, total_steps / 10);
  if (step <= warmup) {
    return options.lr * static_cast<double>(step) / static_cast<double>(warmup);
  }
  const double progress =
      static_cast<double>(step - warmup) /
      static_cast<double>(std::max<int64_t>(1, total_steps - warmup));
  const double cosine = 0.5 * (1 + std::cos(M_PI * progress));
  return options.lr * (kFinalLrFraction + (1 - kFinalLrFraction) * cosine);
}

}  // namespace

std::string GptNeoxConfigJson(const format::ModelConfig& config) {
  const JsonValue::Object fields = {
      {"architectures",
       JsonValue::MakeArray({JsonValue::String("GPTNeoXForCausalLM")})},
      {"attention_bias", JsonValue::Bool(true)},
      {"attention_dropout", JsonValue::Integer(0)},
      {"bos_token_id", JsonValue::Integer(0)},
      {"eos_token_id", JsonValue::Integer(0)},
      {"hidden_act", JsonValue::String(config.hidden_act)},
      {"hidden_dropout", JsonValue::Integer(0)},
      {"hidden_size", JsonValue::Integer(config.hidden_size)},
      {"initializer_range", JsonValue::Number(0.02)},
      {"intermediate_size", JsonValue::Integer(config.intermediate_size)},
      {"layer_norm_eps", JsonValue::Number(config.layer_norm_eps)},
      {"max_position_embeddings",
       JsonValue::Integer(config.max_position_embeddings)},
      {"model_type", JsonValue::String("gpt_neox")},
      {"num_attention_heads", JsonValue::Integer(config.num_attention_heads)},
      {"num_hidden_layers", JsonValue::Integer(config.num_hidden_layers)},
      {"rotary_emb_base", JsonValue::Integer(config.rotary_emb_base)},
      {"rotary_pct", JsonValue::Number(config.rotary_pct)},
      {"tie_word_embeddings", JsonValue::Bool(config.tie_word_embeddings)},
      {"torch_dtype", JsonValue::String("float32")},
      {"use_cache", JsonValue::Bool(true)},
      {"use_parallel_residual", JsonValue::Bool(config.use_parallel_residual)},
      {"vocab_size", JsonValue::Integer(config.vocab_size)},
  };
  // One field per line, as Hugging Face writes it.
  std::vector<std::string> lines;
  for (const JsonValue::Member& field : fields) {
    lines.push_back(absl::StrCat("  ", format::JsonQuote(field.first), ": ",
                                 format::SerializeJson(field.second)));
  }
  return absl::StrCat("{\n", absl::StrJoin(lines, ",\n"), "\n}\n");
}

absl::StatusOr<TinyLmResult> TrainTinyLm(
    const TinyLmOptions& options,
    const std::function<void(const std::string&)>& log) {
  SAETRACK_RETURN_IF_ERROR(ValidateOptions(options));
  const format::ModelConfig config = TinyConfig(options);
  const std::string config_json = GptNeoxConfigJson(config);
  // The same checks every job's config goes through (e.g. an odd number of
  // rotary dimensions for this head size).
  SAETRACK_RETURN_IF_ERROR(
      format::ParseModelConfig(config_json, "generated config.json").status());

  SAETRACK_ASSIGN_OR_RETURN(const format::MappedFile corpus,
                            format::MappedFile::Open(options.corpus_path));
  const int64_t num_tokens = static_cast<int64_t>(corpus.size());
  if (num_tokens < options.context_length + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--corpus ", options.corpus_path, " has ", num_tokens,
        " bytes; need at least --ctx + 1 = ", options.context_length + 1));
  }
  const std::string key = CacheKey(options, corpus.data());
  TinyLmResult result;
  const std::string tokenizer_path = options.out_dir + "/tokenizer.json";
  if (IsCached(options, key)) {
    result.cached = true;
    // Caches written before the tokenizer was part of the output get it now.
    if (!FileExists(tokenizer_path)) {
      SAETRACK_RETURN_IF_ERROR(format::WriteFileAtomically(
          tokenizer_path, ByteLevelTokenizerJson()));
    }
    return result;
  }

  // Invalidate any previous run before rewriting its files.
  ::unlink((options.out_dir + "/.complete").c_str());
  SAETRACK_RETURN_IF_ERROR(MakeDirs(options.out_dir + "/checkpoints"));
  std::string token_bytes;
  token_bytes.reserve(2 * corpus.size());
  for (const char byte : corpus.data()) {
    token_bytes.push_back(byte);  // low byte of the little-endian uint16
    token_bytes.push_back('\0');
  }
  SAETRACK_RETURN_IF_ERROR(format::WriteFileAtomically(
      options.out_dir + "/tokens.u16", token_bytes));
  SAETRACK_RETURN_IF_ERROR(
      format::WriteFileAtomically(tokenizer_path, ByteLevelTokenizerJson()));

  if (options.threads > 0) torch::set_num_threads(options.threads);
  torch::Tensor tokens = torch::empty({num_tokens}, torch::kInt64);
  {
    int64_t* data = tokens.data_ptr<int64_t>();
    for (int64_t i = 0; i < num_tokens; ++i) {
      data[i] = static_cast<unsigned char>(corpus.data()[i]);
    }
  }

  const torch::Device device(torch::kCPU);
  GptNeoxModel model = GptNeoxModel::RandomInit(config, options.seed, device);
  std::vector<torch::Tensor> parameters;
  for (auto& [name, tensor] : model.NamedParameters()) {
    tensor.requires_grad_(true);
    parameters.push_back(tensor);
  }
  torch::optim::AdamW optimizer(parameters,
                                torch::optim::AdamWOptions(options.lr)
                                    .betas({kAdamBeta1, kAdamBeta2})
                                    .weight_decay(kWeightDecay));

  std::mt19937_64 rng(options.seed);
  const uint64_t positions =
      static_cast<uint64_t>(num_tokens - options.context_length);
  auto sample_batch = [&]() {
    std::vector<int64_t> starts(options.batch_size);
    for (int64_t& start : starts)
      start = static_cast<int64_t>(rng() % positions);
    torch::Tensor offsets =
        torch::arange(options.context_length + 1, torch::kInt64);
    torch::Tensor index =
        torch::tensor(starts, torch::kInt64).unsqueeze(1) + offsets;
    torch::Tensor window =
        tokens.index_select(0, index.flatten()).view({options.batch_size, -1});
    return std::make_pair(window.narrow(1, 0, options.context_length),
                          window.narrow(1, 1, options.context_length));
  };
  auto loss_of = [&](const torch::Tensor& inputs,
                     const torch::Tensor& targets) {
    return torch::nn::functional::cross_entropy(
        model.Logits(inputs).reshape({-1, kByteVocab}), targets.reshape({-1}));
  };

  const std::set<int64_t> save_steps(options.checkpoint_steps.begin(),
                                     options.checkpoint_steps.end());
  const int64_t total_steps = *save_steps.rbegin();
  auto save = [&](int64_t step, double loss) -> absl::Status {
    SAETRACK_RETURN_IF_ERROR(
        model.SaveHuggingFace(CheckpointDir(options, step), config_json));
    result.losses.emplace_back(step, loss);
    if (log) log(absl::StrFormat("step %d loss %.4f", step, loss));
    return absl::OkStatus();
  };
  // Checkpoint losses are measured on one fixed batch, so that they compare
  // across checkpoints (training-batch losses are noisy).
  const std::pair<torch::Tensor, torch::Tensor> eval_batch = sample_batch();
  auto eval_loss = [&]() {
    torch::NoGradGuard no_grad;
    return loss_of(eval_batch.first, eval_batch.second).item<double>();
  };
  try {
    if (save_steps.count(0) > 0) SAETRACK_RETURN_IF_ERROR(save(0, eval_loss()));
    for (int64_t step = 1; step <= total_steps; ++step) {
      auto [inputs, targets] = sample_batch();
      optimizer.zero_grad();
      loss_of(inputs, targets).backward();
      torch::nn::utils::clip_grad_norm_(parameters, kGradClipNorm);
      for (auto& group : optimizer.param_groups()) {
        static_cast<torch::optim::AdamWOptions&>(group.options())
            .lr(LearningRate(options, step, total_steps));
      }
      optimizer.step();
      if (save_steps.count(step) > 0) {
        SAETRACK_RETURN_IF_ERROR(save(step, eval_loss()));
      }
    }
  } catch (const c10::Error& error) {
    return absl::InternalError(
        absl::StrCat("LibTorch error: ", error.what_without_backtrace()));
  }
  SAETRACK_RETURN_IF_ERROR(
      format::WriteFileAtomically(options.out_dir + "/.complete", key));
  return result;
}

std::string ByteLevelTokenizerJson() {
  using format::JsonValue;
  // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the
  // others for U+0100 onwards in byte order.
  const auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
           (b >= 0xAE && b <= 0xFF);
  };
  const auto utf8 = [](int code_point) {
    std::string out;
    if (code_point < 0x80) {
      out.push_back(static_cast<char>(code_point));
    } else {
      out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
      out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
    }
    return out;
  };
  JsonValue::Object vocab;
  int next_extra = 0;
  for (int b = 0; b < 256; ++b) {
    const int code_point = printable(b) ? b : 256 + next_extra++;
    vocab.emplace_back(utf8(code_point), JsonValue::Integer(b));
  }
  const auto byte_level = [] {
    return JsonValue::MakeObject({
        {"type", JsonValue::String("ByteLevel")},
        {"add_prefix_space", JsonValue::Bool(false)},
        {"trim_offsets", JsonValue::Bool(true)},
        {"use_regex", JsonValue::Bool(true)},
    });
  };
  const JsonValue tokenizer = JsonValue::MakeObject({
      {"version", JsonValue::String("1.0")},
      {"truncation", JsonValue()},
      {"padding", JsonValue()},
      {"added_tokens", JsonValue::MakeArray({})},
      {"normalizer", JsonValue()},
      {"pre_tokenizer", byte_level()},
      {"post_processor", byte_level()},
      {"decoder", byte_level()},
      {"model", JsonValue::MakeObject({
                    {"type", JsonValue::String("BPE")},
                    {"dropout", JsonValue()},
                    {"unk_token", JsonValue()},
                    {"continuing_subword_prefix", JsonValue()},
                    {"end_of_word_suffix", JsonValue()},
                    {"fuse_unk", JsonValue::Bool(false)},
                    {"byte_fallback", JsonValue::Bool(false)},
                    {"vocab", JsonValue::MakeObject(std::move(vocab))},
                    {"merges", JsonValue::MakeArray({})},
                })},
  });
  return format::SerializeJson(tokenizer) + "\n";
}

}  // namespace saetrack::engine
