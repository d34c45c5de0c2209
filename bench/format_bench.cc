// Torch-free format paths (DESIGN §9): parsing the 50k-vocabulary Pythia
// tokenizer.json, loading it as a Tokenizer, encoding Tiny Shakespeare, and
// CRC-32C over a 16 MiB artifact. Run:
//   build/bin/format_bench
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "format/crc32c.h"
#include "format/json.h"
#include "format/tokenizer.h"

namespace saetrack::format {
namespace {

std::string ReadAll(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "format_bench: cannot read " << path << "\n";
    std::exit(1);
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

const std::string& PythiaTokenizerJson() {
  static const std::string* text =
      new std::string(ReadAll(SAETRACK_PYTHIA_TOKENIZER));
  return *text;
}

void BM_ParsePythiaTokenizerJson(benchmark::State& state) {
  const std::string& text = PythiaTokenizerJson();
  for (auto _ : state) {
    auto value = ParseJson(text);
    if (!value.ok()) state.SkipWithError(value.status().ToString().c_str());
    benchmark::DoNotOptimize(value);
  }
  state.SetBytesProcessed(state.iterations() * text.size());
}
BENCHMARK(BM_ParsePythiaTokenizerJson)->Unit(benchmark::kMillisecond);

void BM_LoadPythiaTokenizer(benchmark::State& state) {
  const std::string& text = PythiaTokenizerJson();
  for (auto _ : state) {
    auto tokenizer = Tokenizer::FromJson(text);
    if (!tokenizer.ok())
      state.SkipWithError(tokenizer.status().ToString().c_str());
    benchmark::DoNotOptimize(tokenizer);
  }
  state.SetBytesProcessed(state.iterations() * text.size());
}
BENCHMARK(BM_LoadPythiaTokenizer)->Unit(benchmark::kMillisecond);

void BM_EncodeTinyShakespeare(benchmark::State& state) {
  auto tokenizer = Tokenizer::FromJson(PythiaTokenizerJson());
  if (!tokenizer.ok()) {
    state.SkipWithError(tokenizer.status().ToString().c_str());
    return;
  }
  const std::string text = ReadAll(SAETRACK_TINY_SHAKESPEARE);
  for (auto _ : state) {
    auto ids = tokenizer->Encode(text);
    if (!ids.ok()) state.SkipWithError(ids.status().ToString().c_str());
    benchmark::DoNotOptimize(ids);
  }
  state.SetBytesProcessed(state.iterations() * text.size());
}
BENCHMARK(BM_EncodeTinyShakespeare)->Unit(benchmark::kMillisecond);

const std::string& Artifact16MiB() {
  static const std::string* data = [] {
    auto* s = new std::string(16 << 20, '\0');
    for (size_t i = 0; i < s->size(); ++i) (*s)[i] = static_cast<char>(i * 131);
    return s;
  }();
  return *data;
}

// What callers get: dispatches to the hardware path where the CPU has it.
void BM_Crc32c(benchmark::State& state) {
  const std::string& data = Artifact16MiB();
  for (auto _ : state) benchmark::DoNotOptimize(Crc32c(data));
  state.SetBytesProcessed(state.iterations() * data.size());
}
BENCHMARK(BM_Crc32c)->Unit(benchmark::kMillisecond);

void BM_Crc32cPortable(benchmark::State& state) {
  const std::string& data = Artifact16MiB();
  for (auto _ : state) benchmark::DoNotOptimize(Crc32cPortable(data));
  state.SetBytesProcessed(state.iterations() * data.size());
}
BENCHMARK(BM_Crc32cPortable)->Unit(benchmark::kMillisecond);

void BM_Crc32cHardware(benchmark::State& state) {
  if (!Crc32cHardwareAvailable()) {
    state.SkipWithError("no SSE4.2 on this CPU");
    return;
  }
  const std::string& data = Artifact16MiB();
  for (auto _ : state) benchmark::DoNotOptimize(Crc32cHardware(data));
  state.SetBytesProcessed(state.iterations() * data.size());
}
BENCHMARK(BM_Crc32cHardware)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace saetrack::format

BENCHMARK_MAIN();
