// Raw WorkerService calls for tests that play a worker by hand (a stale
// lease, a forged upload, a checksum that does not match): upload an
// artifact in chunks as a worker does and download a stored SAE checking its
// chunks. Shared by the coordinator's in-process tests and the multi-process
// fault tests.
#ifndef SAETRACK_SERVER_TESTING_WORKER_RPC_TESTING_H_
#define SAETRACK_SERVER_TESTING_WORKER_RPC_TESTING_H_

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "saetrack/v1/worker.grpc.pb.h"

namespace saetrack::server::testing {

// Deadline of each call below unless given.
inline constexpr absl::Duration kWorkerRpcDeadline = absl::Seconds(20);

struct UploadOptions {
  // The worker holding the lease, sent in the first chunk.
  std::string worker_id;
  size_t chunk_bytes = 4096;
  // Overrides the CRC-32C the last chunk carries (a corrupt upload).
  std::optional<uint32_t> crc32c;
  absl::Duration deadline = kWorkerRpcDeadline;
};

// Uploads `bytes` as one artifact the way a worker does: chunks at
// contiguous offsets, the first naming the task, lease epoch and kind, the
// last carrying the total size and the CRC-32C. Stops sending early when the
// server has already answered (a refusal at the first chunk). `response`
// (may be null) receives the server's answer.
grpc::Status UploadArtifact(v1::WorkerService::Stub& stub,
                            const std::string& task_id, int64_t lease_epoch,
                            v1::ArtifactKind kind, const std::string& bytes,
                            const UploadOptions& options = {},
                            v1::UploadArtifactResponse* response = nullptr);

// The stored artifact `kind` of `sae`, reassembled from DownloadSae's
// chunks. Errors: the server's; kDataLoss for a chunk at the wrong offset, a
// stream without a last chunk, or a total size or CRC-32C that disagrees
// with the bytes.
absl::StatusOr<std::string> DownloadSaeArtifact(
    v1::WorkerService::Stub& stub, const v1::SaeRef& sae,
    v1::ArtifactKind kind = v1::ARTIFACT_KIND_SAE_WEIGHTS,
    absl::Duration deadline = kWorkerRpcDeadline);

}  // namespace saetrack::server::testing

#endif  // SAETRACK_SERVER_TESTING_WORKER_RPC_TESTING_H_
