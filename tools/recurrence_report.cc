#include "tools/recurrence_report.h"

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/lm/activations.h"
#include "engine/lm/language_model.h"
#include "engine/sae/sae.h"
#include "engine/sae/saelens_io.h"
#include "format/json.h"
#include "format/mapped_file.h"
#include "format/saelens.h"
#include "format/token_file.h"

namespace saetrack::tools {
namespace {

using format::JsonValue;

constexpr int64_t kDefaultTrainTokens = 262'144;
constexpr int64_t kTokensPerForward = 8192;

absl::Status InvalidOption(const std::string& name, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", what));
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string FormatTokens(int64_t tokens) {
  if (tokens >= 1'000'000) return absl::StrFormat("%.2fM", tokens / 1e6);
  if (tokens >= 10'000) return absl::StrFormat("%.1fk", tokens / 1e3);
  return absl::StrCat(tokens);
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since)
      .count();
}

// The job's checkpoint steps in the order its chain trains them.
std::vector<int64_t> ChainSteps(const v1::JobSpec& spec) {
  std::vector<int64_t> steps;
  for (const v1::Checkpoint& c : spec.model().checkpoints()) {
    steps.push_back(c.step());
  }
  std::sort(steps.begin(), steps.end());
  if (spec.schedule().direction() == v1::Schedule::BACKWARD) {
    std::reverse(steps.begin(), steps.end());
  }
  return steps;
}

std::string CheckpointPath(const v1::JobSpec& spec, int64_t step) {
  for (const v1::Checkpoint& c : spec.model().checkpoints()) {
    if (c.step() == step) return c.path();
  }
  return "";
}

// Activations of one checkpoint at the given contexts.
struct Activations {
  torch::Tensor train;     // [train_tokens, d_in], rows shuffled
  torch::Tensor held_out;  // [eval_tokens, d_in]
};

absl::StatusOr<Activations> Collect(const std::string& model_dir,
                                    const format::TokenFile& tokens,
                                    const std::vector<int64_t>& train_starts,
                                    const std::vector<int64_t>& eval_starts,
                                    int context_length,
                                    const engine::HookPoint& hook,
                                    const torch::Tensor& permutation,
                                    const torch::Device& device) {
  SAETRACK_ASSIGN_OR_RETURN(std::unique_ptr<engine::LanguageModel> model,
                            engine::LoadLanguageModel(model_dir, device));
  if (hook.layer >= model->num_layers()) {
    return InvalidOption(
        "layer", absl::StrCat(hook.layer, " is not a layer of ", model_dir,
                              " (", model->num_layers(), " layers)"));
  }
  const int64_t vocab = model->config().vocab_size;
  SAETRACK_ASSIGN_OR_RETURN(
      const torch::Tensor train_contexts,
      engine::GatherContexts(tokens, train_starts, context_length, vocab));
  SAETRACK_ASSIGN_OR_RETURN(
      const torch::Tensor eval_contexts,
      engine::GatherContexts(tokens, eval_starts, context_length, vocab));
  const int64_t per_forward =
      std::max<int64_t>(1, kTokensPerForward / context_length);
  Activations a;
  // Rows of one context are strongly correlated and the SAEs take batches in
  // order, so the rows are shuffled once, the same way for every checkpoint.
  a.train = engine::CollectActivations(*model, train_contexts, hook,
                                       per_forward, device)
                .index_select(0, permutation.to(device))
                .contiguous();
  a.held_out = engine::CollectActivations(*model, eval_contexts, hook,
                                          per_forward, device);
  return a;
}

// A temporary directory, removed (with its files) on destruction.
class TempDir {
 public:
  static absl::StatusOr<TempDir> Create() {
    std::error_code error;
    const std::filesystem::path base =
        std::filesystem::temp_directory_path(error);
    if (error) {
      return absl::ErrnoToStatus(error.value(), "finding the temp directory");
    }
    std::string pattern = (base / "saetrack-recurrence-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::ErrnoToStatus(errno, absl::StrCat("mkdtemp ", pattern));
    }
    return TempDir(std::move(pattern));
  }
  TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) {
    other.path_.clear();
  }
  TempDir& operator=(TempDir&&) = delete;
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// The job's stored SAE of `step`, through QueryService.ExportSae (the
// public API) and the engine's SAELens reader, checked against the job's
// architecture (and k), and its d_sae when the spec sets one (d_in and a
// d_sae derived from the expansion factor are checked once the model's
// width is known).
absl::StatusOr<engine::SaeWeights> ReadJobSae(client::SaetrackClient& client,
                                              const std::string& job_id,
                                              int layer, int64_t step,
                                              const v1::SaeConfig& sae,
                                              const std::string& architecture,
                                              const torch::Device& device) {
  const std::string what =
      absl::StrCat("the SAE of job ", job_id, " layer ", layer, " step ", step);
  SAETRACK_ASSIGN_OR_RETURN(const client::ExportedSae exported,
                            client.ExportSae(job_id, layer, step));
  if (exported.step != step) {
    return absl::InternalError(absl::StrCat("asked to export ", what,
                                            ", the coordinator sent step ",
                                            exported.step));
  }
  for (const char* required :
       {format::kSaelensConfigFile, format::kSaelensWeightsFile}) {
    if (exported.files.count(required) == 0) {
      return absl::DataLossError(absl::StrCat("the coordinator's export of ",
                                              what, " lacks ", required));
    }
  }
  SAETRACK_ASSIGN_OR_RETURN(const TempDir dir, TempDir::Create());
  for (const char* name :
       {format::kSaelensConfigFile, format::kSaelensWeightsFile}) {
    SAETRACK_RETURN_IF_ERROR(format::WriteFileAtomically(
        absl::StrCat(dir.path(), "/", name), exported.files.at(name)));
  }
  absl::StatusOr<engine::ImportedSae> imported =
      engine::ImportSaelens(dir.path(), device);
  if (!imported.ok()) {
    return absl::Status(imported.status().code(),
                        absl::StrCat(what, " (QueryService.ExportSae): ",
                                     imported.status().message()));
  }
  const format::SaelensConfig& cfg = imported->config;
  if (cfg.architecture != architecture) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " is a ", cfg.architecture, " SAE; the job trains ",
                     architecture, " SAEs"));
  }
  if (architecture == "topk" && sae.k() > 0 && cfg.k != sae.k()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " has k ", cfg.k, "; the job's SAEs have k ", sae.k()));
  }
  if (sae.d_sae() > 0 && cfg.d_sae != sae.d_sae()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " has d_sae ", cfg.d_sae,
                     "; the job's SAEs have d_sae ", sae.d_sae()));
  }
  return imported->sae->weights();
}

}  // namespace

double RecurrenceReport::MedianSpeedup() const {
  if (pairs.empty()) return 0;
  std::vector<double> values;
  for (const RecurrencePair& p : pairs) values.push_back(p.result.speedup());
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

int RecurrenceReport::Never() const {
  return static_cast<int>(
      std::count_if(pairs.begin(), pairs.end(), [](const RecurrencePair& p) {
        return !p.result.recurrent_tokens.has_value();
      }));
}

bool RecurrenceReport::ClaimHolds() const {
  return !pairs.empty() && Never() == 0 &&
         MedianSpeedup() >= kPaperRecurrenceSpeedup;
}

std::vector<int64_t> DefaultStudySteps(
    const std::vector<int64_t>& chain_steps) {
  std::vector<int64_t> steps;
  const size_t n = chain_steps.size();
  if (n < 2) return steps;
  for (const size_t i : {size_t{1}, n / 2, n - 1}) {
    if (std::find(steps.begin(), steps.end(), chain_steps[i]) == steps.end()) {
      steps.push_back(chain_steps[i]);
    }
  }
  return steps;
}

absl::StatusOr<RecurrenceReport> MeasureJobRecurrence(
    client::SaetrackClient& client, const std::string& job_id,
    const RecurrenceReportOptions& options,
    const std::function<void(const std::string&)>& progress) {
  const auto say = [&progress](const std::string& line) {
    if (progress) progress(line);
  };
  if (options.scratch_tokens < 0) {
    return InvalidOption("scratch_tokens", "must be >= 0");
  }
  if (options.train_tokens < 0) {
    return InvalidOption("train_tokens", "must be >= 0");
  }
  if (options.eval_every_tokens < 0) {
    return InvalidOption("eval_every_tokens", "must be >= 0");
  }
  if (options.device != "cpu" && options.device != "cuda") {
    return InvalidOption("device",
                         "\"" + options.device + "\" is neither cpu nor cuda");
  }
  if (options.device == "cuda" && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError("device: no CUDA device here");
  }
  const torch::Device device(options.device == "cuda" ? torch::kCUDA
                                                      : torch::kCPU);

  SAETRACK_ASSIGN_OR_RETURN(const v1::Job job, client.GetJob(job_id));
  const v1::JobSpec& spec = job.spec();
  if (spec.hooks().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " has no hooks"));
  }
  const v1::HookPoint* hook = &spec.hooks(0);
  if (options.layer >= 0) {
    hook = nullptr;
    for (const v1::HookPoint& h : spec.hooks()) {
      if (h.layer() == options.layer) hook = &h;
    }
    if (hook == nullptr) {
      return InvalidOption(
          "layer",
          absl::StrCat("job ", job_id, " does not hook layer ", options.layer));
    }
  }
  SAETRACK_ASSIGN_OR_RETURN(
      const engine::HookSite site,
      engine::ParseHookSite(hook->site().empty() ? "resid_pre" : hook->site()));

  const std::vector<int64_t> chain = ChainSteps(spec);
  std::vector<int64_t> steps = options.steps;
  if (steps.empty()) steps = DefaultStudySteps(chain);
  if (steps.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " has ", chain.size(),
                     " checkpoint(s): a recurrent SAE needs at least two"));
  }
  std::vector<int64_t> prev_steps;
  for (const int64_t step : steps) {
    const auto it = std::find(chain.begin(), chain.end(), step);
    if (it == chain.end()) {
      return InvalidOption(
          "steps", absl::StrCat(step, " is not a checkpoint of job ", job_id,
                                " (", absl::StrJoin(chain, ","), ")"));
    }
    if (it == chain.begin()) {
      return InvalidOption(
          "steps",
          absl::StrCat(step,
                       " is the chain's first checkpoint (trained from "
                       "scratch): it has no previous SAE"));
    }
    prev_steps.push_back(*(it - 1));
  }

  RecurrenceReport report;
  report.job_id = job_id;
  report.layer = hook->layer();
  report.site = engine::HookSiteName(site);
  const v1::SaeConfig& sae = spec.sae();
  report.architecture =
      sae.architecture().empty() ? "relu_l1" : sae.architecture();
  report.sparsity = report.architecture == "topk"
                        ? absl::StrCat("k ", sae.k())
                        : absl::StrFormat("l1 %g", sae.l1_coefficient());
  report.batch_size = sae.batch_size();
  report.lr_scratch = sae.lr_first();
  report.lr_recurrent = sae.lr_later();
  report.warmup_scratch = sae.warmup_steps_first();
  report.warmup_recurrent = sae.warmup_steps_later();
  report.scratch_tokens = options.scratch_tokens > 0
                              ? options.scratch_tokens
                              : spec.schedule().tokens_first();
  report.job_tokens_later = spec.schedule().tokens_later();
  const int context_length = spec.data().context_length();
  if (report.scratch_tokens <= 0 || report.batch_size < 2 ||
      context_length <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id,
                     " lacks schedule.tokens_first, sae.batch_size or "
                     "data.context_length"));
  }
  report.train_tokens =
      options.train_tokens > 0
          ? options.train_tokens
          : std::min(report.scratch_tokens, kDefaultTrainTokens);
  report.eval_tokens = spec.schedule().eval_tokens();
  report.eval_every_tokens = options.eval_every_tokens > 0
                                 ? options.eval_every_tokens
                                 : int64_t{4} * report.batch_size;

  // The job's metrics, for its own later SAEs' FVU.
  SAETRACK_ASSIGN_OR_RETURN(const v1::GetCheckpointMetricsResponse metrics,
                            client.GetCheckpointMetrics(job_id, report.layer));

  // The same training and held-out positions for every studied checkpoint;
  // the held-out ones are the job's (torch_engine.cc).
  SAETRACK_ASSIGN_OR_RETURN(
      const format::TokenDtype dtype,
      format::ParseTokenDtype(spec.data().token_dtype().empty()
                                  ? "uint16"
                                  : spec.data().token_dtype()));
  SAETRACK_ASSIGN_OR_RETURN(
      const format::TokenFile tokens,
      format::TokenFile::Open(spec.data().tokens_path(), dtype));
  SAETRACK_ASSIGN_OR_RETURN(const engine::TokenSplit split,
                            engine::SplitTokens(tokens.size(), context_length));
  const std::vector<int64_t> train_starts = engine::SampleTrainContexts(
      split, context_length, CeilDiv(report.train_tokens, context_length),
      sae.seed());
  const std::vector<int64_t> eval_starts = engine::HeldOutContexts(
      split, context_length,
      CeilDiv(std::max<int64_t>(report.eval_tokens, context_length),
              context_length));
  at::Generator generator = at::detail::createCPUGenerator(sae.seed() + 1);
  const torch::Tensor permutation = torch::randperm(
      static_cast<int64_t>(train_starts.size()) * context_length, generator,
      torch::TensorOptions().dtype(torch::kInt64));

  engine::TokensToFvuOptions study;
  study.spec.architecture = report.architecture;
  study.spec.l1_coefficient = sae.l1_coefficient();
  study.spec.k = sae.k();
  study.batch_size = report.batch_size;
  study.lr_scratch = report.lr_scratch;
  study.warmup_scratch = report.warmup_scratch;
  study.lr_recurrent = report.lr_recurrent;
  study.warmup_recurrent = report.warmup_recurrent;
  study.scratch_tokens = report.scratch_tokens;
  study.eval_every_tokens = report.eval_every_tokens;
  study.seed = sae.seed();

  for (size_t i = 0; i < steps.size(); ++i) {
    const auto start = std::chrono::steady_clock::now();
    RecurrencePair pair;
    pair.step = steps[i];
    pair.prev_step = prev_steps[i];
    SAETRACK_ASSIGN_OR_RETURN(
        const engine::SaeWeights prev,
        ReadJobSae(client, job_id, report.layer, pair.prev_step, sae,
                   report.architecture, device));
    SAETRACK_ASSIGN_OR_RETURN(
        const Activations a,
        Collect(CheckpointPath(spec, pair.step), tokens, train_starts,
                eval_starts, context_length,
                engine::HookPoint{report.layer, site}, permutation, device));
    const int64_t d_in = a.train.size(1);
    const int64_t d_sae = sae.d_sae() > 0
                              ? int64_t{sae.d_sae()}
                              : int64_t{sae.expansion_factor()} * d_in;
    if (prev.d_in() != d_in || (d_sae > 0 && prev.d_sae() != d_sae)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the SAE of job ", job_id, " layer ", report.layer, " step ",
          pair.prev_step, " has d_in ", prev.d_in(), ", d_sae ", prev.d_sae(),
          "; the job's SAEs of that layer have d_in ", d_in, ", d_sae ",
          d_sae));
    }
    report.d_in = prev.d_in();
    report.d_sae = prev.d_sae();
    study.d_sae = prev.d_sae();
    say(absl::StrCat("step ", pair.step, ": training a from-scratch SAE on ",
                     FormatTokens(report.scratch_tokens),
                     " tokens and one from the job's SAE of step ",
                     pair.prev_step));
    SAETRACK_ASSIGN_OR_RETURN(
        pair.result,
        engine::MeasureTokensToFvu(prev, a.train, a.held_out, study));
    pair.result.scratch_sae = engine::SaeWeights();  // not reported
    for (const v1::CheckpointMetrics& m : metrics.checkpoints()) {
      if (m.step() == pair.step) {
        pair.job_fvu = m.fvu();
        pair.job_tokens = m.tokens_trained();
      }
    }
    pair.seconds = Seconds(start);
    say(absl::StrFormat(
        "step %d: target FVU %.4f; from scratch %s tokens, recurrent %s "
        "(%.1f s)",
        pair.step, pair.result.target_fvu,
        FormatTokens(pair.result.scratch_tokens),
        pair.result.recurrent_tokens.has_value()
            ? FormatTokens(*pair.result.recurrent_tokens) + " tokens"
            : std::string("never"),
        pair.seconds));
    report.pairs.push_back(std::move(pair));
  }
  return report;
}

std::string RecurrenceVerdict(const RecurrenceReport& report) {
  std::vector<int64_t> at_claim;
  for (const RecurrencePair& p : report.pairs) {
    if (p.result.speedup() >= kPaperRecurrenceSpeedup) {
      at_claim.push_back(p.step);
    }
  }
  std::string never;
  if (report.Never() > 0) {
    never = absl::StrCat("; ", report.Never(), " of ", report.pairs.size(),
                         " never reached the from-scratch FVU");
  }
  if (report.ClaimHolds()) {
    return absl::StrFormat(
        "the paper's >= %.0fx speed-up reproduces here: median %.1fx over %d "
        "checkpoints",
        kPaperRecurrenceSpeedup, report.MedianSpeedup(), report.pairs.size());
  }
  return absl::StrFormat(
      "the paper's >= %.0fx speed-up does NOT reproduce here: median %.1fx "
      "over %d checkpoints, >= %.0fx at %s%s",
      kPaperRecurrenceSpeedup, report.MedianSpeedup(), report.pairs.size(),
      kPaperRecurrenceSpeedup,
      at_claim.empty()
          ? std::string("none")
          : absl::StrCat("step(s) ", absl::StrJoin(at_claim, ", ")),
      never);
}

std::string FormatRecurrenceReport(const RecurrenceReport& r) {
  std::string out = absl::StrFormat(
      "%s layer %d %s: %s, %s, d_in %d, d_sae %d, batch %d\n"
      "from scratch: lr %g, warm-up %d, %s tokens; recurrent (from the job's "
      "SAE of the previous checkpoint): lr %g, warm-up %d\n"
      "held-out FVU every %s tokens on the job's %s held-out tokens; the "
      "job's later SAEs trained %s tokens\n\n",
      r.job_id, r.layer, r.site, r.architecture, r.sparsity, r.d_in, r.d_sae,
      r.batch_size, r.lr_scratch, r.warmup_scratch,
      FormatTokens(r.scratch_tokens), r.lr_recurrent, r.warmup_recurrent,
      FormatTokens(r.eval_every_tokens), FormatTokens(r.eval_tokens),
      FormatTokens(r.job_tokens_later));
  absl::StrAppendFormat(&out, "%6s %6s %8s %9s %9s %9s %8s %8s %9s\n", "prev",
                        "step", "target", "scr tok", "rec init", "rec tok",
                        "speed-up", "job FVU", "job tok");
  for (const RecurrencePair& p : r.pairs) {
    const engine::TokensToFvuResult& t = p.result;
    absl::StrAppendFormat(
        &out, "%6d %6d %8.4f %9s %9.4f %9s %8s %8s %9s\n", p.prev_step, p.step,
        t.target_fvu, FormatTokens(t.scratch_tokens), t.recurrent_init_fvu,
        t.recurrent_tokens.has_value() ? FormatTokens(*t.recurrent_tokens)
                                       : std::string("never"),
        t.recurrent_tokens.has_value() ? absl::StrFormat("%.1fx", t.speedup())
                                       : std::string("<1x"),
        p.job_fvu.has_value() ? absl::StrFormat("%.4f", *p.job_fvu)
                              : std::string("-"),
        p.job_fvu.has_value() ? FormatTokens(p.job_tokens) : std::string("-"));
  }
  absl::StrAppend(&out, "\n", RecurrenceVerdict(r), "\n");
  return out;
}

std::string RecurrenceReportJson(const RecurrenceReport& r) {
  JsonValue::Array pairs;
  for (const RecurrencePair& p : r.pairs) {
    JsonValue::Object members = {
        {"prev_step", JsonValue::Integer(p.prev_step)},
        {"step", JsonValue::Integer(p.step)},
        {"job_fvu",
         p.job_fvu.has_value() ? JsonValue::Number(*p.job_fvu) : JsonValue()},
        {"job_tokens", JsonValue::Integer(p.job_tokens)},
        {"seconds", JsonValue::Number(p.seconds)},
    };
    for (auto& member : engine::TokensToFvuJsonMembers(p.result)) {
      members.push_back(std::move(member));
    }
    pairs.push_back(JsonValue::MakeObject(std::move(members)));
  }
  const JsonValue report = JsonValue::MakeObject({
      {"job_id", JsonValue::String(r.job_id)},
      {"layer", JsonValue::Integer(r.layer)},
      {"site", JsonValue::String(r.site)},
      {"architecture", JsonValue::String(r.architecture)},
      {"sparsity", JsonValue::String(r.sparsity)},
      {"d_in", JsonValue::Integer(r.d_in)},
      {"d_sae", JsonValue::Integer(r.d_sae)},
      {"batch_size", JsonValue::Integer(r.batch_size)},
      {"lr_scratch", JsonValue::Number(r.lr_scratch)},
      {"lr_recurrent", JsonValue::Number(r.lr_recurrent)},
      {"scratch_tokens", JsonValue::Integer(r.scratch_tokens)},
      {"train_tokens", JsonValue::Integer(r.train_tokens)},
      {"eval_tokens", JsonValue::Integer(r.eval_tokens)},
      {"eval_every_tokens", JsonValue::Integer(r.eval_every_tokens)},
      {"job_tokens_later", JsonValue::Integer(r.job_tokens_later)},
      {"paper_speedup", JsonValue::Number(kPaperRecurrenceSpeedup)},
      {"median_speedup", JsonValue::Number(r.MedianSpeedup())},
      {"never", JsonValue::Integer(r.Never())},
      {"holds", JsonValue::Bool(r.ClaimHolds())},
      {"verdict", JsonValue::String(RecurrenceVerdict(r))},
      {"pairs", JsonValue::MakeArray(std::move(pairs))},
  });
  return format::SerializeJson(report) + "\n";
}

}  // namespace saetrack::tools
