
#include <filesystem>
#include <map>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/internal/cli_commands.h"
#include "client/output.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "format/saelens.h"
#include "proto/saelens_config.h"

namespace saetrack::client {
namespace internal {

// Writes the SAE as QueryService.ExportSae streams it; through
// DownloadSae and a cfg.json of its own (ExportLocally) when the
// coordinator lacks ExportSae.
int Cli::Export() {
  if (!ExpectPositional(1, "one job id") || !ExpectLayer()) return kExitUsage;
  if (inv_.out_dir.empty()) return Usage("export needs --out");
  const std::string& job_id = inv_.positional[0];
  const int layer = *inv_.layer;
  // The chain entry first: it resolves a missing --step as documented
  // (the last SAE trained) and names the stored steps when --step has
  // none.
  absl::StatusOr<v1::GetCheckpointMetricsResponse> metrics =
      client_->GetCheckpointMetrics(job_id, layer);
  if (!metrics.ok()) return Fail(metrics.status());
  absl::StatusOr<v1::CheckpointMetrics> sae = FindSae(*metrics);
  if (!sae.ok()) return Fail(sae.status());
  absl::StatusOr<ExportedSae> exported =
      client_->ExportSae(job_id, layer, sae->step());
  if (exported.status().code() == absl::StatusCode::kUnimplemented) {
    return ExportLocally(*sae);  // An older coordinator.
  }
  if (!exported.ok()) return Fail(exported.status());
  if (exported->step != sae->step()) {
    return Fail(absl::InternalError(
        absl::StrCat("asked to export step ", sae->step(),
                     ", the coordinator sent step ", exported->step)));
  }
  absl::StatusOr<format::SaelensConfig> cfg =
      WriteExportedFiles(exported->files);
  if (!cfg.ok()) return Fail(cfg.status());
  std::vector<std::string> files;
  for (const auto& [name, bytes] : exported->files) files.push_back(name);
  PrintExported(*cfg, *sae, files);
  return kExitOk;
}

// Checks that `files` hold a SAELens directory whose cfg.json parses and
// writes them into --out (created if needed; each file atomically, the
// cfg.json last so that a reader finding it finds the weights too).
// Returns the parsed config. Nothing is written when a file is missing or
// the cfg.json does not parse.
absl::StatusOr<format::SaelensConfig> Cli::WriteExportedFiles(
    const std::map<std::string, std::string>& files) const {
  for (const char* required :
       {format::kSaelensConfigFile, format::kSaelensWeightsFile}) {
    if (files.count(required) == 0) {
      return absl::DataLossError(
          absl::StrCat("the coordinator's export of job ", inv_.positional[0],
                       " layer ", *inv_.layer, " lacks ", required));
    }
  }
  const std::string config_path =
      absl::StrCat(inv_.out_dir, "/", format::kSaelensConfigFile);
  absl::StatusOr<format::SaelensConfig> cfg = format::ParseSaelensConfig(
      files.at(format::kSaelensConfigFile), config_path);
  if (!cfg.ok()) return cfg.status();
  std::error_code error;
  std::filesystem::create_directories(inv_.out_dir, error);
  if (error) {
    return absl::ErrnoToStatus(error.value(),
                               absl::StrCat("creating ", inv_.out_dir));
  }
  for (const auto& [name, bytes] : files) {
    if (name == format::kSaelensConfigFile) continue;
    if (absl::Status s = format::WriteFileAtomically(
            absl::StrCat(inv_.out_dir, "/", name), bytes);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = format::WriteFileAtomically(
          config_path, files.at(format::kSaelensConfigFile));
      !s.ok()) {
    return s;
  }
  return cfg;
}

// `export` against a coordinator without QueryService.ExportSae: the
// weights through WorkerService.DownloadSae, the cfg.json from the job's
// spec.
int Cli::ExportLocally(const v1::CheckpointMetrics& sae) {
  const std::string& job_id = inv_.positional[0];
  const int layer = *inv_.layer;
  absl::StatusOr<v1::Job> job = client_->GetJob(job_id);
  if (!job.ok()) return Fail(job.status());
  absl::StatusOr<std::string> weights =
      client_->DownloadSae(job_id, layer, sae.step());
  if (!weights.ok()) return Fail(weights.status());

  format::SaelensConfig cfg = SaelensConfigForJob(
      job->spec(), job_id, layer, sae.step(), sae.d_in(), sae.d_sae());
  // An older coordinator's spec may lack k; the metrics have it.
  if (cfg.architecture == "topk" && cfg.k == 0) cfg.k = sae.k();
  if (absl::Status s = format::WriteSaelensDir(inv_.out_dir, cfg, *weights);
      !s.ok()) {
    return Fail(s);
  }
  PrintExported(cfg, sae,
                {format::kSaelensConfigFile, format::kSaelensWeightsFile});
  return kExitOk;
}

// What `export` prints once `files` (names) of chain entry `sae` are in
// --out.
void Cli::PrintExported(const format::SaelensConfig& cfg,
                        const v1::CheckpointMetrics& sae,
                        const std::vector<std::string>& files) {
  const std::string& job_id = inv_.positional[0];
  const int layer = *inv_.layer;
  if (inv_.json) {
    using format::JsonValue;
    JsonValue::Array names;
    for (const std::string& name : files) {
      names.push_back(JsonValue::String(name));
    }
    out_ << format::SerializeJson(JsonValue::MakeObject({
                {"job_id", JsonValue::String(job_id)},
                {"layer", JsonValue::Integer(layer)},
                {"step", JsonValue::Integer(sae.step())},
                {"chain_index", JsonValue::Integer(sae.chain_index())},
                {"architecture", JsonValue::String(cfg.architecture)},
                {"d_in", JsonValue::Integer(cfg.d_in)},
                {"d_sae", JsonValue::Integer(cfg.d_sae)},
                {"k", JsonValue::Integer(cfg.k)},
                {"hook_name", JsonValue::String(cfg.hook_name)},
                {"model_name", JsonValue::String(cfg.model_name)},
                {"dir", JsonValue::String(inv_.out_dir)},
                {"cfg_path",
                 JsonValue::String(absl::StrCat(inv_.out_dir, "/",
                                                format::kSaelensConfigFile))},
                {"weights_path",
                 JsonValue::String(absl::StrCat(inv_.out_dir, "/",
                                                format::kSaelensWeightsFile))},
                {"files", JsonValue::MakeArray(std::move(names))},
            }))
         << "\n";
    return;
  }
  out_ << absl::StrFormat(
      "exported job %s layer %d step %d (%s%s, d_in %d, d_sae %d) to %s\n",
      job_id, layer, sae.step(), cfg.architecture,
      cfg.architecture == "topk" ? absl::StrCat(" k ", cfg.k) : "", cfg.d_in,
      cfg.d_sae, inv_.out_dir);
}

// The chain entry `export` writes: the one of --step, or without it the
// last one trained (the highest chain index).
absl::StatusOr<v1::CheckpointMetrics> Cli::FindSae(
    const v1::GetCheckpointMetricsResponse& metrics) const {
  const std::string what =
      absl::StrCat("job ", inv_.positional[0], " layer ", *inv_.layer);
  const v1::CheckpointMetrics* found = nullptr;
  std::vector<std::string> steps;
  for (const v1::CheckpointMetrics& m : metrics.checkpoints()) {
    steps.push_back(absl::StrCat(m.step()));
    if (inv_.step.has_value()
            ? m.step() == *inv_.step
            : found == nullptr || m.chain_index() > found->chain_index()) {
      found = &m;
    }
  }
  if (found != nullptr) return *found;
  if (!inv_.step.has_value()) {
    return absl::NotFoundError(absl::StrCat(what, " has no trained SAE yet"));
  }
  return absl::NotFoundError(absl::StrCat(
      what, " has no SAE at step ", *inv_.step, " (",
      steps.empty()
          ? "none trained yet"
          : absl::StrCat("steps with an SAE: ", absl::StrJoin(steps, ", ")),
      ")"));
}

}  // namespace internal

}  // namespace saetrack::client
