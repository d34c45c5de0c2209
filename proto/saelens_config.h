// The SAELens cfg.json of an SAE a job trained, built from the job's spec:
// one definition for the coordinator's QueryService.ExportSae and the CLI's
// export against coordinators without it.
#ifndef SAETRACK_PROTO_SAELENS_CONFIG_H_
#define SAETRACK_PROTO_SAELENS_CONFIG_H_

#include <cstdint>
#include <string>

#include "saetrack/v1/job.pb.h"
#include "format/saelens.h"

namespace saetrack {

// The config of the SAE of job `job_id` at hooked layer `layer`, checkpoint
// `step`, whose weights have shape d_in x d_sae: the spec's architecture
// ("relu_l1" when unset) and k (topk only), the checkpoint's path as model
// name (the job's name when `step` is not one of its checkpoints), the
// TransformerLens hook name of the layer's site ("resid_pre" when unset).
format::SaelensConfig SaelensConfigForJob(const v1::JobSpec& spec,
                                          const std::string& job_id, int layer,
                                          int64_t step, int64_t d_in,
                                          int64_t d_sae);

}  // namespace saetrack

#endif  // SAETRACK_PROTO_SAELENS_CONFIG_H_
