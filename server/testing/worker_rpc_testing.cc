#include "server/testing/worker_rpc_testing.h"

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "format/crc32c.h"
#include "proto/status_mapping.h"

namespace saetrack::server::testing {

grpc::Status UploadArtifact(v1::WorkerService::Stub& stub,
                            const std::string& task_id, int64_t lease_epoch,
                            v1::ArtifactKind kind, const std::string& bytes,
                            const UploadOptions& options,
                            v1::UploadArtifactResponse* response) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.deadline));
  v1::UploadArtifactResponse ignored;
  std::unique_ptr<grpc::ClientWriter<v1::ArtifactChunk>> writer =
      stub.UploadArtifact(&ctx, response != nullptr ? response : &ignored);
  size_t offset = 0;
  do {
    v1::ArtifactChunk chunk;
    if (offset == 0) {
      chunk.set_worker_id(options.worker_id);
      chunk.set_task_id(task_id);
      chunk.set_lease_epoch(lease_epoch);
      chunk.set_kind(kind);
    }
    chunk.set_offset(static_cast<int64_t>(offset));
    chunk.set_data(bytes.substr(offset, options.chunk_bytes));
    offset += chunk.data().size();
    if (offset == bytes.size()) {
      chunk.set_last(true);
      chunk.set_total_size(static_cast<int64_t>(bytes.size()));
      chunk.set_crc32c(options.crc32c.value_or(format::Crc32c(bytes)));
    }
    if (!writer->Write(chunk)) break;
  } while (offset < bytes.size());
  writer->WritesDone();
  return writer->Finish();
}

absl::StatusOr<std::string> DownloadSaeArtifact(v1::WorkerService::Stub& stub,
                                                const v1::SaeRef& sae,
                                                v1::ArtifactKind kind,
                                                absl::Duration deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  v1::DownloadSaeRequest request;
  *request.mutable_sae() = sae;
  request.set_kind(kind);
  std::unique_ptr<grpc::ClientReader<v1::DownloadChunk>> reader =
      stub.DownloadSae(&ctx, request);
  std::string bytes;
  v1::DownloadChunk chunk;
  bool last = false;
  absl::Status malformed;
  while (reader->Read(&chunk)) {
    if (malformed.ok() &&
        chunk.offset() != static_cast<int64_t>(bytes.size())) {
      malformed = absl::DataLossError(absl::StrCat(
          "chunk at offset ", chunk.offset(), ", expected ", bytes.size()));
    }
    bytes.append(chunk.data());
    if (chunk.last()) {
      last = true;
      if (malformed.ok() &&
          (chunk.total_size() != static_cast<int64_t>(bytes.size()) ||
           chunk.crc32c() != format::Crc32c(bytes))) {
        malformed = absl::DataLossError("total size or CRC-32C mismatch");
      }
    }
  }
  if (absl::Status s = FromGrpcStatus(reader->Finish()); !s.ok()) return s;
  if (!malformed.ok()) return malformed;
  if (!last) return absl::DataLossError("no last chunk");
  return bytes;
}

}  // namespace saetrack::server::testing
