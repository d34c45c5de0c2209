// An Sae (sae.h) to and from a SAELens directory (format/saelens.h):
// cfg.json + sae_weights.safetensors with W_enc [d_in, d_sae], b_enc,
// W_dec [d_sae, d_in], b_dec, all F32. The weights round-trip bit for bit,
// so an imported SAE encodes exactly as the exported one did.
#ifndef SAETRACK_ENGINE_SAE_SAELENS_IO_H_
#define SAETRACK_ENGINE_SAE_SAELENS_IO_H_

#include <torch/torch.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/sae/sae.h"
#include "format/saelens.h"

namespace saetrack::engine {

// Writes `sae` to `dir`. `metadata` supplies the model, hook, step and job
// fields; architecture, d_in, d_sae, k and dtype come from `sae`.
absl::Status ExportSaelens(const Sae& sae, format::SaelensConfig metadata,
                           const std::string& dir);

struct ImportedSae {
  std::unique_ptr<Sae> sae;
  format::SaelensConfig config;
};

// Reads `dir` onto `device`. relu_l1 SAEs get l1_coefficient 0 (SAELens does
// not store it; it only matters for training). Errors: those of
// format::ReadSaelensDir, and kInvalidArgument for an architecture saetrack
// cannot build.
absl::StatusOr<ImportedSae> ImportSaelens(
    const std::string& dir, const torch::Device& device,
    MatmulPrecision precision = MatmulPrecision::kFp32);

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_SAE_SAELENS_IO_H_
