// saetrack-tinylm: trains a tiny GPT-NeoX (byte-level, or with a BPE
// tokenizer.json) and saves Pythia-style checkpoints (see lm_trainer.h).
// Parses flags into TinyLmOptions and runs.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/host_memory.h"
#include "engine/lm/lm_trainer.h"

namespace {

constexpr char kUsage[] =
    R"(Usage: saetrack-tinylm --corpus FILE --out DIR [flags]

Trains a tiny GPT-NeoX language model (parallel residual, partial rotary) on
FILE, with the vocabulary of --tokenizer or a byte-level one of 256, and saves
checkpoints in Hugging Face layout:
  DIR/tokens.u16                         the corpus's ids, little-endian uint16
  DIR/tokenizer.json                     the tokenizer
  DIR/checkpoints/step-<N>/config.json   GPTNeoXForCausalLM config
  DIR/checkpoints/step-<N>/model.safetensors
  DIR/checkpoints/step-<N>/MARKER        with --marker: empty, written last
  DIR/losses.tsv                         held-out loss per checkpoint
The model trains on the first 90% of the tokens; each checkpoint's loss is
its mean cross-entropy (nats per token) on fixed contexts of the last 10%, the
part a job holds out. The learning rate warms up linearly over the first
--warmup_fraction of the steps, then decays (cosine) to 10% of --lr, as
Pythia's. Prints "step N held-out loss X lr Y" per saved checkpoint, as soon
as its files are written. Checkpoint files are written in place (config.json,
then model.safetensors), as training frameworks write them: a process
following DIR while this runs sees them appear and grow. If DIR already holds
all requested checkpoints from a run with the same flags, corpus and
tokenizer, it skips training, says so and prints the losses.

Flags (--flag VALUE or --flag=VALUE):
  --corpus FILE    text to train on (required)
  --out DIR        output directory (required); created if missing
  --tokenizer FILE Hugging Face tokenizer.json of at most 65536 ids (e.g. from
                   saetrack-tokenize --learn_bpe); default: every byte a token
  --steps LIST     comma-separated optimiser steps to save after; 0 saves the
                   initial model (default 0,1,2,4,8,16,32)
  --d_model N      hidden size (default 64)
  --layers N       transformer blocks (default 2)
  --heads N        attention heads; must divide d_model (default 4)
  --ctx N          context length in tokens; also the checkpoints'
                   max_position_embeddings (default 64)
  --batch N        contexts per optimiser step (default 16)
  --lr X           AdamW peak learning rate (default 3e-3)
  --warmup_fraction X  warm-up steps as a fraction of the last step
                   (default 0.01, Pythia's)
  --eval_contexts N    held-out contexts per checkpoint loss (default 256)
  --seed N         seed for initialisation and batch sampling (default 1)
  --threads N      LibTorch intra-op threads, 0 = LibTorch default (default 2)
  --pace_s X       write checkpoints at least X seconds apart, training time
                   included (waiting before each write), so that a tiny model
                   produces its checkpoints over time as a real run does
                   (default 0: no waiting)
  --marker NAME    after a checkpoint's files are complete and flushed to
                   disk, create the empty file NAME in its directory (for
                   FollowSpec.marker_file); default: none
  --help           show this help
)";

int UsageError(const std::string& message) {
  std::cerr << "saetrack-tinylm: " << message
            << "\nRun saetrack-tinylm --help for usage.\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Training steps reuse the same large buffers; returning them to the OS at
  // every free made each step fault them in again (engine/host_memory.h).
  saetrack::engine::RetainFreedHostMemory();
  saetrack::engine::TinyLmOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (flag.rfind("--", 0) != 0)
      return UsageError("unexpected argument " + flag);
    std::string value;
    const size_t equals = flag.find('=');
    if (equals != std::string::npos) {
      value = flag.substr(equals + 1);
      flag = flag.substr(0, equals);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return UsageError(flag + " needs a value");
    }
    const std::string name = flag.substr(2);
    bool ok = true;
    if (name == "corpus") {
      options.corpus_path = value;
    } else if (name == "out") {
      options.out_dir = value;
    } else if (name == "tokenizer") {
      options.tokenizer_path = value;
    } else if (name == "warmup_fraction") {
      ok = absl::SimpleAtod(value, &options.warmup_fraction);
    } else if (name == "eval_contexts") {
      ok = absl::SimpleAtoi(value, &options.eval_contexts);
    } else if (name == "steps") {
      options.checkpoint_steps.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int64_t step;
        ok = ok && absl::SimpleAtoi(part, &step);
        options.checkpoint_steps.push_back(step);
      }
    } else if (name == "d_model") {
      ok = absl::SimpleAtoi(value, &options.d_model);
    } else if (name == "layers") {
      ok = absl::SimpleAtoi(value, &options.layers);
    } else if (name == "heads") {
      ok = absl::SimpleAtoi(value, &options.heads);
    } else if (name == "ctx") {
      ok = absl::SimpleAtoi(value, &options.context_length);
    } else if (name == "batch") {
      ok = absl::SimpleAtoi(value, &options.batch_size);
    } else if (name == "lr") {
      ok = absl::SimpleAtod(value, &options.lr);
    } else if (name == "seed") {
      ok = absl::SimpleAtoi(value, &options.seed);
    } else if (name == "threads") {
      ok = absl::SimpleAtoi(value, &options.threads);
    } else if (name == "pace_s") {
      ok = absl::SimpleAtod(value, &options.checkpoint_interval_s);
    } else if (name == "marker") {
      options.checkpoint_marker = value;
    } else {
      return UsageError("unknown flag " + flag);
    }
    if (!ok) return UsageError("invalid value \"" + value + "\" for " + flag);
  }

  absl::StatusOr<saetrack::engine::TinyLmResult> result =
      saetrack::engine::TrainTinyLm(options, [](const std::string& line) {
        std::cout << line << std::endl;
      });
  if (!result.ok()) {
    std::cerr << "saetrack-tinylm: " << result.status().message() << "\n";
    return 1;
  }
  if (result->cached) {
    std::cout << "cached: " << options.out_dir
              << " already holds these checkpoints (same flags, corpus and "
                 "tokenizer); skipping training"
              << std::endl;
    for (const auto& [step, loss] : result->losses) {
      std::cout << "step " << step << " held-out loss " << loss << std::endl;
    }
  } else {
    std::cout << "vocabulary " << result->vocab_size << " ids; trained on "
              << result->train_tokens << " tokens, held out "
              << result->heldout_tokens << std::endl;
  }
  return 0;
}
