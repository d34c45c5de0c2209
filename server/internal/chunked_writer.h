// Streams one artifact as contiguous chunks: the chunk types of the API
// (DownloadChunk, ExportChunk) share offset / data / last / total_size /
// crc32c, the last chunk carrying the size and CRC-32C of the whole.
#ifndef SAETRACK_SERVER_INTERNAL_CHUNKED_WRITER_H_
#define SAETRACK_SERVER_INTERNAL_CHUNKED_WRITER_H_

#include <grpcpp/grpcpp.h>

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

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_CHUNKED_WRITER_H_
