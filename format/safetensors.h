// Reading and writing safetensors files (https://github.com/huggingface/
// safetensors): an 8-byte little-endian header length N, N bytes of JSON
// header ({name: {dtype, shape, data_offsets: [begin, end]}, optional
// "__metadata__": {string: string}}), then the data section. Offsets are
// relative to the data section.
//
// This layer is torch-free: it hands out raw bytes + dtype + shape, and the
// engine turns them into tensors. Readers validate the whole header up front
// (see SafetensorsFile::Open), so a TensorView, once obtained, is always in
// bounds and consistent with its dtype and shape. Little-endian hosts only,
// like the format itself.
#ifndef SAETRACK_FORMAT_SAFETENSORS_H_
#define SAETRACK_FORMAT_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace saetrack::format {

// Element types of the safetensors format. All are accepted in headers (real
// checkpoints carry BOOL or I64 buffers); only kF32, kF16 and kBF16 convert to
// float (DecodeToFloat).
enum class Dtype {
  kBool,
  kU8,
  kI8,
  kF8E4M3,
  kF8E5M2,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};

// The header spelling ("F32", "BF16", ...).
const char* DtypeName(Dtype dtype);
// Bytes per element.
size_t DtypeSize(Dtype dtype);

// One tensor of an open file. `bytes` points into the file's storage and is
// valid as long as the SafetensorsFile (or SafetensorsCheckpoint) that
// returned it lives.
struct TensorView {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  std::string_view bytes;
  // Absolute byte offset of bytes[0] in the file, for error messages.
  uint64_t file_offset = 0;

  int64_t num_elements() const;
};

// Converts an F32, F16 or BF16 tensor to float32 into `out` (which must have
// room for num_elements() floats). Errors: kInvalidArgument naming the tensor
// for any other dtype.
absl::Status DecodeToFloat(const TensorView& tensor, float* out);

// The longest header read (the reference implementation's limit): a longer
// one is refused before it is parsed.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// A validated safetensors file, memory-mapped or held in memory. Move-only;
// immutable after construction, so thread-safe for concurrent reads.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors: kNotFound (and other errno codes)
  // naming the path; kDataLoss naming the path, and the tensor and byte offset
  // where one is involved, for: a truncated file or header, a header length
  // beyond the end of the file, invalid header JSON, an unknown dtype, a
  // negative or overflowing shape, data_offsets out of range, overlapping or
  // leaving gaps or not covering the data section, or a byte size that does
  // not match dtype and shape.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  // Validates an in-memory file (e.g. SAE weights received over RPC) and
  // takes ownership of it; `origin` names it in errors. Errors as Open.
  static absl::StatusOr<SafetensorsFile> FromBytes(std::string bytes,
                                                   std::string origin);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  // Tensors in data-section order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // The tensor named `name`, or nullptr.
  const TensorView* Find(std::string_view name) const;
  // As Find, but kNotFound naming the file and the tensor when absent.
  absl::StatusOr<const TensorView*> Get(std::string_view name) const;
  // The "__metadata__" map (empty when absent).
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // The path or origin given at construction.
  const std::string& origin() const { return origin_; }

 private:
  struct Storage;
  SafetensorsFile() = default;
  static absl::StatusOr<SafetensorsFile> Validate(
      std::unique_ptr<Storage> storage, std::string origin);

  std::unique_ptr<Storage> storage_;
  std::string origin_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a Hugging Face checkpoint directory: `dir`/model.safetensors,
// or the shards listed in `dir`/model.safetensors.index.json
// ({"weight_map": {tensor: shard file name}}). Move-only, immutable.
class SafetensorsCheckpoint {
 public:
  // Opens and validates the single file or every shard. Errors: kNotFound
  // naming the missing path; kDataLoss for malformed files or an index that
  // names a tensor missing from its shard (naming both) or a shard path that
  // leaves `dir`.
  static absl::StatusOr<SafetensorsCheckpoint> Open(const std::string& dir);

  // The tensor named `name`. Errors: kNotFound naming the directory and the
  // tensor.
  absl::StatusOr<const TensorView*> Get(std::string_view name) const;
  // Names of all tensors, sorted.
  std::vector<std::string> TensorNames() const;

 private:
  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, const TensorView*, std::less<>> by_name_;
};

// Builds a safetensors file in memory. The header is padded with spaces so
// that the data section starts at a multiple of 8 bytes. Tensors are stored
// in the order added. Not thread-safe.
class SafetensorsWriter {
 public:
  // Adds a string entry to "__metadata__".
  void SetMetadata(std::string key, std::string value);

  // Copies `bytes` as tensor `name`. Errors: kInvalidArgument for a duplicate
  // or empty name, the reserved name "__metadata__", a negative dimension, or
  // bytes.size() != product(shape) * DtypeSize(dtype).
  absl::Status Add(std::string name, Dtype dtype, std::vector<int64_t> shape,
                   std::string_view bytes);
  // Add for float32 data: `values` holds product(shape) floats.
  absl::Status AddF32(std::string name, std::vector<int64_t> shape,
                      const float* values);

  // The complete file.
  std::string Serialize() const;

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace saetrack::format

#endif  // SAETRACK_FORMAT_SAFETENSORS_H_
