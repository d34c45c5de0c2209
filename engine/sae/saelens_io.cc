#include "engine/sae/saelens_io.h"

#include <utility>

#include "base/status_macros.h"

namespace saetrack::engine {

absl::Status ExportSaelens(const Sae& sae, format::SaelensConfig metadata,
                           const std::string& dir) {
  metadata.architecture = sae.spec().architecture;
  metadata.d_in = sae.d_in();
  metadata.d_sae = sae.d_sae();
  metadata.k = sae.spec().architecture == "topk" ? sae.spec().k : 0;
  metadata.dtype = "float32";
  return format::WriteSaelensDir(dir, metadata,
                                 SaeToSafetensors(sae.weights()));
}

absl::StatusOr<ImportedSae> ImportSaelens(const std::string& dir,
                                          const torch::Device& device,
                                          MatmulPrecision precision) {
  SAETRACK_ASSIGN_OR_RETURN(format::SaelensSae read,
                            format::ReadSaelensDir(dir));
  SAETRACK_ASSIGN_OR_RETURN(
      SaeWeights weights,
      SaeFromSafetensors(std::move(read.safetensors), device));
  SaeSpec spec;
  spec.architecture = read.config.architecture;
  spec.l1_coefficient = 0;
  if (read.config.k > 0) spec.k = read.config.k;
  ImportedSae imported;
  SAETRACK_ASSIGN_OR_RETURN(imported.sae,
                            MakeSae(spec, std::move(weights), precision));
  imported.config = std::move(read.config);
  return imported;
}

}  // namespace saetrack::engine
