#include "worker/worker.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "format/confined_path.h"
#include "format/crc32c.h"
#include "proto/channel_security.h"
#include "proto/status_mapping.h"
#include "saetrack/v1/worker.grpc.pb.h"
#include "worker/internal/metrics_http_server.h"

namespace saetrack::worker {
namespace {

// Calls other than the long poll must answer quickly.
constexpr absl::Duration kCallTimeout = absl::Seconds(30);
// schedule.reference_checkpoints of a spec an older coordinator did not fill.
constexpr int kDefaultReferenceCheckpoints = 3;

// `wait_for_ready`: the call waits (within `timeout`) for a coordinator that
// is restarting instead of failing at once while the channel reconnects.
std::unique_ptr<grpc::ClientContext> NewContext(absl::Duration timeout,
                                                bool wait_for_ready = false) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_wait_for_ready(wait_for_ready);
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(timeout));
  return context;
}

std::string DefaultName() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, ":", getpid());
}

// Faults on the way to storing a result that lose nothing and may pass: the
// coordinator unreachable or restarting, a deadline, a corrupted chunk, or
// staged uploads it no longer has (FAILED_PRECONDITION). Not ABORTED (the
// lease went to someone else) nor a refusal of the result itself.
bool IsTransientCommitError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
      return true;
    default:
      return false;
  }
}

constexpr absl::Duration kCommitBackoffMax = absl::Seconds(30);

// Errors that will not go away when another worker retries the task.
bool IsRetryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return false;
    default:
      return true;
  }
}

// With data roots in the task (the coordinator's --data_roots), the files
// the engine will open -- the checkpoint directory with its weights and
// config, the token file -- are resolved now, at the start of the task, and
// must lie under them; `model_dir` and `tokens_path` become the resolved
// paths, so a symlink swapped in at a submitted path later is not followed.
// Errors: kFailedPrecondition naming the path (the task fails for good).
absl::Status ConfineTaskPaths(const v1::Task& task, std::string* model_dir,
                              std::string* tokens_path) {
  if (task.data_roots().empty()) return absl::OkStatus();
  const format::DataRoots roots(
      {task.data_roots().begin(), task.data_roots().end()});
  auto refuse = [](const absl::Status& s) {
    return absl::FailedPreconditionError(
        absl::StrCat("data roots: ", s.message()));
  };
  absl::StatusOr<std::string> dir = roots.Resolve(*model_dir);
  if (!dir.ok()) return refuse(dir.status());
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(*dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".safetensors" &&
        name != "model.safetensors.index.json" && name != "config.json") {
      continue;
    }
    absl::StatusOr<std::string> file = roots.Resolve(entry.path().string());
    if (!file.ok()) return refuse(file.status());
  }
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("data roots: cannot list '", *dir, "': ", ec.message()));
  }
  absl::StatusOr<std::string> tokens = roots.Resolve(*tokens_path);
  if (!tokens.ok()) return refuse(tokens.status());
  *model_dir = *std::move(dir);
  *tokens_path = *std::move(tokens);
  return absl::OkStatus();
}

// Directory of the training state of one task under `options.state_dir`; one
// per (job, layer, step) so that a retry of the same task finds its state.
std::string TaskStateDir(const WorkerOptions& options, const v1::Task& task) {
  if (options.state_dir.empty()) return "";
  const v1::TrainSaeTask& train = task.train();
  const int64_t step =
      train.spec().model().checkpoints(train.checkpoint_index()).step();
  return (std::filesystem::path(options.state_dir) /
          absl::StrCat(task.job_id(), "-L", train.hook().layer(), "-s", step))
      .string();
}

// Trust checks at `count` chain positions out of `chain_length`: the first,
// the last and evenly between.
bool IsReferenceCheckpoint(int chain_index, int chain_length, int count) {
  if (count <= 0 || chain_length <= 0) return false;
  count = std::min(count, chain_length);
  if (count == 1) return chain_index == 0;
  for (int i = 0; i < count; ++i) {
    const int position = static_cast<int>(
        std::lround(static_cast<double>(i) * (chain_length - 1) / (count - 1)));
    if (position == chain_index) return true;
  }
  return false;
}

// Every hook of the job, so that the engine runs the LM once per checkpoint
// for all of them (TrainInput.job_hooks).
std::vector<std::pair<int, std::string>> JobHooks(const v1::JobSpec& spec) {
  std::vector<std::pair<int, std::string>> hooks;
  for (const v1::HookPoint& hook : spec.hooks()) {
    hooks.emplace_back(hook.layer(),
                       hook.site().empty() ? "resid_pre" : hook.site());
  }
  return hooks;
}

engine::TrainInput ToTrainInput(const v1::Task& leased,
                                const WorkerOptions& options) {
  const v1::TrainSaeTask& task = leased.train();
  const v1::JobSpec& spec = task.spec();
  const bool first = task.chain_index() == 0;
  engine::TrainInput in;
  in.model_dir = spec.model().checkpoints(task.checkpoint_index()).path();
  in.architecture = spec.model().architecture();
  in.layer = task.hook().layer();
  in.site = task.hook().site();
  in.job_hooks = JobHooks(spec);
  in.tokens_path = spec.data().tokens_path();
  in.token_dtype = spec.data().token_dtype();
  in.context_length = spec.data().context_length();
  in.sae_architecture = spec.sae().architecture();
  in.d_sae = spec.sae().d_sae();
  in.expansion_factor = spec.sae().expansion_factor();
  in.l1_coefficient = spec.sae().l1_coefficient();
  in.lr = first ? spec.sae().lr_first() : spec.sae().lr_later();
  in.warmup_steps =
      first ? spec.sae().warmup_steps_first() : spec.sae().warmup_steps_later();
  in.batch_size = spec.sae().batch_size();
  in.train_tokens =
      first ? spec.schedule().tokens_first() : spec.schedule().tokens_later();
  in.eval_tokens = spec.schedule().eval_tokens();
  in.seed = spec.sae().seed();
  // The coordinator's validator fills the defaults; the fallbacks below only
  // keep an unvalidated spec (an older coordinator) meaningful.
  const v1::SaeConfig& sae = spec.sae();
  if (sae.k() > 0) in.k = sae.k();
  in.aux_k = sae.aux_k();  // 0: the engine's 2 * k.
  if (sae.aux_coefficient() > 0) in.aux_coefficient = sae.aux_coefficient();
  in.dead_window_tokens = sae.dead_window_tokens();
  // Ghost grads revive features that die while the first SAE trains from
  // scratch; later SAEs start from a trained dictionary and (the paper's
  // recipe) do without them unless ghost_grads_later; topk revives its
  // latents with AuxK instead.
  in.ghost_grads = in.sae_architecture == "relu_l1" &&
                   (first ? (!sae.has_ghost_grads() || sae.ghost_grads())
                          : sae.ghost_grads_later());
  // The adaptive budget only cuts later SAEs short: the first one must reach
  // the FVU that every later SAE starts from.
  in.adaptive_window_tokens =
      first ? 0 : spec.schedule().adaptive_window_tokens();
  if (spec.schedule().adaptive_tolerance() > 0) {
    in.adaptive_tolerance = spec.schedule().adaptive_tolerance();
  }
  if (spec.schedule().has_lm_eval_tokens()) {
    in.lm_eval_tokens = spec.schedule().lm_eval_tokens();
  }
  in.reference_check =
      task.has_reference_check()
          ? task.reference_check()
          : IsReferenceCheckpoint(task.chain_index(),
                                  spec.model().checkpoints_size(),
                                  spec.schedule().has_reference_checkpoints()
                                      ? spec.schedule().reference_checkpoints()
                                      : kDefaultReferenceCheckpoints);
  in.reference_seed = spec.sae().seed() + 1;
  in.reference_lr = spec.sae().lr_first();
  in.reference_warmup_steps = spec.sae().warmup_steps_first();
  in.reference_train_tokens = spec.schedule().tokens_first();
  if (spec.schedule().has_speedup_tolerance()) {
    in.speedup_tolerance = spec.schedule().speedup_tolerance();
  }
  in.state_dir = TaskStateDir(options, leased);
  in.checkpoint_every_tokens = options.checkpoint_every_tokens;
  return in;
}

void SetCurve(const analysis::LossCurve& curve,
              google::protobuf::RepeatedPtrField<v1::LossPoint>* out) {
  for (const auto& [tokens, loss] : curve) {
    v1::LossPoint* point = out->Add();
    point->set_tokens(tokens);
    point->set_loss(loss);
  }
}

void SetSpeedup(const analysis::RecurrenceSpeedup& s,
                v1::RecurrenceSpeedup* out) {
  out->set_tolerance(s.tolerance);
  out->set_scratch_loss(s.scratch_loss);
  out->set_target_loss(s.target_loss);
  out->set_scratch_tokens(s.scratch_tokens);
  out->set_scratch_l0(s.scratch_l0);
  SetCurve(s.scratch_curve, out->mutable_scratch_curve());
  for (const auto& [arm, arm_out] :
       {std::pair{&s.same_lr, out->mutable_same_lr()},
        std::pair{&s.slow_lr, out->mutable_slow_lr()}}) {
    arm_out->set_lr(arm->lr);
    arm_out->set_init_loss(arm->init_loss);
    if (arm->tokens.has_value()) arm_out->set_tokens(*arm->tokens);
    arm_out->set_speedup(s.Speedup(*arm));
    arm_out->set_l0(arm->l0);
    SetCurve(arm->curve, arm_out->mutable_curve());
  }
}

std::string SerializeStats(const engine::FeatureStats& stats) {
  v1::FeatureStatsBlock block;
  block.mutable_frequency()->Add(stats.frequency.begin(),
                                 stats.frequency.end());
  block.mutable_mean_activation()->Add(stats.mean_activation.begin(),
                                       stats.mean_activation.end());
  block.mutable_max_activation()->Add(stats.max_activation.begin(),
                                      stats.max_activation.end());
  block.mutable_decoder_cos_prev()->Add(stats.decoder_cos_prev.begin(),
                                        stats.decoder_cos_prev.end());
  block.mutable_encoder_norm()->Add(stats.encoder_norm.begin(),
                                    stats.encoder_norm.end());
  return block.SerializeAsString();
}

// The analysis pass's output as the block the coordinator stores.
v1::FeatureAnalysisBlock AnalysisBlock(const engine::AnalysisOutput& out) {
  v1::FeatureAnalysisBlock block;
  block.set_analysis_positions(out.analysis_positions);
  block.set_top_k(out.top_k);
  block.mutable_frequency()->Add(out.frequency.begin(), out.frequency.end());
  block.mutable_mean_activation()->Add(out.mean_activation.begin(),
                                       out.mean_activation.end());
  block.mutable_max_activation()->Add(out.max_activation.begin(),
                                      out.max_activation.end());
  for (int64_t p : out.top_positions) block.add_top_positions(p);
  block.mutable_top_values()->Add(out.top_values.begin(), out.top_values.end());
  for (int64_t t : out.top_tokens) block.add_top_tokens(t);
  block.mutable_progress_activation()->Add(out.progress_activation.begin(),
                                           out.progress_activation.end());
  block.mutable_progress_feature()->Add(out.progress_feature.begin(),
                                        out.progress_feature.end());
  block.set_activation_baseline(out.activation_baseline);
  block.set_feature_baseline(out.feature_baseline);
  block.mutable_progress_token_controlled()->Add(
      out.progress_token_controlled.begin(),
      out.progress_token_controlled.end());
  block.set_logit_effects_k(out.logit_effects_k);
  block.mutable_promoted_tokens()->Add(out.promoted_tokens.begin(),
                                       out.promoted_tokens.end());
  block.mutable_promoted_values()->Add(out.promoted_values.begin(),
                                       out.promoted_values.end());
  block.mutable_suppressed_tokens()->Add(out.suppressed_tokens.begin(),
                                         out.suppressed_tokens.end());
  block.mutable_suppressed_values()->Add(out.suppressed_values.begin(),
                                         out.suppressed_values.end());
  return block;
}

// Prometheus metrics of one worker. Thread-safe (prometheus-cpp metrics are).
struct WorkerMetrics {
  explicit WorkerMetrics(prometheus::Registry& registry)
      : tasks(prometheus::BuildCounter()
                  .Name("saetrack_worker_tasks_total")
                  .Help("Tasks finished by this worker, by outcome.")
                  .Register(registry)),
        succeeded(tasks.Add({{"outcome", "succeeded"}})),
        failed(tasks.Add({{"outcome", "failed"}})),
        abandoned(tasks.Add({{"outcome", "abandoned"}})),
        tokens(prometheus::BuildCounter()
                   .Name("saetrack_worker_tokens_trained_total")
                   .Help("SAE training tokens processed by this worker.")
                   .Register(registry)
                   .Add({})),
        tokens_per_second(
            prometheus::BuildGauge()
                .Name("saetrack_worker_tokens_per_second")
                .Help("SAE training throughput of the task in flight.")
                .Register(registry)
                .Add({})),
        loss(prometheus::BuildGauge()
                 .Name("saetrack_worker_sae_loss")
                 .Help("Latest training loss of the SAE in flight.")
                 .Register(registry)
                 .Add({})),
        fvu(prometheus::BuildGauge()
                .Name("saetrack_worker_sae_fvu")
                .Help("Held-out FVU of the last SAE this worker trained.")
                .Register(registry)
                .Add({})),
        l0(prometheus::BuildGauge()
               .Name("saetrack_worker_sae_l0")
               .Help("Held-out L0 of the last SAE this worker trained.")
               .Register(registry)
               .Add({})),
        busy(prometheus::BuildGauge()
                 .Name("saetrack_worker_busy")
                 .Help("1 while a task is in flight.")
                 .Register(registry)
                 .Add({})),
        init_saes(prometheus::BuildCounter()
                      .Name("saetrack_worker_init_saes_total")
                      .Help("Previous SAEs a later SAE started from, by "
                            "source: kept in memory from the worker's own "
                            "last task (chain affinity) or downloaded.")
                      .Register(registry)),
        init_from_memory(init_saes.Add({{"source", "memory"}})),
        init_downloaded(init_saes.Add({{"source", "download"}})),
        shared_activation_sets(
            prometheus::BuildCounter()
                .Name("saetrack_worker_shared_activation_sets_total")
                .Help("Activation sets (held-out, training) a training task "
                      "took from the forward pass of another hook's task of "
                      "the same checkpoint instead of running the LM.")
                .Register(registry)
                .Add({})),
        commit_retries(
            prometheus::BuildCounter()
                .Name("saetrack_worker_commit_retries_total")
                .Help("Times a trained result was sent again after a fault "
                      "on the way to the coordinator (unreachable, restarted, "
                      "deadline, staged upload lost).")
                .Register(registry)
                .Add({})) {}

  prometheus::Family<prometheus::Counter>& tasks;
  prometheus::Counter& succeeded;
  prometheus::Counter& failed;
  prometheus::Counter& abandoned;
  prometheus::Counter& tokens;
  prometheus::Gauge& tokens_per_second;
  prometheus::Gauge& loss;
  prometheus::Gauge& fvu;
  prometheus::Gauge& l0;
  prometheus::Gauge& busy;
  prometheus::Family<prometheus::Counter>& init_saes;
  prometheus::Counter& init_from_memory;
  prometheus::Counter& init_downloaded;
  prometheus::Counter& shared_activation_sets;
  prometheus::Counter& commit_retries;
};

// A restarted coordinator is reconnected to within this long. gRPC's default
// (1 s, growing to 120 s) lets heartbeats fail fast for longer than a short
// lease lasts once one reconnect attempt has hit the restart window.
constexpr int kMaxReconnectBackoffMs = 2000;
constexpr int kMinReconnectBackoffMs = 100;

grpc::ChannelArguments CoordinatorChannelArgs() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, kMinReconnectBackoffMs);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, kMinReconnectBackoffMs);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
  return args;
}

class GrpcWorker final : public Worker {
 public:
  GrpcWorker(const WorkerOptions& options,
             std::shared_ptr<grpc::Channel> channel,
             std::unique_ptr<engine::SaeTrainingEngine> engine,
             std::shared_ptr<prometheus::Registry> registry,
             std::unique_ptr<MetricsHttpServer> metrics_server)
      : options_(options),
        engine_(std::move(engine)),
        stub_(v1::WorkerService::NewStub(std::move(channel))),
        registry_(std::move(registry)),
        metrics_(*registry_),
        metrics_server_(std::move(metrics_server)) {
    if (options_.name.empty()) options_.name = DefaultName();
  }

  ~GrpcWorker() override { Stop(); }

  absl::Status Run() override {
    int done = 0;
    bool ran_since_idle = false;
    while (!stopped_.load()) {
      if (worker_id_.empty()) {
        absl::Status registered = Register();
        if (!registered.ok()) {
          Log(absl::StrCat("register: ", registered.ToString(), "; retrying"));
          Backoff();
          continue;
        }
      }
      absl::StatusOr<std::optional<v1::Task>> task = Lease();
      if (!task.ok()) {
        if (task.status().code() == absl::StatusCode::kNotFound) {
          worker_id_.clear();  // The coordinator forgot us (restart).
        } else if (!stopped_.load()) {
          Log(absl::StrCat("lease: ", task.status().ToString(), "; retrying"));
        }
        Backoff();
        continue;
      }
      if (!task->has_value()) {
        if (ran_since_idle && options_.when_idle) options_.when_idle();
        ran_since_idle = false;
        continue;
      }
      RunTask(**task);
      ran_since_idle = true;
      if (options_.max_tasks > 0 && ++done >= options_.max_tasks) break;
    }
    return absl::OkStatus();
  }

  void Stop() override {
    stopped_.store(true);
    absl::MutexLock lock(&mu_);
    if (lease_context_ != nullptr) lease_context_->TryCancel();
    stop_cv_.SignalAll();
  }

  int metrics_port() const override {
    return metrics_server_ ? metrics_server_->port() : 0;
  }

 private:
  void Log(const std::string& line) const {
    std::cerr << "saetrack-worker: " << line << std::endl;
  }

  void Backoff() {
    absl::MutexLock lock(&mu_);
    if (!stopped_.load())
      stop_cv_.WaitWithTimeout(&mu_, options_.retry_backoff);
  }

  absl::Status Register() {
    v1::RegisterWorkerRequest request;
    request.set_name(options_.name);
    request.mutable_capabilities()->set_device(options_.device);
    request.mutable_capabilities()->set_threads(options_.threads);
    int64_t memory = options_.memory_bytes;
    if (memory == 0 && options_.device == "cpu") {
      const long pages = sysconf(_SC_PHYS_PAGES);
      const long page_size = sysconf(_SC_PAGESIZE);
      if (pages > 0 && page_size > 0) {
        memory = static_cast<int64_t>(pages) * page_size;
      }
    }
    request.mutable_capabilities()->set_memory_bytes(memory);
    v1::RegisterWorkerResponse response;
    auto context = NewContext(kCallTimeout);
    grpc::Status status =
        stub_->RegisterWorker(context.get(), request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    worker_id_ = response.worker_id();
    heartbeat_interval_ = absl::Milliseconds(
        std::max<int64_t>(100, response.heartbeat_interval_ms()));
    Log(absl::StrCat("registered with ", options_.coordinator, " as ",
                     worker_id_));
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<v1::Task>> Lease() {
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker_id_);
    request.set_wait_ms(absl::ToInt64Milliseconds(options_.lease_wait));
    v1::LeaseTaskResponse response;
    auto context = NewContext(options_.lease_wait + kCallTimeout);
    {
      absl::MutexLock lock(&mu_);
      if (stopped_.load()) return std::optional<v1::Task>();
      lease_context_ = context.get();
    }
    grpc::Status status = stub_->LeaseTask(context.get(), request, &response);
    {
      absl::MutexLock lock(&mu_);
      lease_context_ = nullptr;
    }
    if (!status.ok()) return FromGrpcStatus(status);
    if (!response.has_task()) return std::optional<v1::Task>();
    return std::optional<v1::Task>(response.task());
  }

  absl::StatusOr<std::string> DownloadSae(
      const v1::SaeRef& ref,
      v1::ArtifactKind kind = v1::ARTIFACT_KIND_SAE_WEIGHTS) {
    v1::DownloadSaeRequest request;
    *request.mutable_sae() = ref;
    request.set_kind(kind);
    auto context = NewContext(kCallTimeout);
    auto reader = stub_->DownloadSae(context.get(), request);
    std::string bytes;
    v1::DownloadChunk chunk;
    bool last = false;
    uint32_t crc = 0;
    int64_t total = -1;
    while (reader->Read(&chunk)) {
      if (chunk.offset() != static_cast<int64_t>(bytes.size())) {
        return absl::DataLossError(
            absl::StrCat("SAE download: chunk at offset ", chunk.offset(),
                         ", expected ", bytes.size()));
      }
      bytes += chunk.data();
      if (chunk.last()) {
        last = true;
        crc = chunk.crc32c();
        total = chunk.total_size();
      }
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) return FromGrpcStatus(status);
    if (!last || total != static_cast<int64_t>(bytes.size()) ||
        format::Crc32c(bytes) != crc) {
      return absl::DataLossError(absl::StrFormat(
          "SAE download of %s layer %d step %d: size or checksum mismatch "
          "(%d of %d bytes)",
          ref.job_id(), ref.layer(), ref.step(), bytes.size(), total));
    }
    return bytes;
  }

  absl::Status Upload(const v1::Task& task, v1::ArtifactKind kind,
                      const std::string& bytes) {
    v1::UploadArtifactResponse response;
    // A large artifact on a slow link takes its time; the heartbeat keeps
    // the lease meanwhile.
    auto context =
        NewContext(kCallTimeout +
                   absl::Seconds(static_cast<double>(bytes.size()) /
                                 std::max<int64_t>(
                                     1, options_.min_upload_bytes_per_second)));
    auto writer = stub_->UploadArtifact(context.get(), &response);
    const int64_t total = static_cast<int64_t>(bytes.size());
    int64_t offset = 0;
    do {
      const int64_t n = std::min<int64_t>(options_.chunk_bytes, total - offset);
      v1::ArtifactChunk chunk;
      chunk.set_worker_id(worker_id_);
      chunk.set_task_id(task.task_id());
      chunk.set_lease_epoch(task.lease_epoch());
      chunk.set_kind(kind);
      chunk.set_offset(offset);
      chunk.set_data(bytes.substr(offset, n));
      offset += n;
      if (offset == total) {
        chunk.set_last(true);
        chunk.set_total_size(total);
        chunk.set_crc32c(format::Crc32c(bytes));
      }
      if (!writer->Write(chunk))
        break;  // The server ended the call; see Finish.
    } while (offset < total);
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  }

  // What a task's body and its heartbeat share while the lease is held.
  struct TaskLease {
    std::atomic<int64_t> tokens{0};  // Progress reported in each beat.
    std::atomic<double> loss{0};
    // The coordinator refused the lease or cancelled the job.
    std::atomic<bool> lost{false};
    // A CompleteTask is in flight: it ends the lease itself.
    std::atomic<bool> completing{false};
  };

  // Uploads `artifacts` and completes the task with `complete`, while the
  // caller's heartbeat keeps the lease. Faults that lose nothing
  // (IsTransientCommitError) are retried with capped exponential back-off,
  // every artifact sent again (the coordinator may have lost what it had
  // staged), until the result is stored, the lease is lost, the worker
  // stops, or options_.commit_timeout passes.
  absl::Status Commit(
      const v1::Task& task, const std::string& what,
      const std::vector<std::pair<v1::ArtifactKind, const std::string*>>&
          artifacts,
      const std::function<absl::Status()>& complete, TaskLease& lease) {
    const absl::Time give_up = absl::Now() + options_.commit_timeout;
    absl::Duration backoff = options_.retry_backoff;
    // Staged uploads survive a coordinator restart (they are on its disk):
    // after a failed CompleteTask they are sent again only when the
    // coordinator says they are gone (FAILED_PRECONDITION).
    bool staged = false;
    for (int attempt = 1;; ++attempt) {
      absl::Status status;
      if (!staged) {
        for (const auto& [kind, bytes] : artifacts) {
          status = Upload(task, kind, *bytes);
          if (!status.ok()) break;
        }
        staged = status.ok();
      }
      if (staged) {
        // From here a refused heartbeat is the completion's race, not a
        // lost lease: CompleteTask's own answer says whether it was stored.
        // A stored result ends the lease, so the flag stays set after it:
        // a beat sent before may still come back refused.
        lease.completing.store(true);
        status = complete();
        if (!status.ok()) lease.completing.store(false);
        if (absl::IsFailedPrecondition(status)) staged = false;
      }
      if (status.ok() || !IsTransientCommitError(status) || lease.lost.load() ||
          stopped_.load() || absl::Now() + backoff > give_up) {
        return status;
      }
      metrics_.commit_retries.Increment();
      Log(absl::StrCat(what, ": storing the result failed (attempt ", attempt,
                       "): ", status.ToString(), "; sending it again in ",
                       absl::FormatDuration(backoff)));
      {
        absl::MutexLock lock(&mu_);
        if (!stopped_.load()) stop_cv_.WaitWithTimeout(&mu_, backoff);
      }
      backoff = std::min(backoff * 2, kCommitBackoffMax);
    }
  }

  // Heartbeats the lease of `task` until `done`; sets `lease.lost` when the
  // coordinator refuses the lease or asks to cancel.
  void HeartbeatLoop(const v1::Task& task, TaskLease& lease, const bool& done) {
    absl::MutexLock lock(&mu_);
    while (!done && !stopped_.load()) {
      stop_cv_.WaitWithTimeout(&mu_, heartbeat_interval_);
      if (done || stopped_.load()) break;
      mu_.Unlock();
      v1::HeartbeatRequest request;
      request.set_worker_id(worker_id_);
      request.set_task_id(task.task_id());
      request.set_lease_epoch(task.lease_epoch());
      request.set_tokens_done(lease.tokens.load());
      request.set_loss(lease.loss.load());
      v1::HeartbeatResponse response;
      auto context = NewContext(heartbeat_interval_ * 2);
      grpc::Status status = stub_->Heartbeat(context.get(), request, &response);
      mu_.Lock();
      if (!status.ok() && status.error_code() == grpc::StatusCode::ABORTED &&
          lease.completing.load()) {
        // The beat crossed CompleteTask, which ends the lease when it
        // stores the result; whether it did is CompleteTask's to say.
        break;
      }
      if ((!status.ok() && status.error_code() == grpc::StatusCode::ABORTED) ||
          (status.ok() && response.cancel())) {
        // cancel: the job was cancelled (or failed); the task is abandoned
        // and its results, refused by the coordinator, are not uploaded.
        Log(absl::StrCat("task ", task.task_id(), ": ",
                         status.ok()
                             ? "job cancelled by the coordinator"
                             : "lease lost: " + status.error_message()));
        lease.lost.store(true);
        break;
      }
      // Other errors (coordinator restarting) are retried on the next beat;
      // the lease outlives several missed beats.
    }
  }

  // Runs `body` with the lease of `task` heartbeated; returns false (after
  // handing a stopped task back) when the task was abandoned.
  // `committed` is the body's result of storing the task's result.
  bool WithHeartbeat(const v1::Task& task, const std::string& what,
                     const absl::Status* committed,
                     const std::function<void(TaskLease&)>& body) {
    metrics_.busy.Set(1);
    TaskLease lease;
    bool done = false;  // Guarded by mu_.
    std::thread heartbeat([&] { HeartbeatLoop(task, lease, done); });
    body(lease);
    const bool lost = lease.lost.load();
    {
      absl::MutexLock lock(&mu_);
      done = true;
      stop_cv_.SignalAll();
    }
    heartbeat.join();
    metrics_.busy.Set(0);
    // A stored result is kept whatever happened after it.
    if (committed->ok() || (!lost && !stopped_.load())) return true;
    Log(absl::StrCat(what, ": abandoned (",
                     lost ? "lease lost or job cancelled" : "stopping", ")"));
    metrics_.abandoned.Increment();
    // Hand a stopped task back at once instead of letting its lease run
    // out (both count as an attempt; this way no one waits for the TTL).
    if (!lost) {
      ReportFailure(task, absl::UnavailableError("worker stopping"),
                    /*retryable=*/true);
    }
    return false;
  }

  // The analysis pass of one checkpoint: its SAE (kept from training or
  // downloaded), the final checkpoint's reference positions (downloaded,
  // except on the final pass itself), the engine, one FEATURE_ANALYSIS
  // upload.
  void RunAnalysis(const v1::Task& task) {
    const v1::AnalyseSaeTask& analyse = task.analyse();
    const v1::JobSpec& spec = analyse.spec();
    const int64_t step = analyse.sae().step();
    const bool final_pass = analyse.final_sae().step() == step;
    const std::string what =
        absl::StrFormat("task %s (%s layer %d step %d, analysis%s)",
                        task.task_id(), task.job_id(), analyse.hook().layer(),
                        step, final_pass ? " of the final checkpoint" : "");
    engine::AnalysisInput input;
    input.model_dir =
        spec.model().checkpoints(analyse.checkpoint_index()).path();
    input.architecture = spec.model().architecture();
    input.layer = analyse.hook().layer();
    input.site = analyse.hook().site();
    input.job_hooks = JobHooks(spec);
    input.tokens_path = spec.data().tokens_path();
    input.token_dtype = spec.data().token_dtype();
    input.context_length = spec.data().context_length();
    input.analysis_tokens = spec.analysis().analysis_tokens();
    input.sae_architecture = spec.sae().architecture();
    if (spec.sae().k() > 0) input.k = spec.sae().k();
    input.top_k = spec.analysis().top_k();
    input.random_positions = spec.analysis().random_positions();
    input.logit_effects_k = spec.analysis().logit_effects_k();
    input.seed = spec.sae().seed();
    Log(absl::StrCat(what, ": on ", input.analysis_tokens, " tokens"));

    absl::StatusOr<engine::AnalysisOutput> output =
        absl::InternalError("analysis did not run");
    absl::Status stored = absl::InternalError("result not sent");
    const bool kept =
        WithHeartbeat(task, what, &stored, [&](TaskLease& lease) {
          if (last_sae_.has_value() && last_sae_->job_id == task.job_id() &&
              last_sae_->layer == input.layer && last_sae_->step == step) {
            input.sae_safetensors = last_sae_->safetensors;
          } else {
            absl::StatusOr<std::string> sae = DownloadSae(analyse.sae());
            if (!sae.ok()) {
              output = sae.status();
              return;
            }
            input.sae_safetensors = *std::move(sae);
          }
          if (!final_pass) {
            absl::StatusOr<std::string> bytes = DownloadSae(
                analyse.final_sae(), v1::ARTIFACT_KIND_FEATURE_ANALYSIS);
            if (!bytes.ok()) {
              output = bytes.status();
              return;
            }
            v1::FeatureAnalysisBlock reference;
            if (!reference.ParseFromString(*bytes)) {
              output = absl::DataLossError(
                  "the final checkpoint's analysis block does not parse");
              return;
            }
            input.reference_positions.assign(reference.top_positions().begin(),
                                             reference.top_positions().end());
          }
          if (absl::Status s =
                  ConfineTaskPaths(task, &input.model_dir, &input.tokens_path);
              !s.ok()) {
            output = s;
            return;
          }
          output = engine_->Analyse(input);
          if (!output.ok() || lease.lost.load()) return;
          const std::string bytes = AnalysisBlock(*output).SerializeAsString();
          stored = Commit(
              task, what, {{v1::ARTIFACT_KIND_FEATURE_ANALYSIS, &bytes}},
              [&] {
                v1::CompleteTaskRequest request;
                request.set_worker_id(worker_id_);
                request.set_task_id(task.task_id());
                request.set_lease_epoch(task.lease_epoch());
                v1::CompleteTaskResponse response;
                auto context =
                    NewContext(kCallTimeout, /*wait_for_ready=*/true);
                return FromGrpcStatus(
                    stub_->CompleteTask(context.get(), request, &response));
              },
              lease);
        });
    if (!kept) return;
    if (!output.ok()) {
      Log(absl::StrCat(what, ": failed: ", output.status().ToString()));
      Fail(task, output.status());
      return;
    }
    if (!stored.ok()) {
      Log(absl::StrCat(what, ": result not stored: ", stored.ToString()));
      metrics_.abandoned.Increment();
      return;
    }
    metrics_.succeeded.Increment();
    Log(absl::StrCat(what, ": done"));
  }

  void RunTask(const v1::Task& task) {
    if (task.has_analyse()) {
      RunAnalysis(task);
      return;
    }
    const v1::TrainSaeTask& train = task.train();
    const int64_t step =
        train.spec().model().checkpoints(train.checkpoint_index()).step();
    const std::string what = absl::StrFormat(
        "task %s (%s layer %d step %d, chain %d)", task.task_id(),
        task.job_id(), train.hook().layer(), step, train.chain_index());
    engine::TrainInput input = ToTrainInput(task, options_);
    Log(absl::StrCat(what, ": training on ", input.train_tokens, " tokens",
                     train.has_init_from()
                         ? ", initialised from step " +
                               std::to_string(train.init_from().step())
                         : ", from scratch"));
    // A StatusOr cannot hold an OK status without a value.
    absl::StatusOr<engine::TrainOutput> output =
        absl::InternalError("training did not run");
    absl::Status stored = absl::InternalError("result not sent");
    const bool kept =
        WithHeartbeat(task, what, &stored, [&](TaskLease& lease) {
          if (train.has_init_from()) {
            const v1::SaeRef& ref = train.init_from();
            if (last_sae_.has_value() && last_sae_->job_id == ref.job_id() &&
                last_sae_->layer == ref.layer() &&
                last_sae_->step == ref.step()) {
              // Chain affinity: this worker trained the previous SAE itself.
              input.init_sae_safetensors = last_sae_->safetensors;
              metrics_.init_from_memory.Increment();
            } else {
              absl::StatusOr<std::string> init = DownloadSae(ref);
              if (!init.ok()) {
                output = init.status();
                return;
              }
              input.init_sae_safetensors = *std::move(init);
              metrics_.init_downloaded.Increment();
            }
          }
          if (absl::Status s =
                  ConfineTaskPaths(task, &input.model_dir, &input.tokens_path);
              !s.ok()) {
            output = s;
            return;
          }
          const absl::Time start = absl::Now();
          int64_t counted = 0;
          output = engine_->Train(input, [&](int64_t tokens_done, double l) {
            lease.tokens.store(tokens_done);
            lease.loss.store(l);
            metrics_.tokens.Increment(
                static_cast<double>(tokens_done - counted));
            counted = tokens_done;
            metrics_.loss.Set(l);
            const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
            if (seconds > 0)
              metrics_.tokens_per_second.Set(tokens_done / seconds);
            return !lease.lost.load() && !stopped_.load();
          });
          if (!output.ok() || lease.lost.load()) return;
          // Stored under the same heartbeat: the lease lives until the
          // result is committed, however long the upload takes.
          const std::string stats = SerializeStats(output->features);
          stored = Commit(
              task, what,
              {{v1::ARTIFACT_KIND_SAE_WEIGHTS, &output->sae_safetensors},
               {v1::ARTIFACT_KIND_FEATURE_STATS, &stats}},
              [&] {
                if (options_.before_complete_for_testing) {
                  options_.before_complete_for_testing();
                }
                absl::Status completed = Complete(task, input, *output);
                if (completed.ok() && options_.after_complete_for_testing) {
                  options_.after_complete_for_testing();
                }
                return completed;
              },
              lease);
        });
    if (!kept) return;
    if (!output.ok()) {
      Log(absl::StrCat(what, ": failed: ", output.status().ToString()));
      Fail(task, output.status());
      return;
    }
    metrics_.fvu.Set(output->fvu);
    metrics_.l0.Set(output->l0);
    if (!stored.ok()) {
      // ABORTED: our lease went stale and the task is someone else's now.
      Log(absl::StrCat(what, ": result not stored: ", stored.ToString()));
      metrics_.abandoned.Increment();
      return;
    }
    last_sae_ = KeptSae{task.job_id(), train.hook().layer(), step,
                        std::move(output->sae_safetensors)};
    // The result is stored, so the task never runs again: its saved state
    // would only fill the disk. (After a failure or a lost lease it stays, for
    // the retry.)
    if (!input.state_dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(input.state_dir, ec);
      if (ec) {
        Log(absl::StrCat(what, ": cannot delete training state ",
                         input.state_dir, ": ", ec.message()));
      }
    }
    metrics_.succeeded.Increment();
    metrics_.shared_activation_sets.Increment(output->shared_activation_sets);
    Log(absl::StrFormat(
        "%s: done in %.1f s: FVU %.4f (init %.4f), L0 %.1f, "
        "dead %.1f%%, %.1f epochs of %d tokens, cos to init %.3f, %s%s",
        what, output->wall_time_s, output->fvu, output->init_fvu, output->l0,
        100 * output->dead_fraction, output->epochs, output->distinct_tokens,
        output->median_decoder_cos_init,
        output->converged ? "converged" : "NOT converged",
        output->shared_activation_sets > 0
            ? "; activations from another hook's forward pass"
            : ""));
  }

  absl::Status Complete(const v1::Task& task, const engine::TrainInput& in,
                        const engine::TrainOutput& out) {
    v1::CompleteTaskRequest request;
    request.set_worker_id(worker_id_);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(task.lease_epoch());
    v1::CheckpointMetrics* m = request.mutable_metrics();
    m->set_tokens_trained(out.tokens_trained);
    m->set_wall_time_s(out.wall_time_s);
    m->set_mse(out.mse);
    m->set_fvu(out.fvu);
    m->set_l0(out.l0);
    m->set_dead_fraction(out.dead_fraction);
    m->set_init_fvu(out.init_fvu);
    m->set_d_in(out.d_in);
    m->set_d_sae(out.d_sae);
    m->mutable_density_histogram()->Add(out.density_histogram.begin(),
                                        out.density_histogram.end());
    if (out.lm.has_value()) {
      v1::LmEvaluation* lm = m->mutable_lm();
      lm->set_ce_clean(out.lm->ce_clean);
      lm->set_ce_spliced(out.lm->ce_spliced);
      lm->set_ce_zero_ablated(out.lm->ce_zero_ablated);
      lm->set_loss_recovered(out.lm->loss_recovered);
      lm->set_kl_divergence(out.lm->kl_divergence);
      lm->set_tokens(out.lm->tokens);
    }
    m->set_stopped_early(out.stopped_early);
    m->set_resumed_from_tokens(out.resumed_from_tokens);
    m->set_activation_scale(out.activation_scale);
    m->set_distinct_tokens(out.distinct_tokens);
    m->set_epochs(out.epochs);
    m->set_converged(out.converged);
    m->set_held_out_loss(out.held_out_loss);
    m->set_median_decoder_cos_init(out.median_decoder_cos_init);
    if (out.reference.has_value()) {
      const engine::ReferenceCheck& r = *out.reference;
      v1::ReferenceCheck* check = m->mutable_reference();
      check->set_seed(r.seed);
      check->set_tokens_trained(r.tokens_trained);
      check->set_held_out_loss(r.held_out_loss);
      check->set_fvu(r.fvu);
      check->set_l0(r.l0);
      check->set_dead_fraction(r.dead_fraction);
      check->set_median_decoder_cos_init(r.median_decoder_cos_init);
      check->set_converged(r.converged);
      if (r.loss_recovered.has_value()) {
        check->set_loss_recovered(*r.loss_recovered);
      }
      check->set_matched(r.matched);
      check->set_match_method(r.match_method);
      check->set_match_median_cosine(r.match_median_cosine);
      check->set_match_fraction_above_0_9(r.match_fraction_above_0_9);
      check->set_match_fraction_above_0_7(r.match_fraction_above_0_7);
      check->set_random_median_cosine(r.random_median_cosine);
      check->set_random_fraction_above_0_9(r.random_fraction_above_0_9);
      if (r.speedup.has_value())
        SetSpeedup(*r.speedup, check->mutable_speedup());
    }
    m->set_sae_architecture(in.sae_architecture);
    if (in.sae_architecture == "topk") m->set_k(in.k);
    v1::CompleteTaskResponse response;
    auto context = NewContext(kCallTimeout, /*wait_for_ready=*/true);
    return FromGrpcStatus(
        stub_->CompleteTask(context.get(), request, &response));
  }

  void Fail(const v1::Task& task, const absl::Status& error) {
    metrics_.failed.Increment();
    ReportFailure(task, error, IsRetryable(error));
  }

  void ReportFailure(const v1::Task& task, const absl::Status& error,
                     bool retryable) {
    v1::FailTaskRequest request;
    request.set_worker_id(worker_id_);
    request.set_task_id(task.task_id());
    request.set_lease_epoch(task.lease_epoch());
    request.set_error(error.ToString());
    request.set_retryable(retryable);
    v1::FailTaskResponse response;
    auto context = NewContext(kCallTimeout);
    grpc::Status status = stub_->FailTask(context.get(), request, &response);
    if (!status.ok()) {
      Log(absl::StrCat("FailTask: ", FromGrpcStatus(status).ToString()));
    }
  }

  WorkerOptions options_;
  std::unique_ptr<engine::SaeTrainingEngine> engine_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::shared_ptr<prometheus::Registry> registry_;
  WorkerMetrics metrics_;
  std::unique_ptr<MetricsHttpServer> metrics_server_;

  // Only touched by the thread in Run().
  std::string worker_id_;
  absl::Duration heartbeat_interval_ = absl::Seconds(1);

  // The SAE this worker stored last: the coordinator prefers to give the
  // next task of its chain to this worker, which then skips the download.
  // Used by the task loop only.
  struct KeptSae {
    std::string job_id;
    int layer = 0;
    int64_t step = 0;
    std::string safetensors;
  };
  std::optional<KeptSae> last_sae_;
  std::atomic<bool> stopped_{false};
  absl::Mutex mu_;
  absl::CondVar stop_cv_;
  grpc::ClientContext* lease_context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(
    const WorkerOptions& options,
    std::unique_ptr<engine::SaeTrainingEngine> engine) {
  if (options.coordinator.empty()) {
    return absl::InvalidArgumentError("coordinator address is empty");
  }
  if (options.checkpoint_every_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint_every_tokens: ", options.checkpoint_every_tokens,
        " must be >= 0"));
  }
  if (!options.state_dir.empty()) {
    // Fail at start-up rather than in the middle of the first task.
    std::error_code ec;
    std::filesystem::create_directories(options.state_dir, ec);
    if (ec || !std::filesystem::is_directory(options.state_dir)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "state_dir: cannot create directory '", options.state_dir,
          "': ", ec ? ec.message() : "a file of that name exists"));
    }
  }
  // TLS and token files are read once, here: a typo fails the start.
  const grpc::ChannelArguments args = CoordinatorChannelArgs();
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      NewSecureChannel(options.coordinator, options.security, &args);
  if (!channel.ok()) return channel.status();
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<MetricsHttpServer> metrics_server;
  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        MetricsHttpServer::Start(options.metrics_listen, registry);
    if (!started.ok()) return started.status();
    metrics_server = *std::move(started);
  }
  return std::unique_ptr<Worker>(
      new GrpcWorker(options, *std::move(channel), std::move(engine),
                     std::move(registry), std::move(metrics_server)));
}

}  // namespace saetrack::worker
