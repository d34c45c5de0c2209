#include "engine/features/feature_analysis.h"

#include <algorithm>
#include <limits>

namespace saetrack::engine {
namespace {

// Largest intermediate held at once (elements): 256 MiB of floats.
constexpr int64_t kMaxElements = int64_t{1} << 26;

std::vector<float> ToVector(const torch::Tensor& t) {
  const torch::Tensor cpu = t.to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(cpu.data_ptr<float>(),
                            cpu.data_ptr<float>() + cpu.numel());
}

}  // namespace

TopActivations TopActivatingPositions(const Sae& sae,
                                      const torch::Tensor& activations, int k,
                                      int64_t chunk_rows) {
  torch::NoGradGuard no_grad;
  const int64_t n = activations.size(0);
  const int64_t d_sae = sae.d_sae();
  const auto device = activations.device();
  chunk_rows = std::max<int64_t>(1, std::min(chunk_rows, kMaxElements / d_sae));
  torch::Tensor best_values =
      torch::full({d_sae, k}, -std::numeric_limits<float>::infinity(),
                  torch::dtype(torch::kFloat32).device(device));
  torch::Tensor best_positions =
      torch::full({d_sae, k}, -1, torch::dtype(torch::kLong).device(device));
  for (int64_t start = 0; start < n; start += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, n - start);
    const torch::Tensor codes =
        sae.Encode(activations.narrow(0, start, rows)).t();  // [d_sae, rows]
    // The chunk's own top k first, then a merge with the best so far.
    auto [chunk_values, chunk_index] =
        codes.topk(std::min<int64_t>(k, rows), /*dim=*/1);
    const torch::Tensor values = torch::cat({best_values, chunk_values}, 1);
    const torch::Tensor all_positions =
        torch::cat({best_positions, chunk_index + start}, 1);
    const int64_t keep = std::min<int64_t>(k, values.size(1));
    // Stable: among equal values the earlier (lower) position stays first.
    auto [sorted, order] = values.sort(/*stable=*/true, /*dim=*/1,
                                       /*descending=*/true);
    best_values = sorted.narrow(1, 0, keep).contiguous();
    best_positions = all_positions.gather(1, order.narrow(1, 0, keep));
  }
  // Only positive codes count as "fired".
  const torch::Tensor fired = best_values > 0;
  TopActivations top;
  top.positions = best_positions.masked_fill(fired.logical_not(), -1);
  top.values = best_values.masked_fill(fired.logical_not(), 0);
  return top;
}

torch::Tensor GroupMeanPairwiseCosine(const torch::Tensor& vectors,
                                      const torch::Tensor& valid) {
  // For unit vectors u_1..u_m: sum_{i != j} u_i.u_j = |sum u|^2 - m, so the
  // mean over pairs needs one sum per group instead of a Gram matrix.
  const torch::Tensor norms = vectors.norm(2, -1, /*keepdim=*/true);
  const torch::Tensor unit =
      torch::where(norms > 0, vectors / norms.clamp_min(1e-30),
                   torch::zeros_like(vectors)) *
      valid.unsqueeze(-1).to(vectors.scalar_type());
  const torch::Tensor nonzero =
      (valid & (norms.squeeze(-1) > 0)).to(torch::kFloat64).sum(1);
  const torch::Tensor m = valid.to(torch::kFloat64).sum(1);
  const torch::Tensor summed = unit.sum(1).to(torch::kFloat64);
  const torch::Tensor pair_sum = summed.pow(2).sum(1) - nonzero;
  const torch::Tensor pairs = m * (m - 1) / 2;
  return torch::where(m >= 2, pair_sum / 2 / pairs.clamp_min(1),
                      torch::full_like(pairs, std::nan("")));
}

torch::Tensor SameTokenPositions(const torch::Tensor& positions,
                                 const torch::Tensor& tokens, uint64_t seed) {
  torch::NoGradGuard no_grad;
  const torch::Tensor flat_tokens = tokens.to(torch::kCPU, torch::kLong);
  const torch::Tensor p = positions.to(torch::kCPU, torch::kLong);
  const int64_t vocab =
      flat_tokens.numel() == 0 ? 1 : flat_tokens.max().item<int64_t>() + 1;
  // Positions grouped by token: order[offsets[t] .. offsets[t] + counts[t]).
  const torch::Tensor order = flat_tokens.argsort();
  const torch::Tensor counts = torch::bincount(flat_tokens, {}, vocab);
  const torch::Tensor offsets = counts.cumsum(0) - counts;
  const torch::Tensor valid_in = p >= 0;
  const torch::Tensor token = flat_tokens.index({p.clamp_min(0)});
  const torch::Tensor c = counts.index({token});
  const torch::Tensor start = offsets.index({token});
  at::Generator generator = at::detail::createCPUGenerator(seed ^ 0x70C);
  // One draw among the c - 1 other positions: r in [0, c - 1), skipping the
  // position's own rank.
  const torch::Tensor others = (c - 1).clamp_min(1);
  const torch::Tensor r =
      (torch::rand(p.sizes(), generator, torch::kDouble) * others)
          .floor()
          .to(torch::kLong)
          .clamp_max(others - 1);
  const torch::Tensor inverse = torch::empty_like(order);
  inverse.index_put_({order}, torch::arange(order.numel(), torch::kLong));
  const torch::Tensor own_rank = inverse.index({p.clamp_min(0)}) - start;
  const torch::Tensor rank = torch::where(r >= own_rank, r + 1, r);
  const torch::Tensor drawn =
      order.index({(start + rank).clamp_max(order.numel() - 1)});
  return torch::where(valid_in & (c > 1), drawn, torch::full_like(p, -1));
}

ProgressMeasure MeasureProgress(const Sae& sae,
                                const torch::Tensor& activations,
                                const torch::Tensor& positions,
                                const torch::Tensor& random_positions,
                                const torch::Tensor& same_token_positions) {
  torch::NoGradGuard no_grad;
  const auto device = activations.device();
  const int64_t d_sae = positions.size(0);
  const int64_t k = positions.size(1);
  ProgressMeasure result;
  {
    const torch::Tensor random = random_positions.to(device);
    const torch::Tensor x = activations.index_select(0, random).unsqueeze(0);
    const torch::Tensor all = torch::ones(
        {1, random.size(0)}, torch::dtype(torch::kBool).device(device));
    result.activation_baseline = GroupMeanPairwiseCosine(x, all).item<double>();
    result.feature_baseline =
        GroupMeanPairwiseCosine(sae.Encode(x.squeeze(0)).unsqueeze(0), all)
            .item<double>();
  }
  const int64_t width = std::max(activations.size(1), sae.d_sae());
  const int64_t chunk = std::max<int64_t>(1, kMaxElements / (k * width));
  const bool token_controlled = same_token_positions.defined();
  std::vector<torch::Tensor> activation_parts, feature_parts, controlled_parts;
  for (int64_t start = 0; start < d_sae; start += chunk) {
    const int64_t rows = std::min(chunk, d_sae - start);
    const torch::Tensor p = positions.narrow(0, start, rows).to(device);
    const torch::Tensor valid = p >= 0;
    const torch::Tensor flat = p.clamp_min(0).reshape({-1});
    const torch::Tensor x = activations.index_select(0, flat);
    const torch::Tensor top_cosine = GroupMeanPairwiseCosine(
        x.reshape({rows, k, activations.size(1)}), valid);
    activation_parts.push_back(top_cosine);
    feature_parts.push_back(GroupMeanPairwiseCosine(
        sae.Encode(x).reshape({rows, k, sae.d_sae()}), valid));
    if (token_controlled) {
      const torch::Tensor q =
          same_token_positions.narrow(0, start, rows).to(device);
      const torch::Tensor matched =
          activations.index_select(0, q.clamp_min(0).reshape({-1}));
      controlled_parts.push_back(
          top_cosine -
          GroupMeanPairwiseCosine(
              matched.reshape({rows, k, activations.size(1)}), q >= 0));
    }
  }
  result.activation_space =
      ToVector(torch::cat(activation_parts) - result.activation_baseline);
  result.feature_space =
      ToVector(torch::cat(feature_parts) - result.feature_baseline);
  if (token_controlled) {
    result.token_controlled = ToVector(torch::cat(controlled_parts));
  }
  return result;
}

std::vector<int64_t> ContextWindow(const torch::Tensor& contexts,
                                   int64_t position, int before, int after,
                                   int* offset) {
  const int64_t length = contexts.size(1);
  const int64_t context = position / length;
  const int64_t at = position % length;
  const int64_t first = std::max<int64_t>(0, at - before);
  const int64_t last = std::min<int64_t>(length - 1, at + after);
  const torch::Tensor row =
      contexts[context].to(torch::kCPU, torch::kLong).contiguous();
  const int64_t* data = row.data_ptr<int64_t>();
  if (offset != nullptr) *offset = static_cast<int>(at - first);
  return std::vector<int64_t>(data + first, data + last + 1);
}

}  // namespace saetrack::engine
