#include "engine/lm/lm_trainer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "engine/lm/gpt_neox.h"
#include "engine/lm/internal/transformer_ops.h"
#include "format/crc32c.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "format/token_split.h"
#include "format/tokenizer.h"

namespace saetrack::engine {
namespace {

using format::JsonValue;

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

// Writes `contents` to `path` in place (created or truncated, then written)
// and flushes it to disk, as a training framework saves a checkpoint file:
// until this returns, a reader can see the file empty or partly written.
absl::Status WriteFileInPlace(const std::string& path,
                              std::string_view contents) {
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  }
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n =
        ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error_number = errno;
      ::close(fd);
      return absl::ErrnoToStatus(error_number,
                                 absl::StrCat("cannot write ", path));
    }
    written += static_cast<size_t>(n);
  }
  // Flushed before the marker is created, so that the marker never stands
  // for data that a crash could still lose.
  if (::fsync(fd) != 0) {
    const int error_number = errno;
    ::close(fd);
    return absl::ErrnoToStatus(error_number,
                               absl::StrCat("cannot flush ", path));
  }
  if (::close(fd) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot close ", path));
  }
  return absl::OkStatus();
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
  if (!(options.warmup_fraction >= 0 && options.warmup_fraction <= 1)) {
    return invalid("warmup_fraction", "must be in [0, 1]");
  }
  if (options.eval_contexts <= 0) {
    return invalid("eval_contexts", "must be positive");
  }
  if (!std::isfinite(options.checkpoint_interval_s) ||
      options.checkpoint_interval_s < 0) {
    return invalid("pace_s", "must be finite and >= 0");
  }
  const std::string& marker = options.checkpoint_marker;
  if (marker.find('/') != std::string::npos || marker == "." ||
      marker == ".." || marker == "config.json" ||
      marker == "model.safetensors") {
    return invalid("marker",
                   absl::StrCat("'", marker,
                                "' must be a plain file name other than "
                                "config.json and model.safetensors"));
  }
  if (options.threads < 0) return invalid("threads", "must be >= 0");
  return absl::OkStatus();
}

format::ModelConfig TinyConfig(const TinyLmOptions& options,
                               uint32_t vocab_size) {
  format::ModelConfig config;
  config.architecture = "gpt_neox";
  config.vocab_size = static_cast<int>(vocab_size);
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
std::string CacheKey(const TinyLmOptions& options, std::string_view corpus,
                     std::string_view tokenizer_json) {
  return absl::StrFormat(
      "corpus_bytes=%d corpus_crc32c=%08x tokenizer_crc32c=%08x steps=%s "
      "d_model=%d layers=%d heads=%d ctx=%d batch=%d lr=%.17g "
      "warmup_fraction=%.17g eval_contexts=%d seed=%d threads=%d\n",
      corpus.size(), format::Crc32c(corpus), format::Crc32c(tokenizer_json),
      absl::StrJoin(options.checkpoint_steps, ","), options.d_model,
      options.layers, options.heads, options.context_length, options.batch_size,
      options.lr, options.warmup_fraction, options.eval_contexts, options.seed,
      options.threads);
}

// losses.tsv, written with the checkpoints.
std::string LossesTsv(const std::vector<std::pair<int64_t, double>>& losses) {
  std::string out;
  for (const auto& [step, loss] : losses) {
    absl::StrAppendFormat(&out, "%d\t%.9g\n", step, loss);
  }
  return out;
}

std::vector<std::pair<int64_t, double>> ParseLossesTsv(
    const std::string& text) {
  std::vector<std::pair<int64_t, double>> losses;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const std::vector<absl::string_view> fields = absl::StrSplit(line, '\t');
    int64_t step = 0;
    double loss = 0;
    if (fields.size() == 2 && absl::SimpleAtoi(fields[0], &step) &&
        absl::SimpleAtod(fields[1], &loss)) {
      losses.emplace_back(step, loss);
    }
  }
  return losses;
}

bool IsCached(const TinyLmOptions& options, const std::string& key) {
  absl::StatusOr<std::string> marker =
      format::ReadFileToString(options.out_dir + "/.complete");
  if (!marker.ok() || *marker != key) return false;
  if (!FileExists(options.out_dir + "/tokens.u16") ||
      !FileExists(options.out_dir + "/losses.tsv")) {
    return false;
  }
  for (int64_t step : options.checkpoint_steps) {
    const std::string dir = CheckpointDir(options, step);
    if (!FileExists(dir + "/config.json") ||
        !FileExists(dir + "/model.safetensors")) {
      return false;
    }
    if (!options.checkpoint_marker.empty() &&
        !FileExists(dir + "/" + options.checkpoint_marker)) {
      return false;
    }
  }
  return true;
}

// Peak lr after a linear warm-up over the first warmup_fraction of the
// steps, then a cosine decay to kFinalLrFraction of the peak at the last
// step.
double LearningRate(const TinyLmOptions& options, int64_t step,
                    int64_t total_steps) {
  const int64_t warmup = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(options.warmup_fraction *
                                           static_cast<double>(total_steps))));
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
  std::string tokenizer_json = ByteLevelTokenizerJson();
  if (!options.tokenizer_path.empty()) {
    SAETRACK_ASSIGN_OR_RETURN(tokenizer_json,
                              format::ReadFileToString(options.tokenizer_path));
  }
  const std::string tokenizer_origin = options.tokenizer_path.empty()
                                           ? std::string("byte-level")
                                           : options.tokenizer_path;
  SAETRACK_ASSIGN_OR_RETURN(
      const format::Tokenizer tokenizer,
      format::Tokenizer::FromJson(tokenizer_json, tokenizer_origin));
  if (tokenizer.vocab_size() > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tokenizer ", tokenizer_origin, " has ", tokenizer.vocab_size(),
        " ids; tokens.u16 holds at most 65536"));
  }
  const format::ModelConfig config =
      TinyConfig(options, tokenizer.vocab_size());
  const std::string config_json = GptNeoxConfigJson(config);
  // The same checks every job's config goes through (e.g. an odd number of
  // rotary dimensions for this head size).
  SAETRACK_RETURN_IF_ERROR(
      format::ParseModelConfig(config_json, "generated config.json").status());

  SAETRACK_ASSIGN_OR_RETURN(const format::MappedFile corpus,
                            format::MappedFile::Open(options.corpus_path));
  const std::string key = CacheKey(options, corpus.data(), tokenizer_json);
  TinyLmResult result;
  result.vocab_size = tokenizer.vocab_size();
  const std::string tokenizer_path = options.out_dir + "/tokenizer.json";
  const std::string losses_path = options.out_dir + "/losses.tsv";
  if (IsCached(options, key)) {
    result.cached = true;
    SAETRACK_ASSIGN_OR_RETURN(const std::string losses,
                              format::ReadFileToString(losses_path));
    result.losses = ParseLossesTsv(losses);
    return result;
  }

  std::vector<uint32_t> ids;
  if (options.tokenizer_path.empty()) {
    ids.assign(corpus.data().begin(), corpus.data().end());
    for (uint32_t& id : ids) id &= 0xFF;  // char may be signed
  } else {
    SAETRACK_ASSIGN_OR_RETURN(ids, tokenizer.Encode(corpus.data()));
  }
  const int64_t num_tokens = static_cast<int64_t>(ids.size());
  const int window = options.context_length + 1;
  if (num_tokens < 2 * window) {
    return absl::InvalidArgumentError(
        absl::StrCat("--corpus ", options.corpus_path, " has ", num_tokens,
                     " tokens; need at least 2 * (--ctx + 1) = ", 2 * window));
  }
  SAETRACK_ASSIGN_OR_RETURN(const format::TokenSplit split,
                            format::SplitTokens(num_tokens, window));
  result.train_tokens = split.train_end;
  result.heldout_tokens = split.num_tokens - split.eval_begin;

  // Invalidate any previous run before rewriting its files.
  ::unlink((options.out_dir + "/.complete").c_str());
  SAETRACK_RETURN_IF_ERROR(MakeDirs(options.out_dir + "/checkpoints"));
  std::string token_bytes;
  token_bytes.reserve(2 * ids.size());
  for (const uint32_t id : ids) {
    token_bytes.push_back(static_cast<char>(id & 0xFF));
    token_bytes.push_back(static_cast<char>(id >> 8));
  }
  SAETRACK_RETURN_IF_ERROR(format::WriteFileAtomically(
      options.out_dir + "/tokens.u16", token_bytes));
  SAETRACK_RETURN_IF_ERROR(
      format::WriteFileAtomically(tokenizer_path, tokenizer_json));

  if (options.threads > 0) torch::set_num_threads(options.threads);
  torch::Tensor tokens = torch::empty({num_tokens}, torch::kInt64);
  {
    int64_t* data = tokens.data_ptr<int64_t>();
    for (int64_t i = 0; i < num_tokens; ++i) data[i] = ids[i];
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

  // Training contexts from the first 90% only.
  std::mt19937_64 rng(options.seed);
  const uint64_t positions =
      static_cast<uint64_t>(split.train_end - window + 1);
  const auto contexts = [&](const std::vector<int64_t>& starts) {
    torch::Tensor offsets = torch::arange(window, torch::kInt64);
    torch::Tensor index =
        torch::tensor(starts, torch::kInt64).unsqueeze(1) + offsets;
    torch::Tensor batch = tokens.index_select(0, index.flatten())
                              .view({static_cast<int64_t>(starts.size()), -1});
    return std::make_pair(batch.narrow(1, 0, options.context_length),
                          batch.narrow(1, 1, options.context_length));
  };
  auto sample_batch = [&]() {
    std::vector<int64_t> starts(options.batch_size);
    for (int64_t& start : starts)
      start = static_cast<int64_t>(rng() % positions);
    return contexts(starts);
  };
  const int64_t vocab = config.vocab_size;
  auto loss_of = [&](const torch::Tensor& inputs,
                     const torch::Tensor& targets) {
    return torch::nn::functional::cross_entropy(
        model.Logits(inputs).reshape({-1, vocab}), targets.reshape({-1}));
  };

  const std::set<int64_t> save_steps(options.checkpoint_steps.begin(),
                                     options.checkpoint_steps.end());
  const int64_t total_steps = *save_steps.rbegin();
  // When the previous checkpoint was written, for checkpoint_interval_s.
  std::optional<std::chrono::steady_clock::time_point> last_saved;
  auto save = [&](int64_t step, double loss) -> absl::Status {
    if (last_saved.has_value() && options.checkpoint_interval_s > 0) {
      std::this_thread::sleep_until(
          *last_saved +
          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
              std::chrono::duration<double>(options.checkpoint_interval_s)));
    }
    // The order Hugging Face's save_pretrained writes them in.
    const std::string dir = CheckpointDir(options, step);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", dir));
    }
    // A previous run's marker must not vouch for the files rewritten below.
    if (!options.checkpoint_marker.empty()) {
      ::unlink((dir + "/" + options.checkpoint_marker).c_str());
    }
    SAETRACK_RETURN_IF_ERROR(
        WriteFileInPlace(dir + "/config.json", config_json));
    SAETRACK_ASSIGN_OR_RETURN(
        const std::string weights,
        internal::SerializeSafetensors(model.NamedParameters()));
    SAETRACK_RETURN_IF_ERROR(
        WriteFileInPlace(dir + "/model.safetensors", weights));
    if (!options.checkpoint_marker.empty()) {
      SAETRACK_RETURN_IF_ERROR(
          WriteFileInPlace(dir + "/" + options.checkpoint_marker, ""));
    }
    last_saved = std::chrono::steady_clock::now();
    result.losses.emplace_back(step, loss);
    if (log) {
      log(absl::StrFormat(
          "step %d held-out loss %.4f lr %.3g", step, loss,
          step == 0 ? 0.0 : LearningRate(options, step, total_steps)));
    }
    return absl::OkStatus();
  };
  // Checkpoint losses are measured on fixed held-out contexts (the job's
  // held-out part), so that they compare across checkpoints.
  const std::vector<int64_t> eval_starts =
      format::HeldOutContexts(split, window, options.eval_contexts);
  auto eval_loss = [&]() {
    torch::NoGradGuard no_grad;
    double sum = 0;
    constexpr size_t kChunk = 64;
    for (size_t begin = 0; begin < eval_starts.size(); begin += kChunk) {
      const std::vector<int64_t> chunk(
          eval_starts.begin() + begin,
          eval_starts.begin() + std::min(eval_starts.size(), begin + kChunk));
      auto [inputs, targets] = contexts(chunk);
      sum += loss_of(inputs, targets).item<double>() *
             static_cast<double>(chunk.size());
    }
    return sum / static_cast<double>(eval_starts.size());
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
      format::WriteFileAtomically(losses_path, LossesTsv(result.losses)));
  SAETRACK_RETURN_IF_ERROR(
      format::WriteFileAtomically(options.out_dir + "/.complete", key));
  return result;
}

std::string ByteLevelTokenizerJson() {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.emplace_back(1, static_cast<char>(b));
  return format::ByteLevelBpeJson(bytes, {}, /*nfc=*/false,
                                  /*end_of_text=*/false) +
         "\n";
}

}  // namespace saetrack::engine
