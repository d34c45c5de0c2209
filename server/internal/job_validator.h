// Up-front validation of tracking jobs.
#ifndef SAETRACK_SERVER_INTERNAL_JOB_VALIDATOR_H_
#define SAETRACK_SERVER_INTERNAL_JOB_VALIDATOR_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "format/model_config.h"
#include "saetrack/v1/job.pb.h"

namespace saetrack::server {

// Checks a JobSpec against the file system and fills in defaults. Reads
// files (config.json of every checkpoint, the size of the token file) but
// holds no state beyond its options: thread-safe.
class JobValidator {
 public:
  // `data_roots`: when non-empty, every path of a job (and every weight and
  // config file in a checkpoint directory) must lie under one of them
  // (compared after resolving symlinks), refused with one message whether
  // or not the file exists. Paths with a ".." component are always refused.
  // `max_artifact_bytes`: the largest upload the coordinator accepts (its
  // --max_artifact_bytes); a job whose SAE weights could never be uploaded
  // is refused at submission.
  explicit JobValidator(const std::vector<std::string>& data_roots,
                        int64_t max_artifact_bytes = kMaxSaeBytes);

  // The largest SAE weights one stored value can hold (RocksDB's limit on a
  // value is 4 GiB - 1).
  static constexpr int64_t kMaxSaeBytes = (int64_t{4} << 30) - 1;

  // Bytes of an SAE's safetensors upload (W_enc, b_enc, W_dec, b_dec in
  // fp32, plus the header).
  static int64_t SaeBytes(int64_t d_in, int64_t d_sae);

  // Returns `spec` with every unset field given its DESIGN §3 default and
  // sae.d_sae computed (expansion_factor * hidden_size unless set), so that
  // workers always see concrete values. proto3 cannot tell an explicit 0 from
  // unset, so 0 means "default" for every numeric field.
  //
  // Errors name the field, e.g.
  //   kNotFound: "spec.model.checkpoints[1].path: '/x' does not exist"
  //   kInvalidArgument: "spec.hooks[0].layer: 7 out of range [0, 2) for the
  //     model at spec.model.checkpoints[0].path"
  //   kFailedPrecondition: a path exists but is not readable.
  absl::StatusOr<v1::JobSpec> Validate(const v1::JobSpec& spec) const;

  // Checkpoint (`step`, `path`) for following job `spec` (validated): its
  // directory, weight files and config like a submitted checkpoint's, the
  // same architecture and shape as the job's checkpoints (the first one
  // fills in the model-dependent settings: d_sae, the memory estimate,
  // hook ranges). Returns `spec` with it placed by step. Errors name
  // "checkpoint.path" / "checkpoint.step" or the spec field.
  absl::StatusOr<v1::JobSpec> ValidateNewCheckpoint(
      const v1::JobSpec& spec, int64_t step, const std::string& path) const;

 private:
  // spec.model.follow: defaults and ranges.
  absl::Status CheckFollow(v1::JobSpec* out) const;
  // The settings that follow from the model (`config`, read from
  // `model_dir`, named `where` in errors): hook ranges, context length,
  // d_sae and its size limit, the memory estimate, topk ranges and the
  // held-out activation limits.
  absl::Status FillFromModel(const format::ModelConfig& config,
                             const std::string& where,
                             const std::string& model_dir,
                             v1::JobSpec* out) const;
  enum class PathKind { kDirectory, kFile };
  absl::Status CheckPath(const std::string& field, const std::string& path,
                         PathKind kind) const;

  std::vector<std::filesystem::path> data_roots_;  // Canonical.
  int64_t max_artifact_bytes_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_JOB_VALIDATOR_H_
