#include "bench/demo_workload.h"

#include <stdlib.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/lm/gpt_neox.h"
#include "engine/lm/lm_trainer.h"

namespace saetrack::bench {

format::ModelConfig DemoLmShape() {
  format::ModelConfig config;
  config.architecture = "gpt_neox";
  config.vocab_size = kDemoVocab;
  config.hidden_size = 128;
  config.num_hidden_layers = 4;
  config.num_attention_heads = 4;
  config.intermediate_size = 512;
  config.max_position_embeddings = 256;
  config.rotary_pct = 0.25;
  config.use_parallel_residual = true;
  return config;
}

absl::StatusOr<std::string> ScratchDir(const std::string& dir,
                                       const std::string& name) {
  if (!dir.empty()) return dir;
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", name, "_XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(
        absl::StrCat("mkdtemp ", pattern, ": ", std::strerror(errno)));
  }
  return pattern;
}

absl::Status WriteDemoWorkload(const std::string& dir,
                               const std::vector<uint64_t>& seeds,
                               int64_t num_tokens) {
  const format::ModelConfig config = DemoLmShape();
  for (uint64_t seed : seeds) {
    absl::Status saved =
        engine::GptNeoxModel::RandomInit(config, seed, torch::kCPU)
            .SaveHuggingFace(absl::StrCat(dir, "/step-", seed),
                             engine::GptNeoxConfigJson(config));
    if (!saved.ok()) return saved;
  }
  std::vector<uint16_t> ids(num_tokens);
  uint64_t state = 0x9E3779B97F4A7C15ULL;
  for (uint16_t& id : ids) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    id = static_cast<uint16_t>((state >> 33) % kDemoVocab);
  }
  const std::string path = dir + "/tokens.u16";
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(ids.data()),
            static_cast<std::streamsize>(ids.size() * sizeof(uint16_t)));
  if (!out.good()) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

int BenchThreads() {
  const char* env = std::getenv("SAETRACK_BENCH_THREADS");
  int threads = 2;
  if (env != nullptr && (!absl::SimpleAtoi(env, &threads) || threads < 1)) {
    std::fprintf(stderr, "SAETRACK_BENCH_THREADS is not a positive number\n");
    std::exit(2);
  }
  return threads;
}

}  // namespace saetrack::bench
