// libFuzzer target for the safetensors reader: arbitrary bytes must either be
// refused with kDataLoss naming the origin, or yield tensors that are safe to
// read through the whole public API. Built only with clang (see
// worker/format/CMakeLists.txt); run it with deploy/fuzz.sh.
//
// Checks beyond "no sanitizer report" abort via Check() so that libFuzzer
// records the input as a crash: the header's promises (a TensorView is in
// bounds and consistent with dtype and shape) and a writer round trip.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/safetensors.h"

namespace saetrack::format {
namespace {

constexpr char kOrigin[] = "fuzz.safetensors";

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "safetensors_fuzz: violated: %s\n", what);
    std::abort();
  }
}

// Reads every byte of `view` (so ASan sees any out-of-bounds view) and
// decodes float tensors.
void ReadTensor(const SafetensorsFile& file, const TensorView& view,
                std::string_view input) {
  const int64_t elements = view.num_elements();
  Check(elements >= 0, "num_elements() >= 0");
  Check(view.bytes.size() ==
            static_cast<uint64_t>(elements) * DtypeSize(view.dtype),
        "bytes.size() == num_elements() * DtypeSize(dtype)");
  Check(view.file_offset + view.bytes.size() <= input.size(),
        "tensor bytes lie inside the file");
  Check(file.Find(view.name) == &view, "Find(name) returns the tensor");
  absl::StatusOr<const TensorView*> got = file.Get(view.name);
  Check(got.ok() && *got == &view, "Get(name) returns the tensor");

  unsigned checksum = 0;
  for (char byte : view.bytes) checksum += static_cast<unsigned char>(byte);
  // Keeps the loop from being optimised away.
  asm volatile("" : : "r"(checksum));

  std::vector<float> decoded(static_cast<size_t>(elements));
  const absl::Status status = DecodeToFloat(view, decoded.data());
  const bool is_float = view.dtype == Dtype::kF32 ||
                        view.dtype == Dtype::kF16 || view.dtype == Dtype::kBF16;
  Check(status.ok() == is_float, "DecodeToFloat succeeds exactly for floats");
  if (!is_float) {
    Check(status.code() == absl::StatusCode::kInvalidArgument,
          "DecodeToFloat refuses other dtypes with kInvalidArgument");
  }
}

// What the reader accepted, the writer must reproduce byte-for-byte in
// content: a file re-serialised by SafetensorsWriter parses to the same
// tensors and metadata.
void CheckWriterRoundTrip(const SafetensorsFile& file) {
  SafetensorsWriter writer;
  for (const auto& [key, value] : file.metadata()) {
    writer.SetMetadata(key, value);
  }
  for (const TensorView& view : file.tensors()) {
    // The writer refuses an empty name, which the reader accepts; such files
    // have no round trip to check.
    if (!writer.Add(view.name, view.dtype, view.shape, view.bytes).ok()) {
      return;
    }
  }
  absl::StatusOr<SafetensorsFile> again =
      SafetensorsFile::FromBytes(writer.Serialize(), kOrigin);
  Check(again.ok(), "the writer's output parses");
  Check(again->metadata() == file.metadata(), "metadata survives");
  Check(again->tensors().size() == file.tensors().size(), "tensor count");
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    const TensorView& a = file.tensors()[i];
    const TensorView& b = again->tensors()[i];
    Check(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape &&
              a.bytes == b.bytes,
          "tensors survive the round trip");
  }
}

}  // namespace
}  // namespace saetrack::format

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saetrack::format;  // NOLINT(build/namespaces): entry point
  const std::string input(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::FromBytes(input, kOrigin);
  if (!file.ok()) {
    Check(file.status().code() == absl::StatusCode::kDataLoss,
          "malformed files are refused with kDataLoss");
    Check(file.status().message().find(kOrigin) != absl::string_view::npos,
          "the error names the origin");
    return 0;
  }
  Check(file->origin() == kOrigin, "origin() is the given origin");
  for (const TensorView& view : file->tensors()) {
    ReadTensor(*file, view, input);
  }
  CheckWriterRoundTrip(*file);
  return 0;
}
