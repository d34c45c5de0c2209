#include "server/internal/test_fixtures.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"

namespace saetrack::server::testing {

TempDir::TempDir() {
  std::string tmpl = ::testing::TempDir() + "/saetrack_server_test.XXXXXX";
  const char* made = mkdtemp(tmpl.data());
  EXPECT_NE(made, nullptr);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void WriteCheckpoint(const std::string& dir, int hidden_size, int num_layers,
                     const std::string& model_type) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << absl::StrCat(
      R"({"architectures": ["GPTNeoXForCausalLM"], "model_type": ")",
      model_type, R"(", "hidden_size": )", hidden_size,
      R"(, "num_hidden_layers": )", num_layers,
      R"(, "num_attention_heads": 4, "intermediate_size": )", 4 * hidden_size,
      R"(, "vocab_size": 512, "max_position_embeddings": 256,)",
      R"( "rotary_pct": 0.25, "rotary_emb_base": 10000,)",
      R"( "layer_norm_eps": 1e-05, "use_parallel_residual": true,)",
      R"( "hidden_act": "gelu", "tie_word_embeddings": false})");
  // A valid file without tensors: the coordinator reads only headers.
  std::ofstream(dir + "/model.safetensors", std::ios::binary)
      << format::SafetensorsWriter().Serialize();
}

void WriteTokens(const std::string& path, int64_t num_tokens,
                 int bytes_per_token) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  std::string zeros(static_cast<size_t>(num_tokens * bytes_per_token), '\0');
  out << zeros;
}

v1::JobSpec MakeSpec(const std::string& root, const std::vector<int64_t>& steps,
                     const std::vector<int>& layers) {
  v1::JobSpec spec;
  spec.set_name("test");
  for (int64_t step : steps) {
    const std::string dir = absl::StrCat(root, "/ckpt-", step);
    if (!std::filesystem::exists(dir + "/config.json")) WriteCheckpoint(dir);
    v1::Checkpoint* c = spec.mutable_model()->add_checkpoints();
    c->set_step(step);
    c->set_path(dir);
  }
  const std::string tokens = root + "/tokens.bin";
  if (!std::filesystem::exists(tokens)) WriteTokens(tokens, 4096);
  spec.mutable_data()->set_tokens_path(tokens);
  spec.mutable_data()->set_context_length(32);
  for (int layer : layers) spec.add_hooks()->set_layer(layer);
  spec.mutable_sae()->set_expansion_factor(2);
  spec.mutable_schedule()->set_tokens_first(8192);
  // Tests that play the worker over raw RPCs train only; the analysis pass
  // has tests of its own (worker_test, e2e).
  spec.mutable_analysis()->set_analysis_tokens(0);
  return spec;
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  std::string response;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) ==
      0) {
    const std::string request =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
    if (write(fd, request.data(), request.size()) ==
        static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

}  // namespace saetrack::server::testing
