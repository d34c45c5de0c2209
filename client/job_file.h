// Reading a job file: JSON whose fields are those of saetrack.v1.JobSpec
// (proto field names, e.g. "tokens_path", or their lowerCamelCase JSON names).
#ifndef SAETRACK_CLIENT_JOB_FILE_H_
#define SAETRACK_CLIENT_JOB_FILE_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "saetrack/v1/job.pb.h"

namespace saetrack::client {

// Parses `text` as a job spec. `origin` names the file in messages; relative
// paths in the spec (checkpoint paths, the followed directory, data paths)
// are resolved against `base_dir` and made absolute, because the coordinator
// may run elsewhere.
// Errors (kInvalidArgument): a JSON syntax error names the byte offset; an
// unknown field or a value of the wrong type names the field's path, e.g.
// "job.json: model.checkpoints[1].step: expected an integer".
absl::StatusOr<v1::JobSpec> ParseJobSpec(std::string_view text,
                                         std::string_view origin,
                                         const std::string& base_dir);

// Reads `path` and parses it with ParseJobSpec, relative to its directory.
// kNotFound when the file cannot be read.
absl::StatusOr<v1::JobSpec> LoadJobFile(const std::string& path);

}  // namespace saetrack::client

#endif  // SAETRACK_CLIENT_JOB_FILE_H_
