// Test helpers: temporary directories, checkpoint and token files, specs.
#ifndef SAETRACK_SERVER_INTERNAL_TEST_FIXTURES_H_
#define SAETRACK_SERVER_INTERNAL_TEST_FIXTURES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "saetrack/v1/job.pb.h"

namespace saetrack::server::testing {

// A fresh directory under the test temp dir, removed with its contents on
// destruction. Thread-compatible.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes `dir`/config.json (a small GPT-NeoX) and an empty
// `dir`/model.safetensors. Validation needs nothing more.
void WriteCheckpoint(const std::string& dir, int hidden_size = 64,
                     int num_layers = 2,
                     const std::string& model_type = "gpt_neox");

// Writes `num_tokens` little-endian tokens of `bytes_per_token` bytes.
void WriteTokens(const std::string& path, int64_t num_tokens,
                 int bytes_per_token = 2);

// Checkpoints at `steps` under `root`/ckpt-<step>, tokens at
// `root`/tokens.bin (4096 uint16 tokens), one hook per layer in `layers`.
// context_length 32 and small budgets, so defaults do not need huge files.
v1::JobSpec MakeSpec(const std::string& root, const std::vector<int64_t>& steps,
                     const std::vector<int>& layers = {0});

// The body of GET http://127.0.0.1:`port``path` (HTTP/1.0), or "" on error.
std::string HttpGet(int port, const std::string& path);

}  // namespace saetrack::server::testing

#endif  // SAETRACK_SERVER_INTERNAL_TEST_FIXTURES_H_
