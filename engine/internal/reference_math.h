// Test support for the model tests: plain double-precision arithmetic to
// check the LibTorch forward passes against, and small helpers around it.
// Test-only (target saetrack_engine_reference).
#ifndef SAETRACK_ENGINE_INTERNAL_REFERENCE_MATH_H_
#define SAETRACK_ENGINE_INTERNAL_REFERENCE_MATH_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "format/model_config.h"

namespace saetrack::engine::reference {

using Vector = std::vector<double>;

// Adds N(0, scale²) noise, deterministic for `seed`, to every tensor in
// place, so that biases and layer norms of a fresh model are not trivial.
void Perturb(const std::vector<std::pair<std::string, torch::Tensor>>& params,
             uint64_t seed, double scale);

// Token ids as a [1, n] int64 batch.
torch::Tensor Tokens(std::vector<int64_t> ids);

// Double-precision copies of the tensors whose names start with `prefix`,
// keyed by the rest of the name.
std::map<std::string, Vector> WeightsWithPrefix(
    const std::vector<std::pair<std::string, torch::Tensor>>& params,
    const std::string& prefix);

// LayerNorm over one vector (biased variance, as torch).
Vector LayerNorm(const Vector& x, const Vector& weight, const Vector& bias,
                 double eps);

// The rows of batch element 0 of an activation [1, seq, d], in double.
std::vector<Vector> Rows(const torch::Tensor& activations);

// EXPECTs every element within 1e-4, naming `what`, position and dimension.
void ExpectNear(const std::vector<Vector>& expected,
                const std::vector<Vector>& actual, const char* what);

// A tiny model config of `architecture` ("gpt_neox" or "gpt2"): hidden 16,
// 2 heads, intermediate 32, 16 positions.
format::ModelConfig TinyModelConfig(const std::string& architecture,
                                    int vocab_size, int layers);

// `k` random unit directions in `d` dimensions, [k, d], for seed `seed`.
torch::Tensor RandomUnitDirections(int64_t k, int64_t d, uint64_t seed);

// Activations made of a few active features out of `directions` [k, d]:
// each row is a sum of ~3 directions with magnitudes in [1, 2].
torch::Tensor SparseCombinations(const torch::Tensor& directions, int64_t rows,
                                 uint64_t seed);

}  // namespace saetrack::engine::reference

#endif  // SAETRACK_ENGINE_INTERNAL_REFERENCE_MATH_H_
