#include "server/internal/worker_service.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "format/crc32c.h"
#include "server/internal/chunked_writer.h"
#include "server/internal/upload_checks.h"

namespace saetrack::server {
namespace {

// Median of the finite values of `v`; nullopt when there are none.
std::optional<double> FiniteMedian(
    const google::protobuf::RepeatedField<float>& v) {
  std::vector<float> values;
  values.reserve(v.size());
  for (float x : v) {
    if (std::isfinite(x)) values.push_back(x);
  }
  if (values.empty()) return std::nullopt;
  const size_t mid = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + mid, values.end());
  double median = values[mid];
  if (values.size() % 2 == 0) {
    const float lower = *std::max_element(values.begin(), values.begin() + mid);
    median = (median + lower) / 2;
  }
  return median;
}

// The lease fields the upload checks need.
UploadLease ToUploadLease(const LeaseInfo& lease) {
  UploadLease out;
  out.layer = lease.layer;
  out.step = lease.step;
  out.chain_index = lease.chain_index;
  out.d_sae = lease.d_sae;
  out.top_k = lease.top_k;
  return out;
}

// The JSON header of staged safetensors `weights` (at most 1 MiB: the four
// tensors' header is a few hundred bytes).
absl::StatusOr<std::string> SafetensorsHeader(
    const ArtifactStaging::Artifact& weights) {
  constexpr int64_t kMaxHeaderBytes = int64_t{1} << 20;
  std::string prefix;
  if (weights.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SAE_WEIGHTS: ", weights.size(), " bytes, not a safetensors file"));
  }
  if (absl::Status s = weights.ReadAt(0, 8, &prefix); !s.ok()) return s;
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) {
    length = (length << 8) | static_cast<unsigned char>(prefix[i]);
  }
  if (length > static_cast<uint64_t>(kMaxHeaderBytes) ||
      static_cast<int64_t>(length) > weights.size() - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("SAE_WEIGHTS: header length ", length,
                     " exceeds the file or the 1 MiB limit"));
  }
  std::string header;
  if (absl::Status s = weights.ReadAt(8, static_cast<int64_t>(length), &header);
      !s.ok()) {
    return s;
  }
  return header;
}

}  // namespace

grpc::Status WorkerServiceImpl::RegisterWorker(
    grpc::ServerContext* context, const v1::RegisterWorkerRequest* request,
    v1::RegisterWorkerResponse* response) {
  RpcTimer timer(metrics_, "RegisterWorker");
  return timer.Finish(
      DoRegisterWorker(CallerOf(authenticator_, *context), *request, response));
}

grpc::Status WorkerServiceImpl::LeaseTask(grpc::ServerContext* context,
                                          const v1::LeaseTaskRequest* request,
                                          v1::LeaseTaskResponse* response) {
  RpcTimer timer(metrics_, "LeaseTask");
  return timer.Finish(DoLeaseTask(CallerOf(authenticator_, *context), context,
                                  *request, response));
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* context,
                                          const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  RpcTimer timer(metrics_, "Heartbeat");
  return timer.Finish(
      DoHeartbeat(CallerOf(authenticator_, *context), *request, response));
}

grpc::Status WorkerServiceImpl::UploadArtifact(
    grpc::ServerContext* context, grpc::ServerReader<v1::ArtifactChunk>* reader,
    v1::UploadArtifactResponse* response) {
  RpcTimer timer(metrics_, "UploadArtifact");
  return timer.Finish(
      DoUploadArtifact(CallerOf(authenticator_, *context), reader, response));
}

grpc::Status WorkerServiceImpl::DownloadSae(
    grpc::ServerContext* /*context*/, const v1::DownloadSaeRequest* request,
    grpc::ServerWriter<v1::DownloadChunk>* writer) {
  RpcTimer timer(metrics_, "DownloadSae");
  return timer.Finish(DoDownloadSae(*request, writer));
}

grpc::Status WorkerServiceImpl::CompleteTask(
    grpc::ServerContext* context, const v1::CompleteTaskRequest* request,
    v1::CompleteTaskResponse* /*response*/) {
  RpcTimer timer(metrics_, "CompleteTask");
  return timer.Finish(
      DoCompleteTask(CallerOf(authenticator_, *context), *request));
}

grpc::Status WorkerServiceImpl::FailTask(grpc::ServerContext* context,
                                         const v1::FailTaskRequest* request,
                                         v1::FailTaskResponse* /*response*/) {
  RpcTimer timer(metrics_, "FailTask");
  return timer.Finish(DoFailTask(CallerOf(authenticator_, *context), *request));
}

absl::Status WorkerServiceImpl::DoRegisterWorker(
    const Caller& caller, const v1::RegisterWorkerRequest& request,
    v1::RegisterWorkerResponse* response) {
  const std::string& device = request.capabilities().device();
  if (!device.empty() && device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("capabilities.device: '", device,
                     "' is not supported (supported: cpu, cuda)"));
  }
  if (request.capabilities().memory_bytes() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "capabilities.memory_bytes: ", request.capabilities().memory_bytes(),
        " must be >= 0"));
  }
  absl::StatusOr<std::string> id = scheduler_->RegisterWorker(
      device, request.capabilities().memory_bytes(), caller.name);
  if (!id.ok()) return id.status();
  response->set_worker_id(*id);
  metrics_->WorkerSeen(*id);
  response->set_heartbeat_interval_ms(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.lease_ttl) / 3));
  return absl::OkStatus();
}

absl::Status WorkerServiceImpl::DoLeaseTask(const Caller& caller,
                                            grpc::ServerContext* context,
                                            const v1::LeaseTaskRequest& request,
                                            v1::LeaseTaskResponse* response) {
  if (request.worker_id().empty()) {
    return absl::InvalidArgumentError("worker_id: required");
  }
  if (!ActsFor(caller, request.worker_id())) {
    return absl::PermissionDeniedError(
        absl::StrCat("worker_id: ", request.worker_id(),
                     " was not registered with this caller's token"));
  }
  metrics_->WorkerSeen(request.worker_id());
  const absl::Duration wait =
      std::clamp(absl::Milliseconds(request.wait_ms()), absl::ZeroDuration(),
                 options_.max_lease_wait);
  // Uploads of leases that have ended since are freed here too, so that a
  // coordinator whose workers stopped uploading does not keep them.
  DropStaleUploads();
  absl::StatusOr<std::optional<v1::Task>> task = scheduler_->Lease(
      request.worker_id(), wait, [context] { return context->IsCancelled(); });
  metrics_->WorkerSeen(request.worker_id());  // After the long poll too.
  if (!task.ok()) return task.status();
  if (task->has_value()) {
    // Uploads of an earlier lease of this task can never be completed.
    staging_->DropTask((*task)->task_id());
    *response->mutable_task() = **std::move(task);
    for (const std::string& root : options_.data_roots) {
      response->mutable_task()->add_data_roots(root);
    }
  }
  return absl::OkStatus();
}

bool WorkerServiceImpl::ActsFor(const Caller& caller,
                                const std::string& worker_id) const {
  if (!caller.authenticated || caller.role == Role::kAdmin) return true;
  const std::optional<std::string> owner = scheduler_->WorkerOwner(worker_id);
  return owner.has_value() && *owner == caller.name;
}

absl::StatusOr<LeaseInfo> WorkerServiceImpl::CheckLeaseHolder(
    const Caller& caller, const std::string& worker_id,
    const std::string& task_id, int64_t epoch) {
  if (worker_id.empty())
    return absl::InvalidArgumentError("worker_id: required");
  if (task_id.empty()) return absl::InvalidArgumentError("task_id: required");
  absl::StatusOr<LeaseInfo> lease = scheduler_->CheckLease(task_id, epoch);
  if (!lease.ok()) return lease.status();
  // The epoch fences the rest of the call: a later lease of the task has
  // another epoch, so the holder checked here is the one that counts.
  if (lease->worker_id != worker_id || !ActsFor(caller, worker_id)) {
    // The same code as a stale epoch; neither the current epoch nor the
    // holder is named.
    return absl::AbortedError(
        absl::StrCat("task ", task_id, " lease epoch ", epoch,
                     ": not a live lease of worker ", worker_id));
  }
  return lease;
}

absl::Status WorkerServiceImpl::DoHeartbeat(const Caller& caller,
                                            const v1::HeartbeatRequest& request,
                                            v1::HeartbeatResponse* response) {
  absl::StatusOr<LeaseInfo> lease = CheckLeaseHolder(
      caller, request.worker_id(), request.task_id(), request.lease_epoch());
  // A lease that is no longer live is not renewed by the scheduler either,
  // but the heartbeat of a cancelled task still tells its worker to stop;
  // only a live lease of another worker is refused here.
  if (!lease.ok() &&
      (!absl::IsAborted(lease.status()) ||
       scheduler_->CheckLease(request.task_id(), request.lease_epoch()).ok())) {
    return lease.status();
  }
  metrics_->WorkerSeen(request.worker_id());
  absl::StatusOr<bool> cancel = scheduler_->Heartbeat(
      request.task_id(), request.lease_epoch(), request.tokens_done(),
      request.tokens_done() > 0 ? std::optional<double>(request.loss())
                                : std::nullopt);
  if (!cancel.ok()) return cancel.status();
  metrics_->TaskProgress(request.task_id(), request.lease_epoch(),
                         request.tokens_done());
  response->set_cancel(*cancel);
  response->set_lease_ttl_ms(absl::ToInt64Milliseconds(options_.lease_ttl));
  return absl::OkStatus();
}

WorkerServiceImpl::CompletionGuard::CompletionGuard(WorkerServiceImpl* service,
                                                    std::string task_id)
    : service_(service), task_id_(std::move(task_id)) {
  absl::MutexLock lock(&service_->completing_mu_);
  ok_ = service_->completing_.insert(task_id_).second;
}

WorkerServiceImpl::CompletionGuard::~CompletionGuard() {
  if (!ok_) return;
  absl::MutexLock lock(&service_->completing_mu_);
  service_->completing_.erase(task_id_);
}

void WorkerServiceImpl::DropStaleUploads() {
  staging_->DropStale([this](const std::string& id, int64_t epoch) {
    return !scheduler_->CheckLease(id, epoch).ok();
  });
}

absl::Status WorkerServiceImpl::DoUploadArtifact(
    const Caller& caller, grpc::ServerReader<v1::ArtifactChunk>* reader,
    v1::UploadArtifactResponse* response) {
  v1::ArtifactChunk chunk;
  if (!reader->Read(&chunk)) {
    return absl::InvalidArgumentError(
        "upload: no chunks (the first names task_id, lease_epoch and kind)");
  }
  const std::string task_id = chunk.task_id();
  const int64_t epoch = chunk.lease_epoch();
  const v1::ArtifactKind kind = chunk.kind();
  const std::string sender = chunk.worker_id();
  if (task_id.empty()) {
    return absl::InvalidArgumentError("task_id: required in the first chunk");
  }
  if (sender.empty()) {
    return absl::InvalidArgumentError("worker_id: required in the first chunk");
  }
  if (kind == v1::ARTIFACT_KIND_UNSPECIFIED ||
      !v1::ArtifactKind_IsValid(kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kind: ", kind, " is not a valid artifact kind"));
  }
  absl::StatusOr<LeaseInfo> lease =
      CheckLeaseHolder(caller, sender, task_id, epoch);
  if (!lease.ok()) return lease.status();
  // Uploads of leases that ended (expired, taken over, job cancelled or
  // failed) can never be completed: free them before taking more.
  DropStaleUploads();
  // This task's earlier upload of the same kind is replaced, not added to.
  const std::shared_ptr<const ArtifactStaging::Artifact> replaced =
      staging_->Find(task_id, epoch, kind);
  const int64_t replaced_bytes = replaced != nullptr ? replaced->size() : 0;
  const std::string& worker_id = lease->worker_id;
  // Bytes staged by others (all workers; this worker's other uploads) before
  // this one adds its own.
  const auto over_limit = [&](int64_t mine) -> absl::Status {
    const int64_t total = staging_->bytes() - replaced_bytes;
    const int64_t worker = staging_->worker_bytes(worker_id) - replaced_bytes;
    if (total + mine > options_.max_staged_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "upload of task ", task_id, ": ", total,
          " bytes are staged and this artifact's ", mine,
          " would pass the coordinator's staging limit of ",
          options_.max_staged_bytes, " bytes; send it again later"));
    }
    if (worker + mine > options_.max_staged_bytes_per_worker) {
      return absl::ResourceExhaustedError(
          absl::StrCat("upload of task ", task_id, ": worker ", worker_id,
                       " has ", worker, " bytes staged and this artifact's ",
                       mine, " would pass the per-worker staging limit of ",
                       options_.max_staged_bytes_per_worker,
                       " bytes; complete or fail its other tasks first"));
    }
    return absl::OkStatus();
  };
  if (absl::Status s = over_limit(std::max<int64_t>(chunk.total_size(), 0));
      !s.ok()) {
    return s;
  }
  if (chunk.total_size() > options_.max_artifact_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "total_size: ", chunk.total_size(), " bytes: the artifact of task ",
        task_id, " exceeds max_artifact_bytes (", options_.max_artifact_bytes,
        ")"));
  }

  // Chunks stream into a file: memory holds one chunk whatever the size.
  absl::StatusOr<std::unique_ptr<ArtifactStaging::Writer>> writer =
      staging_->Begin(task_id, epoch, kind, worker_id);
  if (!writer.ok()) return writer.status();
  ArtifactStaging::Writer& out = **writer;
  uint32_t crc = 0;
  while (true) {
    if ((!chunk.task_id().empty() && chunk.task_id() != task_id) ||
        (!chunk.worker_id().empty() && chunk.worker_id() != sender) ||
        (chunk.lease_epoch() != 0 && chunk.lease_epoch() != epoch) ||
        (chunk.kind() != v1::ARTIFACT_KIND_UNSPECIFIED &&
         chunk.kind() != kind)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk at offset ", chunk.offset(),
          " names a different worker, task, epoch or kind than the first "
          "chunk"));
    }
    if (chunk.offset() != out.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("offset: ", chunk.offset(), ", expected ", out.size(),
                       " (chunks must be contiguous)"));
    }
    const int64_t received =
        out.size() + static_cast<int64_t>(chunk.data().size());
    if (chunk.total_size() > options_.max_artifact_bytes ||
        received > options_.max_artifact_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "artifact of task ", task_id, " exceeds max_artifact_bytes (",
          options_.max_artifact_bytes, ")"));
    }
    // What this upload already wrote is counted in the staged bytes.
    if (absl::Status s = over_limit(static_cast<int64_t>(chunk.data().size()));
        !s.ok()) {
      return s;
    }
    crc = format::Crc32c(chunk.data(), crc);
    if (absl::Status s = out.Append(chunk.data()); !s.ok()) return s;
    if (chunk.last()) break;
    if (!reader->Read(&chunk)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload ended after ", out.size(), " bytes without a last chunk"));
    }
  }
  if (chunk.total_size() != out.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("total_size: ", chunk.total_size(), ", but ", out.size(),
                     " bytes were received"));
  }
  if (chunk.crc32c() != crc) {
    return absl::DataLossError(
        absl::StrCat("crc32c mismatch for the ", v1::ArtifactKind_Name(kind),
                     " artifact of ", task_id, ": got ", chunk.crc32c(),
                     ", computed ", crc));
  }
  // The lease may have expired during a long upload.
  if (absl::StatusOr<LeaseInfo> now = scheduler_->CheckLease(task_id, epoch);
      !now.ok()) {
    return now.status();
  }
  response->set_bytes_received(out.size());
  return out.Commit();
}

absl::Status WorkerServiceImpl::DoDownloadSae(
    const v1::DownloadSaeRequest& request,
    grpc::ServerWriter<v1::DownloadChunk>* writer) {
  const v1::SaeRef& ref = request.sae();
  if (ref.job_id().empty()) {
    return absl::InvalidArgumentError("sae.job_id: required");
  }
  absl::StatusOr<std::string> weights;
  switch (request.kind()) {
    case v1::ARTIFACT_KIND_UNSPECIFIED:
    case v1::ARTIFACT_KIND_SAE_WEIGHTS: {
      // Streamed part by part: an SAE larger than memory allows is never
      // held whole.
      ChunkStreamer<v1::DownloadChunk> stream(
          static_cast<size_t>(options_.download_chunk_bytes),
          v1::DownloadChunk(), writer, "DownloadSae");
      absl::StatusOr<int64_t> n = results_->ReadSaeWeights(
          ref.job_id(), ref.layer(), ref.step(),
          [&stream](std::string_view piece) { return stream.Write(piece); });
      if (!n.ok()) return n.status();
      return stream.Finish();
    }
    case v1::ARTIFACT_KIND_FEATURE_ANALYSIS:
      weights =
          results_->GetAnalysisBlock(ref.job_id(), ref.layer(), ref.step());
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("kind: ", v1::ArtifactKind_Name(request.kind()),
                       " cannot be downloaded (SAE_WEIGHTS or "
                       "FEATURE_ANALYSIS)"));
  }
  if (!weights.ok()) return weights.status();
  return WriteChunked(*weights,
                      static_cast<size_t>(options_.download_chunk_bytes),
                      v1::DownloadChunk(), writer, "DownloadSae");
}

absl::Status WorkerServiceImpl::DoCompleteTask(
    const Caller& caller, const v1::CompleteTaskRequest& request) {
  const std::string& task_id = request.task_id();
  const int64_t epoch = request.lease_epoch();
  if (task_id.empty()) return absl::InvalidArgumentError("task_id: required");
  // One completion of a task at a time: a retry racing its first attempt
  // (the worker's deadline passed while the parts were written) waits.
  CompletionGuard guard(this, task_id);
  if (!guard.ok()) {
    return absl::UnavailableError(
        absl::StrCat("task ", task_id,
                     ": an earlier CompleteTask is still committing; "
                     "send it again"));
  }
  absl::StatusOr<LeaseInfo> lease =
      CheckLeaseHolder(caller, request.worker_id(), task_id, epoch);
  if (!lease.ok()) return lease.status();
  if (lease->kind == TASK_KIND_ANALYSE) {
    return CompleteAnalysis(*lease, epoch);
  }

  const std::shared_ptr<const ArtifactStaging::Artifact> weights =
      staging_->Find(task_id, epoch, v1::ARTIFACT_KIND_SAE_WEIGHTS);
  const std::shared_ptr<const ArtifactStaging::Artifact> stats_file =
      staging_->Find(task_id, epoch, v1::ARTIFACT_KIND_FEATURE_STATS);
  std::vector<std::string> missing;
  if (weights == nullptr) missing.push_back("ARTIFACT_KIND_SAE_WEIGHTS");
  if (stats_file == nullptr) missing.push_back("ARTIFACT_KIND_FEATURE_STATS");
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task ", task_id, " epoch ", epoch, ": missing uploaded artifact(s) ",
        absl::StrJoin(missing, ", "), "; upload them before CompleteTask"));
  }
  absl::StatusOr<std::string> stats_bytes = stats_file->ReadAll();
  if (!stats_bytes.ok()) return stats_bytes.status();
  v1::FeatureStatsBlock stats;
  if (!stats.ParseFromString(*stats_bytes)) {
    return absl::InvalidArgumentError(
        "ARTIFACT_KIND_FEATURE_STATS: not a serialized FeatureStatsBlock");
  }
  // Nothing is stored unless every uploaded number is in range; the lease
  // stays, so the worker may send corrected results or fail the task.
  const v1::CheckpointMetrics& uploaded = request.metrics();
  if (absl::Status s = CheckCheckpointMetrics(uploaded, ToUploadLease(*lease));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckFeatureStats(stats, lease->d_sae); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> header = SafetensorsHeader(*weights);
  if (!header.ok()) return header.status();
  if (absl::Status s =
          CheckSaeWeightsHeader(*header, lease->d_sae, uploaded.d_in());
      !s.ok()) {
    return s;
  }
  v1::CheckpointMetrics metrics = uploaded;
  if (metrics.d_sae() == 0) metrics.set_d_sae(lease->d_sae);
  const int d_sae = metrics.d_sae();
  if (metrics.density_histogram_size() > 0) {
    // Every feature falls in exactly one density bin.
    int64_t counted = 0;
    for (int64_t count : metrics.density_histogram()) {
      if (count < 0) counted = -1;
      if (counted >= 0) counted += count;
    }
    if (counted != d_sae) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics.density_histogram: counts ",
                       counted < 0 ? "include a negative one"
                                   : absl::StrCat("sum to ", counted),
                       ", expected d_sae ", d_sae));
    }
  }
  metrics.set_layer(lease->layer);
  metrics.set_step(lease->step);
  metrics.set_chain_index(lease->chain_index);
  metrics.clear_median_decoder_cos_prev();
  if (std::optional<double> median = FiniteMedian(stats.decoder_cos_prev())) {
    metrics.set_median_decoder_cos_prev(*median);
  }

  storage::WriteBatch batch;
  // Large weights go to the store in parts now, read from the staged file
  // one part at a time; the batch below publishes them.
  if (absl::Status s = results_->StageSaeWeights(
          lease->job_id, lease->layer, lease->step, epoch, weights->size(),
          [&weights](int64_t offset, int64_t n, std::string* out) {
            return weights->ReadAt(offset, n, out);
          },
          &batch);
      !s.ok()) {
    results_->AbandonSaeParts(lease->job_id, lease->layer, lease->step, epoch)
        .IgnoreError();
    return s;
  }
  ResultStore::AddFeaturePoints(lease->job_id, lease->layer, lease->step,
                                lease->chain_index, stats, &batch);
  ResultStore::AddCheckpointMetrics(lease->job_id, metrics, &batch);
  absl::Status s = scheduler_->Complete(task_id, epoch, std::move(batch),
                                        metrics.tokens_trained());
  if (!s.ok()) {
    // Parts this lease wrote stay only if its earlier completion stored them.
    results_->AbandonSaeParts(lease->job_id, lease->layer, lease->step, epoch)
        .IgnoreError();
  }
  if (s.ok()) {
    metrics_->TaskCompleted(task_id, epoch, metrics.tokens_trained());
  }
  // Stored, or the lease is someone else's: this lease's uploads are done
  // with (a refused one stays for a corrected retry until its lease ends;
  // DropStale frees it then).
  if (s.ok() || absl::IsAborted(s)) staging_->DropLease(task_id, epoch);
  return s;
}

absl::Status WorkerServiceImpl::CompleteAnalysis(const LeaseInfo& lease,
                                                 int64_t epoch) {
  const std::string& task_id = lease.task_id;
  const std::shared_ptr<const ArtifactStaging::Artifact> file =
      staging_->Find(task_id, epoch, v1::ARTIFACT_KIND_FEATURE_ANALYSIS);
  if (file == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task ", task_id, " epoch ", epoch,
        ": missing uploaded artifact ARTIFACT_KIND_FEATURE_ANALYSIS; upload "
        "it before CompleteTask"));
  }
  absl::StatusOr<std::string> bytes = file->ReadAll();
  if (!bytes.ok()) return bytes.status();
  v1::FeatureAnalysisBlock block;
  if (!block.ParseFromString(*bytes)) {
    return absl::InvalidArgumentError(
        "ARTIFACT_KIND_FEATURE_ANALYSIS: not a serialized "
        "FeatureAnalysisBlock");
  }
  absl::StatusOr<v1::Job> job = scheduler_->GetJob(lease.job_id);
  if (!job.ok()) return job.status();
  if (absl::Status s =
          CheckFeatureAnalysis(block, ToUploadLease(lease), job->spec());
      !s.ok()) {
    return s;
  }
  storage::WriteBatch batch;
  if (absl::Status s =
          results_->AddAnalysis(lease.job_id, lease.layer, lease.step, block,
                                lease.final_analysis, &batch);
      !s.ok()) {
    return s;
  }
  absl::Status s = scheduler_->Complete(task_id, epoch, std::move(batch), 0);
  if (s.ok()) metrics_->TaskCompleted(task_id, epoch, 0);
  if (s.ok() || absl::IsAborted(s)) staging_->DropLease(task_id, epoch);
  return s;
}

absl::Status WorkerServiceImpl::DoFailTask(const Caller& caller,
                                           const v1::FailTaskRequest& request) {
  absl::StatusOr<LeaseInfo> lease = CheckLeaseHolder(
      caller, request.worker_id(), request.task_id(), request.lease_epoch());
  if (!lease.ok()) return lease.status();
  absl::Status s = scheduler_->Fail(request.task_id(), request.lease_epoch(),
                                    request.error(), request.retryable());
  if (s.ok()) {
    staging_->DropTask(request.task_id());
    metrics_->TaskEnded(request.task_id());
  }
  return s;
}

}  // namespace saetrack::server
