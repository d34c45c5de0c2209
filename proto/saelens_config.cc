#include "proto/saelens_config.h"

namespace saetrack {

format::SaelensConfig SaelensConfigForJob(const v1::JobSpec& spec,
                                          const std::string& job_id, int layer,
                                          int64_t step, int64_t d_in,
                                          int64_t d_sae) {
  format::SaelensConfig cfg;
  cfg.architecture =
      spec.sae().architecture().empty() ? "relu_l1" : spec.sae().architecture();
  cfg.d_in = d_in;
  cfg.d_sae = d_sae;
  if (cfg.architecture == "topk") cfg.k = spec.sae().k();
  cfg.model_name = spec.name();
  for (const v1::Checkpoint& checkpoint : spec.model().checkpoints()) {
    if (checkpoint.step() == step) cfg.model_name = checkpoint.path();
  }
  std::string site = "resid_pre";
  for (const v1::HookPoint& hook : spec.hooks()) {
    if (hook.layer() == layer && !hook.site().empty()) site = hook.site();
  }
  cfg.hook_name = format::HookName(layer, site);
  cfg.hook_layer = layer;
  cfg.checkpoint_step = step;
  cfg.job_id = job_id;
  return cfg;
}

}  // namespace saetrack
