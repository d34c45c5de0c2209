// MakeSae: the table of SAE architectures. A new architecture is a new class
// and one row here.
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/sae/relu_l1_sae.h"
#include "engine/sae/sae.h"
#include "engine/sae/topk_sae.h"

namespace saetrack::engine {
namespace {

absl::Status InvalidSpec(const char* field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("SaeSpec.", field, " ", what));
}

absl::Status CheckReluL1(const SaeSpec& spec, int64_t /*d_sae*/) {
  if (!std::isfinite(spec.l1_coefficient) || spec.l1_coefficient < 0) {
    return InvalidSpec(
        "l1_coefficient",
        absl::StrCat(spec.l1_coefficient, " must be finite and >= 0"));
  }
  return absl::OkStatus();
}

absl::Status CheckTopK(const SaeSpec& spec, int64_t d_sae) {
  if (spec.k <= 0 || spec.k > d_sae) {
    return InvalidSpec(
        "k", absl::StrCat(spec.k, " must be in [1, d_sae = ", d_sae, "]"));
  }
  if (spec.aux_k < 0 || spec.aux_k > d_sae) {
    return InvalidSpec(
        "aux_k", absl::StrCat(spec.aux_k, " must be in [0, d_sae = ", d_sae,
                              "] (0: 2 * k)"));
  }
  if (!std::isfinite(spec.aux_coefficient) || spec.aux_coefficient < 0) {
    return InvalidSpec(
        "aux_coefficient",
        absl::StrCat(spec.aux_coefficient, " must be finite and >= 0"));
  }
  return absl::OkStatus();
}

struct Architecture {
  const char* name;
  std::function<absl::Status(const SaeSpec&, int64_t d_sae)> check;
  std::function<std::unique_ptr<Sae>(const SaeSpec&, SaeWeights,
                                     MatmulPrecision)>
      make;
};

template <typename T>
std::unique_ptr<Sae> Make(const SaeSpec& spec, SaeWeights weights,
                          MatmulPrecision precision) {
  return std::make_unique<T>(spec, std::move(weights), precision);
}

const std::vector<Architecture>& Architectures() {
  static const auto* architectures = new std::vector<Architecture>{
      {"relu_l1", CheckReluL1, Make<ReluL1Sae>},
      {"topk", CheckTopK, Make<TopKSae>},
  };
  return *architectures;
}

}  // namespace

std::vector<std::string> SaeArchitectures() {
  std::vector<std::string> names;
  for (const Architecture& a : Architectures()) names.push_back(a.name);
  return names;
}

absl::StatusOr<std::unique_ptr<Sae>> MakeSae(const SaeSpec& spec,
                                             SaeWeights weights,
                                             MatmulPrecision precision) {
  for (const Architecture& a : Architectures()) {
    if (spec.architecture != a.name) continue;
    absl::Status valid = a.check(spec, weights.d_sae());
    if (!valid.ok()) return valid;
    return a.make(spec, std::move(weights), precision);
  }
  return InvalidSpec(
      "architecture",
      absl::StrCat("\"", spec.architecture, "\" is not supported (supported: ",
                   absl::StrJoin(SaeArchitectures(), ", "), ")"));
}

}  // namespace saetrack::engine
