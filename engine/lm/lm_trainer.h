// Trains a tiny GPT-NeoX language model on a text corpus, with a byte-level
// vocabulary or a Hugging Face tokenizer.json (e.g. one learnt on the corpus
// by saetrack-tokenize --learn_bpe), and saves Pythia-style checkpoints in
// Hugging Face layout, so the whole SAE-Track pipeline can be demonstrated
// without downloads (DESIGN.md §8). The model uses the same forward code as
// real checkpoints. Pythia's schedule shape: linear warm-up over the first
// `warmup_fraction` of the steps, then cosine decay to 10% of the peak.
//
// The corpus's tokens are split as a job splits them (format/token_split.h):
// the model trains on the first 90% only, and each checkpoint's loss is
// measured on fixed contexts of the last 10%, the job's held-out set.
//
// Checkpoint files are written in place (config.json, then
// model.safetensors), as training frameworks write them, not atomically: a
// process watching the directory while training runs can see them missing,
// empty or partly written. `checkpoint_marker` tells it when they are done.
//
// Output layout under `out_dir`:
//   tokens.u16                      the corpus's token ids, little-endian
//                                   uint16 (a byte each without a tokenizer)
//   tokenizer.json                  the tokenizer: a copy of tokenizer_path,
//                                   or the byte-level vocabulary
//                                   (ByteLevelTokenizerJson)
//   checkpoints/step-<N>/config.json
//   checkpoints/step-<N>/model.safetensors
//   checkpoints/step-<N>/<checkpoint_marker>  empty; only when that is set
//   losses.tsv                      "step<TAB>held-out loss" per checkpoint
//   .complete                       written last; records the arguments
#ifndef SAETRACK_ENGINE_LM_LM_TRAINER_H_
#define SAETRACK_ENGINE_LM_LM_TRAINER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "format/model_config.h"

namespace saetrack::engine {

struct TinyLmOptions {
  // --- behaviour ---
  std::string corpus_path;  // text, encoded with the tokenizer
  std::string out_dir;
  // A Hugging Face tokenizer.json of at most 65536 ids; empty: byte-level
  // (every byte a token, vocabulary 256).
  std::string tokenizer_path;
  // Optimiser steps after which to save a checkpoint; 0 is the initial model.
  std::vector<int64_t> checkpoint_steps = {0, 1, 2, 4, 8, 16, 32};
  int d_model = 64;
  int layers = 2;
  int heads = 4;
  int context_length = 64;
  int batch_size = 16;  // contexts per step
  double lr = 3e-3;     // AdamW peak learning rate
  // Linear warm-up over this fraction of the last checkpoint's steps (at
  // least one step); Pythia's is 1%.
  double warmup_fraction = 0.01;
  // Held-out contexts (of context_length + 1 tokens) each checkpoint's loss
  // is measured on.
  int eval_contexts = 256;
  uint64_t seed = 1;
  // Consecutive checkpoints are written at least this many seconds apart,
  // training time included: before writing a checkpoint the trainer waits
  // until this long after the previous one was written, so that a tiny
  // model produces its checkpoints over time as a real training run does.
  // 0: no waiting. Not part of the cache key (the checkpoints are the same).
  double checkpoint_interval_s = 0;
  // When not empty: the name of an empty file created in each checkpoint
  // directory after its config.json and model.safetensors are complete and
  // flushed to disk. A plain file name, not config.json or
  // model.safetensors.
  std::string checkpoint_marker;
  // --- performance ---
  int threads = 2;  // LibTorch intra-op threads; 0 keeps LibTorch's default
};

struct TinyLmResult {
  // True when out_dir already held these checkpoints for the same arguments
  // (and corpus contents) and nothing was trained.
  bool cached = false;
  // (step, loss) per saved checkpoint: the checkpoint's mean cross-entropy
  // (nats per token) on the held-out contexts. Filled when trained, and
  // read back from out_dir/losses.tsv when cached.
  std::vector<std::pair<int64_t, double>> losses;
  uint32_t vocab_size = 0;
  int64_t train_tokens = 0;    // tokens in the training part
  int64_t heldout_tokens = 0;  // tokens in the held-out part
};

// Trains and saves (see the layout above); `log` receives one line per saved
// checkpoint, "step N held-out loss X lr Y", once its files (and marker) are
// written. Deterministic for a seed and
// thread count. Errors: kInvalidArgument naming the option for bad options
// (including a corpus shorter than 2 * (context_length + 1) tokens, or a
// tokenizer of more than 65536 ids); kNotFound for a missing corpus or
// tokenizer; the tokenizer's load and encode errors; I/O errors naming the
// path.
absl::StatusOr<TinyLmResult> TrainTinyLm(
    const TinyLmOptions& options,
    const std::function<void(const std::string&)>& log);

// A complete Hugging Face config.json for a GPTNeoXForCausalLM with
// `config`, as written by TrainTinyLm (bos/eos ids 0, torch_dtype float32).
std::string GptNeoxConfigJson(const format::ModelConfig& config);

// A Hugging Face tokenizer.json for the byte-level vocabulary: a BPE model
// whose 256 tokens are GPT-2's byte-level symbols with id = byte value and no
// merges, with the ByteLevel pre-tokenizer (no prefix space) and decoder, so
// that encoding text gives its bytes and decoding ids gives the text back
// (with format::Tokenizer and with the `tokenizers` library).
std::string ByteLevelTokenizerJson();

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_LM_LM_TRAINER_H_
