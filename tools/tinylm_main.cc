// saetrack-tinylm: trains a tiny byte-level GPT-NeoX and saves Pythia-style
// checkpoints (see lm_trainer.h). Parses flags into TinyLmOptions and runs.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/lm/lm_trainer.h"

namespace {

constexpr char kUsage[] =
    R"(Usage: saetrack-tinylm --corpus FILE --out DIR [flags]

Trains a tiny GPT-NeoX language model (byte-level vocabulary of 256, parallel
residual, partial rotary) on FILE and saves checkpoints in Hugging Face layout:
  DIR/tokens.u16                         the corpus as little-endian uint16
  DIR/checkpoints/step-<N>/config.json   GPTNeoXForCausalLM config
  DIR/checkpoints/step-<N>/model.safetensors
Prints "step N loss X" per saved checkpoint. If DIR already holds all
requested checkpoints from a run with the same flags and corpus, it skips
training and says so.

Flags (--flag VALUE or --flag=VALUE):
  --corpus FILE    text to train on (required); every byte is a token
  --out DIR        output directory (required); created if missing
  --steps LIST     comma-separated optimiser steps to save after; 0 saves the
                   initial model (default 0,1,2,4,8,16,32)
  --d_model N      hidden size (default 64)
  --layers N       transformer blocks (default 2)
  --heads N        attention heads; must divide d_model (default 4)
  --ctx N          context length in tokens; also the checkpoints'
                   max_position_embeddings (default 64)
  --batch N        contexts per optimiser step (default 16)
  --lr X           AdamW peak learning rate (default 3e-3)
  --seed N         seed for initialisation and batch sampling (default 1)
  --threads N      LibTorch intra-op threads, 0 = LibTorch default (default 2)
  --help           show this help
)";

int UsageError(const std::string& message) {
  std::cerr << "saetrack-tinylm: " << message
            << "\nRun saetrack-tinylm --help for usage.\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
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
              << " already holds these checkpoints (same flags and corpus); "
                 "skipping training"
              << std::endl;
  }
  return 0;
}
