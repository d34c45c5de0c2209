#include "server/internal/job_validator.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <system_error>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "format/token_split.h"
#include "server/internal/checkpoint_scanner.h"

namespace saetrack::server {
namespace {

// DESIGN §3 defaults (the paper's reference code).
constexpr char kDefaultSaeArchitecture[] = "relu_l1";
constexpr int kDefaultExpansionFactor = 64;
constexpr double kDefaultL1Coefficient = 8e-5;
constexpr double kDefaultLrFirst = 4e-4;
constexpr double kDefaultLrLater = 4e-5;
constexpr int kDefaultWarmupFirst = 5000;
constexpr int kDefaultWarmupLater = 100;
constexpr int kDefaultBatchSize = 4096;
constexpr int kDefaultContextLength = 128;
constexpr char kDefaultTokenDtype[] = "uint16";
constexpr char kDefaultSite[] = "resid_pre";
constexpr int64_t kDefaultTokensFirst = 300'000'000;
// Later SAEs get 1/20 of the first one's budget.
constexpr int64_t kLaterTokensDivisor = 20;
constexpr int64_t kDefaultEvalTokens = 65536;
// TopK with AuxK (Gao et al. 2024): k active latents, AuxK over 2k dead ones
// weighted 1/32.
constexpr int kDefaultK = 32;
constexpr int kDefaultAuxKPerK = 2;
constexpr double kDefaultAuxCoefficient = 1.0 / 32;
constexpr bool kDefaultGhostGrads = true;
constexpr double kDefaultAdaptiveTolerance = 0.01;
// Enough tokens for a stable loss-recovered estimate at little cost next to
// training.
constexpr int64_t kDefaultLmEvalTokens = 8192;
// Trust checks at this many checkpoints of the chain.
constexpr int32_t kDefaultReferenceCheckpoints = 3;
constexpr int32_t kMaxReferenceCheckpoints = 16;
constexpr double kDefaultSpeedupTolerance = 0.02;
constexpr double kMaxSpeedupTolerance = 0.5;
// Adam's step size and the sparsity coefficients beyond which training only
// diverges (the loss overflows float32).
constexpr double kMaxLr = 1.0;
constexpr double kMaxL1Coefficient = 1e4;
// Rows per SAE training batch (a batch of 2^20 rows at d_sae 2^16 is
// already 256 GiB of codes).
constexpr int kMaxBatchSize = 1 << 20;
// Keeps d_sae * d_in within what one machine can hold and int32 ranges.
constexpr int64_t kMaxDSae = int64_t{1} << 24;
constexpr int64_t kDefaultAnalysisTokens = 65536;
// Training budgets beyond this (2^50, ~10^15 tokens, 3,000 times Pythia's
// whole corpus) only overflow step and token counters downstream.
constexpr int64_t kMaxTrainTokens = int64_t{1} << 50;
// Held-out evaluation and analysis keep their activations (fp32, d_in per
// token) in memory: at most this many bytes of them.
constexpr int64_t kMaxHeldOutActivationBytes = int64_t{64} << 30;
constexpr int kDefaultAnalysisTopK = 25;
constexpr int kMaxAnalysisTopK = 1000;
constexpr int kDefaultLogitEffectsK = 10;
constexpr int kMaxLogitEffectsK = 100;
constexpr double kDefaultFormationTau = 0.5;
constexpr double kDefaultTokenLevelThreshold = 0.8;
constexpr int kDefaultRandomPositions = 256;
// Follow mode.
constexpr char kDefaultFollowPattern[] = "step-{step}";
constexpr double kDefaultPollIntervalS = 10;
constexpr double kMinPollIntervalS = 0.1;
constexpr double kMaxPollIntervalS = 3600;
constexpr double kDefaultStallAlertS = 3600;
constexpr double kDefaultLagAlertS = 1800;
constexpr double kMaxAlertS = 1e8;
constexpr int kMaxAnalyseEvery = 1'000'000;

// Bytes a worker needs for one task: the SAE in fp32 four times over
// (weights, gradients, two Adam moments) plus the previous SAE it keeps,
// one batch's activations, pre-activations and codes with their gradients,
// and the model's weights.
int64_t EstimateTaskMemory(int64_t d_in, int64_t d_sae, int64_t batch_size,
                           int64_t model_bytes) {
  const int64_t sae_params = 2 * d_in * d_sae + d_sae + d_in;
  const int64_t batch_floats = batch_size * (2 * d_in + 4 * d_sae);
  return 5 * sae_params * 4 + batch_floats * 4 + model_bytes;
}

// Size of a checkpoint's weights: its safetensors file(s).
int64_t ModelBytes(const std::string& dir) {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".safetensors") {
      const uintmax_t size = entry.file_size(ec);
      if (!ec) total += static_cast<int64_t>(size);
    }
  }
  return total;
}

// Every *.safetensors (and the index) in a checkpoint directory is a
// regular file.
const std::vector<std::string>& SupportedModelArchitectures() {
  // The engine's LoadLanguageModel implements exactly these.
  static const auto* v = new std::vector<std::string>{"gpt_neox", "gpt2"};
  return *v;
}
const std::vector<std::string>& SupportedSaeArchitectures() {
  static const auto* v = new std::vector<std::string>{"relu_l1", "topk"};
  return *v;
}
const std::vector<std::string>& SupportedSites() {
  static const auto* v = new std::vector<std::string>{"resid_pre", "resid_post",
                                                      "attn_out", "mlp_out"};
  return *v;
}
// Token dtype -> bytes per token.
const std::map<std::string, int>& TokenDtypes() {
  static const auto* m =
      new std::map<std::string, int>{{"uint16", 2}, {"uint32", 4}};
  return *m;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  for (const std::string& e : v) {
    if (e == s) return true;
  }
  return false;
}

absl::Status NotSupported(const std::string& field, const std::string& value,
                          const std::vector<std::string>& supported) {
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": '", value,
      "' is not supported (supported: ", absl::StrJoin(supported, ", "), ")"));
}

// Checks a positive-or-unset integer; 0 becomes `default_value`.
template <typename T>
absl::Status PositiveOrDefault(const std::string& field, T value,
                               T default_value, T* out) {
  if (value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " must be > 0"));
  }
  *out = value == 0 ? default_value : value;
  return absl::OkStatus();
}

// kInvalidArgument naming `field` when `value` exceeds `max` (`unit` says
// what is counted).
absl::Status AtMost(const std::string& field, int64_t value, int64_t max,
                    const char* unit) {
  if (value <= max) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", value, " ", unit,
                                                 " exceeds the maximum ", max));
}

// Checks a finite, non-negative-or-unset double; 0 becomes `default_value`.
// `max`: the largest value the engine can train with (beyond it every
// step diverges or overflows float32).
absl::Status FiniteOrDefault(const std::string& field, double value,
                             double default_value, const char* range,
                             double* out,
                             double max = std::numeric_limits<double>::max()) {
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " is not finite"));
  }
  if (value < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", value, " out of range (must be ", range, ")"));
  }
  if (value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " out of range (at most ", max, ")"));
  }
  *out = value == 0 ? default_value : value;
  return absl::OkStatus();
}

// Prefixes a status's message with the field it concerns, keeping its code.
absl::Status WithField(const std::string& field, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(field, ": ", s.message()));
}

bool IsUnder(const std::filesystem::path& path,
             const std::filesystem::path& root) {
  auto r = root.begin();
  auto p = path.begin();
  for (; r != root.end(); ++r, ++p) {
    if (r->empty()) continue;  // Trailing separator of the root.
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

// The roots a path's canonical form must lie under, in an error message.
std::string RootList(const std::vector<std::filesystem::path>& roots) {
  std::vector<std::string> names;
  for (const auto& root : roots) names.push_back(root.string());
  return absl::StrJoin(names, ", ");
}

// The weight and config files of checkpoint directory `dir`: regular files
// only, and with data roots each must resolve under one (a symlink in a
// checkpoint directory must not lead out of them).
absl::Status CheckWeightFiles(const std::string& field, const std::string& dir,
                              const std::vector<std::filesystem::path>& roots) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".safetensors" &&
        name != "model.safetensors.index.json" && name != "config.json") {
      continue;
    }
    if (!roots.empty()) {
      std::error_code canonical_ec;
      const std::filesystem::path canonical =
          std::filesystem::weakly_canonical(entry.path(), canonical_ec);
      bool inside = false;
      for (const auto& root : roots) {
        inside |= !canonical_ec && IsUnder(canonical, root);
      }
      if (!inside) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": '", entry.path().string(),
            "' is outside the data roots (", RootList(roots), ")"));
      }
    }
    std::error_code status_ec;
    if (!std::filesystem::is_regular_file(entry.status(status_ec))) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": '", entry.path().string(), "' is not a regular file"));
    }
  }
  return absl::OkStatus();
}

// The weights of checkpoint directory `dir` as a worker will open them: each
// safetensors header parses, and each tensor's dtype, shape and
// data_offsets agree with each other and with the file's length; an index's
// shards stay in `dir` (headers only: the data is not read). A missing file
// keeps NOT_FOUND; a malformed one is INVALID_ARGUMENT naming `field`.
absl::Status CheckWeightHeaders(const std::string& field,
                                const std::string& dir) {
  absl::StatusOr<format::SafetensorsCheckpoint> weights =
      format::SafetensorsCheckpoint::Open(dir);
  if (weights.ok()) return absl::OkStatus();
  const absl::Status& s = weights.status();
  return absl::Status(
      absl::IsNotFound(s) ? s.code() : absl::StatusCode::kInvalidArgument,
      absl::StrCat(field, ": ", s.message()));
}

}  // namespace

int64_t JobValidator::SaeBytes(int64_t d_in, int64_t d_sae) {
  // The safetensors header of four tensors with their names, shapes and
  // offsets and the metadata the worker adds stays under 1 KiB.
  constexpr int64_t kHeaderBytes = 1024;
  return 4 * (2 * d_in * d_sae + d_sae + d_in) + kHeaderBytes;
}

JobValidator::JobValidator(const std::vector<std::string>& data_roots,
                           int64_t max_artifact_bytes)
    : max_artifact_bytes_(std::min(max_artifact_bytes, kMaxSaeBytes)) {
  for (const std::string& root : data_roots) {
    if (root.empty()) continue;
    std::error_code ec;
    std::filesystem::path canonical = std::filesystem::weakly_canonical(
        std::filesystem::absolute(root, ec), ec);
    data_roots_.push_back(ec ? std::filesystem::path(root) : canonical);
  }
}

absl::Status JobValidator::CheckPath(const std::string& field,
                                     const std::string& path,
                                     PathKind kind) const {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
  }
  for (size_t i = 0; i < path.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(path[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat(field,
                       ": a NUL byte or other control character at "
                       "byte ",
                       i, " of the path"));
    }
  }
  std::filesystem::path p(path);
  if (!p.is_absolute()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "' is not an absolute path"));
  }
  for (const auto& part : p) {
    if (part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": '", path, "' has a '..' component"));
    }
  }
  std::error_code ec;
  if (!data_roots_.empty()) {
    // Symlinks resolved. Checked before anything else about the file, and
    // answered with one message whether or not it exists: the coordinator
    // tells nothing about files outside its roots.
    std::filesystem::path canonical = std::filesystem::weakly_canonical(p, ec);
    if (ec) canonical = p.lexically_normal();
    bool inside = false;
    for (const auto& root : data_roots_) inside |= IsUnder(canonical, root);
    if (!inside) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": '", path, "' is outside the data roots (",
                       RootList(data_roots_), ")"));
    }
  }
  std::filesystem::file_status status = std::filesystem::status(p, ec);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(
        absl::StrCat(field, ": '", path, "' does not exist"));
  }
  if (kind == PathKind::kDirectory && !std::filesystem::is_directory(status)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "' is not a directory"));
  }
  if (kind == PathKind::kFile && !std::filesystem::is_regular_file(status)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "' is not a regular file"));
  }
  if (access(path.c_str(), kind == PathKind::kDirectory ? R_OK | X_OK : R_OK) !=
      0) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": '", path, "' is not readable by the coordinator"));
  }
  return absl::OkStatus();
}

absl::Status JobValidator::FillFromModel(const format::ModelConfig& config,
                                         const std::string& where,
                                         const std::string& model_dir,
                                         v1::JobSpec* out) const {
  v1::SaeConfig* sae = out->mutable_sae();
  const bool topk = sae->architecture() == "topk";
  const int context_length = out->data().context_length();
  for (int i = 0; i < out->hooks_size(); ++i) {
    const int layer = out->hooks(i).layer();
    if (layer >= config.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.hooks[", i, "].layer: ", layer, " out of range [0, ",
          config.num_hidden_layers, ") for the model at ", where));
    }
  }
  if (config.max_position_embeddings > 0 &&
      context_length > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.data.context_length: ", context_length,
        " exceeds max_position_embeddings ", config.max_position_embeddings,
        " of the model at ", where));
  }

  int64_t d_sae = sae->d_sae() > 0
                      ? sae->d_sae()
                      : int64_t{sae->expansion_factor()} * config.hidden_size;
  if (d_sae > kMaxDSae) {
    return absl::InvalidArgumentError(absl::StrCat(
        sae->d_sae() > 0 ? "spec.sae.d_sae: " : "spec.sae.expansion_factor: ",
        "d_sae ", d_sae, " exceeds the maximum ", kMaxDSae));
  }
  // An SAE that could never be uploaded or stored fails only after its
  // first task trained for hours: refuse it now.
  const int64_t sae_bytes = SaeBytes(config.hidden_size, d_sae);
  if (sae_bytes > max_artifact_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat(
        sae->d_sae() > 0 ? "spec.sae.d_sae: " : "spec.sae.expansion_factor: ",
        "an SAE of d_sae ", d_sae, " at hidden_size ", config.hidden_size,
        " is ", sae_bytes, " bytes, more than the coordinator stores (",
        max_artifact_bytes_,
        " bytes, its --max_artifact_bytes or one stored value)"));
  }
  sae->set_d_sae(static_cast<int32_t>(d_sae));
  if (out->min_worker_memory_bytes() == 0) {
    out->set_min_worker_memory_bytes(EstimateTaskMemory(
        config.hidden_size, d_sae, sae->batch_size(), ModelBytes(model_dir)));
  }
  if (topk) {
    // k == d_sae would keep every latent: no sparsity at all.
    if (sae->k() >= d_sae) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.sae.k: ", sae->k(),
                       sae->k() == kDefaultK ? " (the default)" : "",
                       " must be < d_sae ", d_sae));
    }
    if (sae->aux_k() > d_sae) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.sae.aux_k: ", sae->aux_k(), " exceeds d_sae ", d_sae));
    }
    // The default may not exceed d_sae either; small dictionaries get all
    // their latents in the AuxK loss.
    if (sae->aux_k() == 0) {
      sae->set_aux_k(static_cast<int32_t>(
          std::min<int64_t>(int64_t{kDefaultAuxKPerK} * sae->k(), d_sae)));
    }
  }

  // Held-out activations the worker keeps in memory, per field.
  const int64_t bytes_per_token =
      int64_t{4} * std::max<int64_t>(1, config.hidden_size);
  for (const auto& [field, value] :
       {std::pair<const char*, int64_t>{"spec.schedule.eval_tokens",
                                        out->schedule().eval_tokens()},
        {"spec.schedule.lm_eval_tokens", out->schedule().lm_eval_tokens()},
        {"spec.analysis.analysis_tokens", out->analysis().analysis_tokens()}}) {
    if (value > kMaxHeldOutActivationBytes / bytes_per_token) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": ", value, " tokens exceeds the maximum ",
          kMaxHeldOutActivationBytes / bytes_per_token,
          " (their activations, d_in ", config.hidden_size,
          " in fp32, must fit in ", kMaxHeldOutActivationBytes, " bytes)"));
    }
  }
  return absl::OkStatus();
}

absl::Status JobValidator::CheckFollow(v1::JobSpec* out) const {
  v1::FollowSpec* follow = out->mutable_model()->mutable_follow();
  if (out->schedule().direction() == v1::Schedule::BACKWARD) {
    return absl::InvalidArgumentError(
        "spec.schedule.direction: BACKWARD cannot follow a training run "
        "(its chain starts at the final checkpoint, which is not known "
        "until the run ends)");
  }
  if (!follow->dir().empty()) {
    if (absl::Status s = CheckPath("spec.model.follow.dir", follow->dir(),
                                   PathKind::kDirectory);
        !s.ok()) {
      return s;
    }
  }
  if (follow->pattern().empty()) follow->set_pattern(kDefaultFollowPattern);
  if (absl::StatusOr<CheckpointPattern> pattern =
          ParseCheckpointPattern(follow->pattern());
      !pattern.ok()) {
    return pattern.status();
  }
  double value = 0;
  if (absl::Status s = FiniteOrDefault(
          "spec.model.follow.poll_interval_s", follow->poll_interval_s(),
          kDefaultPollIntervalS, "in [0.1, 3600]", &value, kMaxPollIntervalS);
      !s.ok()) {
    return s;
  }
  if (value < kMinPollIntervalS) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.model.follow.poll_interval_s: ", value,
                     " out of range [0.1, 3600]"));
  }
  follow->set_poll_interval_s(value);
  const auto& listed = out->model().checkpoints();
  if (follow->has_until_step()) {
    if (follow->until_step() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.model.follow.until_step: ", follow->until_step(),
                       " must be >= 0"));
    }
    if (!listed.empty() && follow->until_step() <= listed.rbegin()->step()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.model.follow.until_step: ", follow->until_step(),
          " is not after the last listed checkpoint (step ",
          listed.rbegin()->step(), "): there would be nothing to follow"));
    }
  }
  const std::string& marker = follow->marker_file();
  if (!marker.empty() &&
      (marker == "." || marker == ".." || marker.size() > 255 ||
       marker.find('/') != std::string::npos ||
       std::any_of(marker.begin(), marker.end(), [](char c) {
         return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
       }))) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.model.follow.marker_file: '",
                     absl::CHexEscape(marker), "' is not a plain file name"));
  }
  if (follow->analyse_every() < 0 ||
      follow->analyse_every() > kMaxAnalyseEvery) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.model.follow.analyse_every: ", follow->analyse_every(),
        " out of range [0, ", kMaxAnalyseEvery, "] (0: only on request)"));
  }
  if (follow->analyse_every() > 0 && out->analysis().analysis_tokens() == 0) {
    return absl::InvalidArgumentError(
        "spec.model.follow.analyse_every: needs the analysis pass "
        "(spec.analysis.analysis_tokens is 0)");
  }
  for (const auto& [field, has, given, fallback, set] :
       {std::tuple<const char*, bool, double, double,
                   void (v1::FollowSpec::*)(double)>{
            "spec.model.follow.stall_alert_s", follow->has_stall_alert_s(),
            follow->stall_alert_s(), kDefaultStallAlertS,
            &v1::FollowSpec::set_stall_alert_s},
        {"spec.model.follow.lag_alert_s", follow->has_lag_alert_s(),
         follow->lag_alert_s(), kDefaultLagAlertS,
         &v1::FollowSpec::set_lag_alert_s}}) {
    if (!has) {
      (follow->*set)(fallback);
    } else if (!(given >= 0 && given <= kMaxAlertS)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", given, " out of range [0, ", kMaxAlertS,
                       "] (0 turns the alert off)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::JobSpec> JobValidator::ValidateNewCheckpoint(
    const v1::JobSpec& spec, int64_t step, const std::string& path) const {
  const std::string field = "checkpoint.path";
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint.step: ", step, " must be >= 0"));
  }
  if (absl::Status s = CheckPath(field, path, PathKind::kDirectory); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckWeightFiles(field, path, data_roots_); !s.ok()) {
    return s;
  }
  absl::StatusOr<format::ModelConfig> config = format::LoadModelConfig(path);
  if (!config.ok()) return WithField(field, config.status());
  if (absl::Status s = CheckWeightHeaders(field, path); !s.ok()) return s;
  v1::JobSpec out = spec;
  v1::ModelSpec* model = out.mutable_model();
  if (model->architecture().empty()) {
    model->set_architecture(config->architecture);
  }
  if (config->architecture != model->architecture()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": architecture '", config->architecture,
                     "' differs from spec.model.architecture '",
                     model->architecture(), "'"));
  }
  if (model->checkpoints().empty()) {
    // The first checkpoint: the model-dependent settings follow from it.
    if (absl::Status s = FillFromModel(*config, field, path, &out); !s.ok()) {
      return s;
    }
  } else {
    // Compared with the first taken checkpoint whose config still reads (a
    // trainer may delete old checkpoints).
    for (const v1::Checkpoint& taken : model->checkpoints()) {
      absl::StatusOr<format::ModelConfig> reference =
          format::LoadModelConfig(taken.path());
      if (!reference.ok()) continue;
      auto differs = [&](const char* name, const auto& got, const auto& want) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": ", name, " ", got, " differs from ", name, " ", want,
            " of the job's checkpoint at step ", taken.step()));
      };
      if (config->hidden_size != reference->hidden_size) {
        return differs("hidden_size", config->hidden_size,
                       reference->hidden_size);
      }
      if (config->num_hidden_layers != reference->num_hidden_layers) {
        return differs("num_hidden_layers", config->num_hidden_layers,
                       reference->num_hidden_layers);
      }
      break;
    }
  }
  v1::Checkpoint checkpoint;
  checkpoint.set_step(step);
  checkpoint.set_path(path);
  auto* checkpoints = model->mutable_checkpoints();
  checkpoints->Add(std::move(checkpoint));
  for (int i = checkpoints->size() - 1;
       i > 0 && checkpoints->Get(i - 1).step() > step; --i) {
    checkpoints->SwapElements(i, i - 1);
  }
  return out;
}

absl::StatusOr<v1::JobSpec> JobValidator::Validate(
    const v1::JobSpec& spec) const {
  v1::JobSpec out = spec;

  // --- structure and numbers (no I/O) ---
  v1::ModelSpec* model = out.mutable_model();
  if (!model->architecture().empty() &&
      !Contains(SupportedModelArchitectures(), model->architecture())) {
    return NotSupported("spec.model.architecture", model->architecture(),
                        SupportedModelArchitectures());
  }
  if (model->checkpoints().empty() && !model->has_follow()) {
    return absl::InvalidArgumentError(
        "spec.model.checkpoints: empty (a job needs at least one checkpoint, "
        "or model.follow to take them as a training run writes them)");
  }
  for (int i = 0; i < model->checkpoints_size(); ++i) {
    const int64_t step = model->checkpoints(i).step();
    const std::string field = absl::StrCat("spec.model.checkpoints[", i, "]");
    if (step < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".step: ", step, " must be >= 0"));
    }
    if (i > 0 && step <= model->checkpoints(i - 1).step()) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".step: ", step,
          step == model->checkpoints(i - 1).step() ? " duplicates"
                                                   : " is smaller than",
          " spec.model.checkpoints[", i - 1, "].step (",
          model->checkpoints(i - 1).step(),
          "); checkpoints must be sorted by step without duplicates"));
    }
  }

  v1::DataSpec* data = out.mutable_data();
  if (data->token_dtype().empty()) data->set_token_dtype(kDefaultTokenDtype);
  auto dtype = TokenDtypes().find(data->token_dtype());
  if (dtype == TokenDtypes().end()) {
    std::vector<std::string> names;
    for (const auto& [name, size] : TokenDtypes()) names.push_back(name);
    return NotSupported("spec.data.token_dtype", data->token_dtype(), names);
  }
  int context_length = 0;
  if (absl::Status s = PositiveOrDefault<int>(
          "spec.data.context_length", data->context_length(),
          kDefaultContextLength, &context_length);
      !s.ok()) {
    return s;
  }
  data->set_context_length(context_length);

  if (out.hooks().empty()) {
    return absl::InvalidArgumentError(
        "spec.hooks: empty (name at least one layer to hook)");
  }
  for (int i = 0; i < out.hooks_size(); ++i) {
    v1::HookPoint* hook = out.mutable_hooks(i);
    const std::string field = absl::StrCat("spec.hooks[", i, "]");
    if (hook->site().empty()) hook->set_site(kDefaultSite);
    if (!Contains(SupportedSites(), hook->site())) {
      return NotSupported(field + ".site", hook->site(), SupportedSites());
    }
    if (hook->layer() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".layer: ", hook->layer(), " must be >= 0"));
    }
    for (int j = 0; j < i; ++j) {
      if (out.hooks(j).layer() == hook->layer()) {
        // Results are keyed by (job, layer): one hook per layer.
        return absl::InvalidArgumentError(
            absl::StrCat(field, ".layer: ", hook->layer(),
                         " is already hooked by spec.hooks[", j,
                         "] (each layer may be hooked once)"));
      }
    }
  }

  v1::SaeConfig* sae = out.mutable_sae();
  if (sae->architecture().empty())
    sae->set_architecture(kDefaultSaeArchitecture);
  if (!Contains(SupportedSaeArchitectures(), sae->architecture())) {
    return NotSupported("spec.sae.architecture", sae->architecture(),
                        SupportedSaeArchitectures());
  }
  if (sae->d_sae() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.sae.d_sae: ", sae->d_sae(), " must be > 0"));
  }
  if (sae->expansion_factor() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.sae.expansion_factor: ", sae->expansion_factor(),
                     " must be > 0"));
  }
  if (sae->d_sae() == 0 && sae->expansion_factor() == 0) {
    sae->set_expansion_factor(kDefaultExpansionFactor);
  }
  double value = 0;
  if (absl::Status s = FiniteOrDefault(
          "spec.sae.l1_coefficient", sae->l1_coefficient(),
          kDefaultL1Coefficient, ">= 0", &value, kMaxL1Coefficient);
      !s.ok()) {
    return s;
  }
  sae->set_l1_coefficient(value);
  if (absl::Status s = FiniteOrDefault("spec.sae.lr_first", sae->lr_first(),
                                       kDefaultLrFirst, "> 0", &value, kMaxLr);
      !s.ok()) {
    return s;
  }
  sae->set_lr_first(value);
  if (absl::Status s = FiniteOrDefault("spec.sae.lr_later", sae->lr_later(),
                                       kDefaultLrLater, "> 0", &value, kMaxLr);
      !s.ok()) {
    return s;
  }
  sae->set_lr_later(value);
  int int_value = 0;
  if (absl::Status s = PositiveOrDefault<int>("spec.sae.warmup_steps_first",
                                              sae->warmup_steps_first(),
                                              kDefaultWarmupFirst, &int_value);
      !s.ok()) {
    return s;
  }
  sae->set_warmup_steps_first(int_value);
  if (absl::Status s = PositiveOrDefault<int>("spec.sae.warmup_steps_later",
                                              sae->warmup_steps_later(),
                                              kDefaultWarmupLater, &int_value);
      !s.ok()) {
    return s;
  }
  sae->set_warmup_steps_later(int_value);
  if (absl::Status s =
          PositiveOrDefault<int>("spec.sae.batch_size", sae->batch_size(),
                                 kDefaultBatchSize, &int_value);
      !s.ok()) {
    return s;
  }
  if (int_value > kMaxBatchSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.sae.batch_size: ", int_value,
                     " out of range (at most ", kMaxBatchSize, ")"));
  }
  sae->set_batch_size(int_value);

  // Fields of the other architecture are refused rather than ignored: a
  // topk job with an L1-style setting (or the reverse) is almost always a
  // mistake in the job file.
  const bool topk = sae->architecture() == "topk";
  if (topk) {
    if (sae->has_ghost_grads() && sae->ghost_grads()) {
      return absl::InvalidArgumentError(
          "spec.sae.ghost_grads: true applies to architecture 'relu_l1' only "
          "(topk revives dead latents with the AuxK loss)");
    }
    if (sae->ghost_grads_later()) {
      return absl::InvalidArgumentError(
          "spec.sae.ghost_grads_later: true applies to architecture 'relu_l1' "
          "only (topk revives dead latents with the AuxK loss)");
    }
    // k and aux_k are checked against d_sae once it is known (below).
    if (sae->k() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.sae.k: ", sae->k(), " must be > 0"));
    }
    if (sae->k() == 0) sae->set_k(kDefaultK);
    if (sae->aux_k() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.sae.aux_k: ", sae->aux_k(), " must be >= 0"));
    }
    if (absl::Status s = FiniteOrDefault(
            "spec.sae.aux_coefficient", sae->aux_coefficient(),
            kDefaultAuxCoefficient, ">= 0", &value, kMaxL1Coefficient);
        !s.ok()) {
      return s;
    }
    sae->set_aux_coefficient(value);
  } else {
    const char* topk_field = sae->k() != 0                 ? "k"
                             : sae->aux_k() != 0           ? "aux_k"
                             : sae->aux_coefficient() != 0 ? "aux_coefficient"
                                                           : nullptr;
    if (topk_field != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.sae.", topk_field,
                       ": applies to architecture 'topk' only, not '",
                       sae->architecture(), "'"));
    }
    if (!sae->has_ghost_grads()) sae->set_ghost_grads(kDefaultGhostGrads);
  }
  // 0 stays 0: the engine then uses a tenth of each SAE's training tokens.
  if (sae->dead_window_tokens() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.sae.dead_window_tokens: ", sae->dead_window_tokens(),
                     " must be >= 0"));
  }

  v1::Schedule* schedule = out.mutable_schedule();
  if (!v1::Schedule::Direction_IsValid(schedule->direction())) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.schedule.direction: ", schedule->direction(),
                     " is not a valid direction (FORWARD or BACKWARD)"));
  }
  if (schedule->direction() == v1::Schedule::DIRECTION_UNSPECIFIED) {
    schedule->set_direction(v1::Schedule::FORWARD);
  }
  int64_t tokens = 0;
  if (absl::Status s = PositiveOrDefault<int64_t>("spec.schedule.tokens_first",
                                                  schedule->tokens_first(),
                                                  kDefaultTokensFirst, &tokens);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = AtMost("spec.schedule.tokens_first", tokens,
                              kMaxTrainTokens, "tokens");
      !s.ok()) {
    return s;
  }
  schedule->set_tokens_first(tokens);
  if (absl::Status s = PositiveOrDefault<int64_t>(
          "spec.schedule.tokens_later", schedule->tokens_later(),
          std::max<int64_t>(1, tokens / kLaterTokensDivisor), &tokens);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = AtMost("spec.schedule.tokens_later", tokens,
                              kMaxTrainTokens, "tokens");
      !s.ok()) {
    return s;
  }
  schedule->set_tokens_later(tokens);
  if (absl::Status s = PositiveOrDefault<int64_t>("spec.schedule.eval_tokens",
                                                  schedule->eval_tokens(),
                                                  kDefaultEvalTokens, &tokens);
      !s.ok()) {
    return s;
  }
  schedule->set_eval_tokens(tokens);
  // 0 stays 0: no adaptive budget.
  if (schedule->adaptive_window_tokens() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.schedule.adaptive_window_tokens: ",
                     schedule->adaptive_window_tokens(), " must be >= 0"));
  }
  if (absl::Status s = FiniteOrDefault(
          "spec.schedule.adaptive_tolerance", schedule->adaptive_tolerance(),
          kDefaultAdaptiveTolerance, ">= 0", &value);
      !s.ok()) {
    return s;
  }
  schedule->set_adaptive_tolerance(value);
  // Unset means the default; an explicit 0 skips the LM evaluation.
  if (!schedule->has_lm_eval_tokens()) {
    schedule->set_lm_eval_tokens(kDefaultLmEvalTokens);
  } else if (schedule->lm_eval_tokens() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.schedule.lm_eval_tokens: ", schedule->lm_eval_tokens(),
        " must be >= 0 (0 skips the LM evaluation)"));
  }

  // Unset means the default; an explicit 0 turns the trust checks off.
  if (!schedule->has_reference_checkpoints()) {
    schedule->set_reference_checkpoints(kDefaultReferenceCheckpoints);
  } else if (schedule->reference_checkpoints() < 0 ||
             schedule->reference_checkpoints() > kMaxReferenceCheckpoints) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.schedule.reference_checkpoints: ",
        schedule->reference_checkpoints(), " out of range [0, ",
        kMaxReferenceCheckpoints, "] (0 turns the trust checks off)"));
  }
  if (!schedule->has_speedup_tolerance()) {
    schedule->set_speedup_tolerance(kDefaultSpeedupTolerance);
  } else if (!(schedule->speedup_tolerance() > 0 &&
               schedule->speedup_tolerance() <= kMaxSpeedupTolerance)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.schedule.speedup_tolerance: ", schedule->speedup_tolerance(),
        " out of range (0, ", kMaxSpeedupTolerance, "]"));
  }

  v1::AnalysisConfig* analysis = out.mutable_analysis();
  // Unset means the default; an explicit 0 skips the analysis pass.
  if (!analysis->has_analysis_tokens()) {
    analysis->set_analysis_tokens(kDefaultAnalysisTokens);
  } else if (analysis->analysis_tokens() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.analysis.analysis_tokens: ", analysis->analysis_tokens(),
        " must be >= 0 (0 skips the analysis pass)"));
  }
  if (absl::Status s =
          PositiveOrDefault<int>("spec.analysis.top_k", analysis->top_k(),
                                 kDefaultAnalysisTopK, &int_value);
      !s.ok()) {
    return s;
  }
  if (int_value > kMaxAnalysisTopK) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.analysis.top_k: ", int_value,
                     " exceeds the maximum ", kMaxAnalysisTopK));
  }
  analysis->set_top_k(int_value);
  if (absl::Status s = PositiveOrDefault<int>(
          "spec.analysis.random_positions", analysis->random_positions(),
          kDefaultRandomPositions, &int_value);
      !s.ok()) {
    return s;
  }
  if (int_value < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.analysis.random_positions: ", int_value,
                     " must be >= 2 (the baseline is a mean over pairs)"));
  }
  analysis->set_random_positions(int_value);
  // Unset means the default; an explicit 0 turns logit effects off.
  if (!analysis->has_logit_effects_k()) {
    analysis->set_logit_effects_k(kDefaultLogitEffectsK);
  } else if (analysis->logit_effects_k() < 0 ||
             analysis->logit_effects_k() > kMaxLogitEffectsK) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.analysis.logit_effects_k: ", analysis->logit_effects_k(),
        " must be in [0, ", kMaxLogitEffectsK, "] (0 turns them off)"));
  }
  // Fractions in (0, 1]; 0 means the default.
  auto unit_fraction = [&](const char* name, double given, double fallback,
                           double* out_value) -> absl::Status {
    const std::string field = absl::StrCat("spec.analysis.", name);
    if (absl::Status s =
            FiniteOrDefault(field, given, fallback, "in (0, 1]", out_value);
        !s.ok()) {
      return s;
    }
    if (*out_value > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", *out_value, " must be in (0, 1]"));
    }
    return absl::OkStatus();
  };
  if (absl::Status s = unit_fraction("formation_tau", analysis->formation_tau(),
                                     kDefaultFormationTau, &value);
      !s.ok()) {
    return s;
  }
  analysis->set_formation_tau(value);
  if (absl::Status s = unit_fraction("token_level_threshold",
                                     analysis->token_level_threshold(),
                                     kDefaultTokenLevelThreshold, &value);
      !s.ok()) {
    return s;
  }
  analysis->set_token_level_threshold(value);
  if (out.min_worker_memory_bytes() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.min_worker_memory_bytes: ", out.min_worker_memory_bytes(),
        " must be >= 0"));
  }

  if (!out.device().empty() && out.device() != "cpu" &&
      out.device() != "cuda") {
    return NotSupported("spec.device", out.device(), {"cpu", "cuda"});
  }

  if (model->has_follow()) {
    if (absl::Status s = CheckFollow(&out); !s.ok()) return s;
  }

  // --- files ---
  format::ModelConfig first_config;
  for (int i = 0; i < model->checkpoints_size(); ++i) {
    const std::string field =
        absl::StrCat("spec.model.checkpoints[", i, "].path");
    const std::string& path = model->checkpoints(i).path();
    if (absl::Status s = CheckPath(field, path, PathKind::kDirectory);
        !s.ok()) {
      return s;
    }
    // The weights a worker will open: regular files only (a FIFO would
    // hang the worker's open(), a device feed it garbage).
    if (absl::Status s = CheckWeightFiles(field, path, data_roots_); !s.ok()) {
      return s;
    }
    absl::StatusOr<format::ModelConfig> config = format::LoadModelConfig(path);
    if (!config.ok()) return WithField(field, config.status());
    if (absl::Status s = CheckWeightHeaders(field, path); !s.ok()) return s;
    if (i == 0) {
      first_config = *config;
      if (model->architecture().empty()) {
        model->set_architecture(config->architecture);
      }
      if (config->architecture != model->architecture()) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": architecture '", config->architecture,
                         "' differs from spec.model.architecture '",
                         model->architecture(), "'"));
      }
      continue;
    }
    auto differs = [&](const char* name, const auto& got, const auto& want) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", name, " ", got, " differs from ", name, " ",
                       want, " of spec.model.checkpoints[0].path"));
    };
    if (config->architecture != first_config.architecture) {
      return differs("architecture", config->architecture,
                     first_config.architecture);
    }
    if (config->hidden_size != first_config.hidden_size) {
      return differs("hidden_size", config->hidden_size,
                     first_config.hidden_size);
    }
    if (config->num_hidden_layers != first_config.num_hidden_layers) {
      return differs("num_hidden_layers", config->num_hidden_layers,
                     first_config.num_hidden_layers);
    }
  }

  if (model->checkpoints_size() > 0) {
    if (absl::Status s =
            FillFromModel(first_config, "spec.model.checkpoints[0].path",
                          model->checkpoints(0).path(), &out);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckPath("spec.data.tokens_path", data->tokens_path(),
                                 PathKind::kFile);
      !s.ok()) {
    return s;
  }
  std::error_code ec;
  const uintmax_t bytes = std::filesystem::file_size(data->tokens_path(), ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("spec.data.tokens_path: '", data->tokens_path(),
                     "': cannot read size: ", ec.message()));
  }
  const int token_bytes = dtype->second;
  if (bytes % token_bytes != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.data.tokens_path: '", data->tokens_path(), "' has ",
                     bytes, " bytes, not a multiple of ", token_bytes,
                     " (spec.data.token_dtype ", data->token_dtype(), ")"));
  }
  const uintmax_t num_tokens = bytes / token_bytes;
  if (num_tokens < static_cast<uintmax_t>(context_length)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.data.tokens_path: '", data->tokens_path(), "' holds ", num_tokens,
        " tokens, fewer than one context (spec.data.context_length ",
        context_length, ")"));
  }
  // Training and held-out contexts must not overlap: each part of the split
  // holds at least one whole context.
  const absl::StatusOr<format::TokenSplit> split =
      format::SplitTokens(static_cast<int64_t>(num_tokens), context_length);
  if (!split.ok() || split->train_end > split->eval_begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.data.tokens_path: '", data->tokens_path(), "' holds ", num_tokens,
        " tokens, too few for a training part and a disjoint ",
        "held-out part (the last 10%) of one context each ",
        "(spec.data.context_length ", context_length, " needs about ",
        int64_t{10} * context_length, " tokens)"));
  }
  if (!data->tokenizer_path().empty()) {
    if (absl::Status s = CheckPath("spec.data.tokenizer_path",
                                   data->tokenizer_path(), PathKind::kFile);
        !s.ok()) {
      return s;
    }
  }
  return out;
}

}  // namespace saetrack::server
