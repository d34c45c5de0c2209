// Trains a tiny GPT-NeoX language model on a text corpus with a byte-level
// vocabulary and saves Pythia-style checkpoints in Hugging Face layout, so
// the whole SAE-Track pipeline can be demonstrated without downloads
// (DESIGN.md §8). The model uses the same forward code as real checkpoints.
//
// Output layout under `out_dir`:
//   tokens.u16                      the corpus, one little-endian uint16 per
//                                   byte (vocab 256)
//   tokenizer.json                  the byte-level vocabulary as a Hugging
//                                   Face tokenizer (ByteLevelTokenizerJson)
//   checkpoints/step-<N>/config.json
//   checkpoints/step-<N>/model.safetensors
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
  std::string corpus_path;  // any file; its bytes are the tokens
  std::string out_dir;
  // Optimiser steps after which to save a checkpoint; 0 is the initial model.
  std::vector<int64_t> checkpoint_steps = {0, 1, 2, 4, 8, 16, 32};
  int d_model = 64;
  int layers = 2;
  int heads = 4;
  int context_length = 64;
  int batch_size = 16;  // contexts per step
  double lr = 3e-3;     // AdamW peak learning rate
  uint64_t seed = 1;
  // --- performance ---
  int threads = 2;  // LibTorch intra-op threads; 0 keeps LibTorch's default
};

struct TinyLmResult {
  // True when out_dir already held these checkpoints for the same arguments
  // (and corpus contents) and nothing was trained.
  bool cached = false;
  // (step, loss) per saved checkpoint: the checkpoint's mean cross-entropy
  // (nats per byte) on one fixed batch of `batch_size` contexts.
  std::vector<std::pair<int64_t, double>> losses;
};

// Trains and saves (see the layout above); `log` receives one line per saved
// checkpoint, "step N loss X". Deterministic for a seed and thread count.
// Errors: kInvalidArgument naming the option for bad options (including a
// corpus shorter than context_length + 1 bytes); kNotFound for a missing
// corpus; I/O errors naming the path.
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
