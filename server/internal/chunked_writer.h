// Streams one artifact as contiguous chunks: the chunk types of the API
// (DownloadChunk, ExportChunk) share offset / data / last / total_size /
// crc32c, the last chunk carrying the size and CRC-32C of the whole.
#ifndef SAETRACK_SERVER_INTERNAL_CHUNKED_WRITER_H_
#define SAETRACK_SERVER_INTERNAL_CHUNKED_WRITER_H_

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "format/crc32c.h"

namespace saetrack::server {

// Writes `all` in chunks of at most `chunk_bytes` (at least one chunk, even
// when empty); `prototype` carries fields every chunk repeats. Errors:
// kCancelled naming `rpc` when the client went away.
template <typename Chunk>
absl::Status WriteChunked(std::string_view all, size_t chunk_bytes,
                          const Chunk& prototype,
                          grpc::ServerWriter<Chunk>* writer, const char* rpc) {
  size_t offset = 0;
  do {
    Chunk chunk = prototype;
    chunk.set_offset(static_cast<int64_t>(offset));
    const std::string_view piece = all.substr(offset, chunk_bytes);
    chunk.set_data(piece.data(), piece.size());
    offset += piece.size();
    if (offset == all.size()) {
      chunk.set_last(true);
      chunk.set_total_size(static_cast<int64_t>(all.size()));
      chunk.set_crc32c(format::Crc32c(all));
    }
    if (!writer->Write(chunk)) {
      return absl::CancelledError(
          absl::StrCat("client went away during ", rpc));
    }
  } while (offset < all.size());
  return absl::OkStatus();
}

// Writes an artifact given piece by piece as contiguous chunks of at most
// `chunk_bytes`, the last (sent by Finish) carrying the size and CRC-32C of
// the whole.
template <typename Chunk>
class ChunkStreamer {
 public:
  ChunkStreamer(size_t chunk_bytes, const Chunk& prototype,
                grpc::ServerWriter<Chunk>* writer, const char* rpc)
      : chunk_bytes_(chunk_bytes),
        prototype_(prototype),
        writer_(writer),
        rpc_(rpc) {}

  // Sends every full chunk `piece` completes; the rest waits for more.
  absl::Status Write(std::string_view piece) {
    while (!piece.empty()) {
      const size_t take =
          std::min(piece.size(), chunk_bytes_ - pending_.size());
      pending_.append(piece.substr(0, take));
      piece.remove_prefix(take);
      // A full chunk waits until the next byte (or Finish) shows whether it
      // is the last.
      if (!piece.empty() && pending_.size() == chunk_bytes_) {
        if (absl::Status s = Send(false); !s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }
  absl::Status Finish() { return Send(true); }

 private:
  absl::Status Send(bool last) {
    Chunk chunk = prototype_;
    chunk.set_offset(offset_);
    crc_ = format::Crc32c(pending_, crc_);
    offset_ += static_cast<int64_t>(pending_.size());
    chunk.set_data(std::move(pending_));
    pending_.clear();
    if (last) {
      chunk.set_last(true);
      chunk.set_total_size(offset_);
      chunk.set_crc32c(crc_);
    }
    if (!writer_->Write(chunk)) {
      return absl::CancelledError(
          absl::StrCat("client went away during ", rpc_));
    }
    return absl::OkStatus();
  }

  const size_t chunk_bytes_;
  const Chunk prototype_;
  grpc::ServerWriter<Chunk>* const writer_;
  const char* const rpc_;
  std::string pending_;
  int64_t offset_ = 0;
  uint32_t crc_ = 0;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_CHUNKED_WRITER_H_
