#include "format/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/absl_compat.h"
#include "base/status_macros.h"
#include "format/json.h"
#include "format/mapped_file.h"

namespace saetrack::format {
namespace {

constexpr size_t kHeaderLengthBytes = 8;
constexpr char kMetadataKey[] = "__metadata__";

struct DtypeInfo {
  Dtype dtype;
  const char* name;
  size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {Dtype::kBool, "BOOL", 1},      {Dtype::kU8, "U8", 1},
    {Dtype::kI8, "I8", 1},          {Dtype::kF8E4M3, "F8_E4M3", 1},
    {Dtype::kF8E5M2, "F8_E5M2", 1}, {Dtype::kI16, "I16", 2},
    {Dtype::kU16, "U16", 2},        {Dtype::kF16, "F16", 2},
    {Dtype::kBF16, "BF16", 2},      {Dtype::kI32, "I32", 4},
    {Dtype::kU32, "U32", 4},        {Dtype::kF32, "F32", 4},
    {Dtype::kF64, "F64", 8},        {Dtype::kI64, "I64", 8},
    {Dtype::kU64, "U64", 8},
};

std::optional<Dtype> DtypeFromName(std::string_view name) {
  for (const DtypeInfo& info : kDtypes) {
    if (name == info.name) return info.dtype;
  }
  return std::nullopt;
}

uint64_t ReadLittleEndian64(const char* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) {
    value = (value << 8) | static_cast<unsigned char>(bytes[i]);
  }
  return value;
}

// a * b, or nullopt on overflow of int64.
std::optional<int64_t> CheckedMultiply(int64_t a, int64_t b) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) {
    return std::nullopt;
  }
  return a * b;
}

float HalfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  const uint32_t exponent = (half >> 10) & 0x1F;
  uint32_t mantissa = half & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {  // inf / NaN
    bits = sign | 0x7F800000 | (mantissa << 13);
  } else if (exponent != 0) {  // normal
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // zero
    bits = sign;
  } else {  // subnormal: renormalise
    int shift = 0;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3FF;
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

}  // namespace

const char* DtypeName(Dtype dtype) {
  for (const DtypeInfo& info : kDtypes) {
    if (info.dtype == dtype) return info.name;
  }
  return "?";
}

size_t DtypeSize(Dtype dtype) {
  for (const DtypeInfo& info : kDtypes) {
    if (info.dtype == dtype) return info.size;
  }
  return 0;
}

int64_t TensorView::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;  // validated not to overflow
  return count;
}

absl::Status DecodeToFloat(const TensorView& tensor, float* out) {
  const int64_t count = tensor.num_elements();
  const char* bytes = tensor.bytes.data();
  switch (tensor.dtype) {
    case Dtype::kF32:
      // `out` may be null for an empty tensor, and memcpy from or to null is
      // undefined even for 0 bytes.
      if (count > 0) std::memcpy(out, bytes, count * sizeof(float));
      return absl::OkStatus();
    case Dtype::kF16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t half;
        std::memcpy(&half, bytes + 2 * i, sizeof(half));
        out[i] = HalfToFloat(half);
      }
      return absl::OkStatus();
    case Dtype::kBF16:
      // bfloat16 is the upper half of a float32.
      for (int64_t i = 0; i < count; ++i) {
        uint16_t upper;
        std::memcpy(&upper, bytes + 2 * i, sizeof(upper));
        const uint32_t bits = static_cast<uint32_t>(upper) << 16;
        std::memcpy(&out[i], &bits, sizeof(float));
      }
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", tensor.name, "\" has dtype ",
                       DtypeName(tensor.dtype), ", expected F32, F16 or BF16"));
  }
}

// Keeps the file bytes alive at a stable address.
struct SafetensorsFile::Storage {
  std::variant<MappedFile, std::string> backing;
  std::string_view bytes() const {
    if (const auto* mapped = std::get_if<MappedFile>(&backing)) {
      return mapped->data();
    }
    return std::get<std::string>(backing);
  }
};

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept =
    default;
SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SAETRACK_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  auto storage = std::make_unique<Storage>(Storage{std::move(mapped)});
  return Validate(std::move(storage), path);
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::FromBytes(std::string bytes,
                                                           std::string origin) {
  auto storage = std::make_unique<Storage>(Storage{std::move(bytes)});
  return Validate(std::move(storage), std::move(origin));
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Validate(
    std::unique_ptr<Storage> storage, std::string origin) {
  const std::string_view file = storage->bytes();
  auto data_loss = [&origin](auto&&... parts) {
    return absl::DataLossError(absl::StrCat(origin, ": ", parts...));
  };
  if (file.size() < kHeaderLengthBytes) {
    return data_loss("truncated safetensors file: ", file.size(),
                     " bytes, need at least 8 for the header length");
  }
  const uint64_t header_length = ReadLittleEndian64(file.data());
  if (header_length > kMaxSafetensorsHeaderBytes) {
    return data_loss("header length ", header_length,
                     " (at byte 0) exceeds the ", kMaxSafetensorsHeaderBytes,
                     "-byte limit of a safetensors header");
  }
  const uint64_t available = file.size() - kHeaderLengthBytes;
  if (header_length > available) {
    return data_loss("header length ", header_length,
                     " (at byte 0) exceeds the ", available,
                     " bytes after it: truncated file or not safetensors");
  }
  const std::string_view header_text =
      file.substr(kHeaderLengthBytes, header_length);
  // Parse with the 8 length bytes replaced by spaces so that every JSON
  // offset (in errors and in JsonValue::offset()) is a file offset.
  const std::string padded_header =
      absl::StrCat(std::string(kHeaderLengthBytes, ' '), AsAbsl(header_text));
  absl::StatusOr<JsonValue> header = ParseJson(padded_header, origin);
  if (!header.ok()) {
    return absl::DataLossError(
        absl::StrCat(header.status().message(), " (safetensors header)"));
  }
  if (!header->is_object()) {
    return data_loss("header at byte 8 must be a JSON object, found ",
                     JsonValue::TypeName(header->type()));
  }
  const uint64_t data_start = kHeaderLengthBytes + header_length;
  const std::string_view data = file.substr(data_start);

  SafetensorsFile result;
  // Copied, not moved: data_loss below still names the file by `origin`.
  result.origin_ = origin;
  auto at = [](const JsonValue& value) { return value.offset(); };
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // parallel to tensors
  for (const JsonValue::Member& member : header->members()) {
    const std::string& name = member.first;
    const JsonValue& entry = member.second;
    if (name == kMetadataKey) {
      if (!entry.is_object()) {
        return data_loss("\"__metadata__\" at byte ", at(entry),
                         " must be an object of strings");
      }
      for (const JsonValue::Member& item : entry.members()) {
        if (!item.second.is_string()) {
          return data_loss("\"__metadata__\" entry \"", item.first,
                           "\" at byte ", at(item.second), " must be a string");
        }
        result.metadata_[item.first] = item.second.string_value();
      }
      continue;
    }
    auto tensor_error = [&](const JsonValue& where, auto&&... parts) {
      return data_loss("tensor \"", name, "\" (at byte ", at(where),
                       "): ", parts...);
    };
    if (!entry.is_object()) {
      return tensor_error(entry, "entry must be an object");
    }
    const JsonValue* dtype_value = entry.Find("dtype");
    const JsonValue* shape_value = entry.Find("shape");
    const JsonValue* offsets_value = entry.Find("data_offsets");
    if (dtype_value == nullptr || shape_value == nullptr ||
        offsets_value == nullptr) {
      return tensor_error(entry,
                          "entry needs \"dtype\", \"shape\" and "
                          "\"data_offsets\"");
    }
    if (!dtype_value->is_string()) {
      return tensor_error(*dtype_value, "\"dtype\" must be a string");
    }
    const std::optional<Dtype> dtype =
        DtypeFromName(dtype_value->string_value());
    if (!dtype.has_value()) {
      return tensor_error(*dtype_value, "unknown dtype \"",
                          dtype_value->string_value(), "\"");
    }
    if (!shape_value->is_array()) {
      return tensor_error(*shape_value, "\"shape\" must be an array");
    }
    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    int64_t elements = 1;
    for (const JsonValue& dim_value : shape_value->array()) {
      const std::optional<int64_t> dim = dim_value.AsInt64();
      if (!dim.has_value() || *dim < 0) {
        return tensor_error(dim_value,
                            "shape dimensions must be non-negative integers");
      }
      const std::optional<int64_t> product = CheckedMultiply(elements, *dim);
      if (!product.has_value()) {
        return tensor_error(*shape_value, "shape overflows");
      }
      elements = *product;
      view.shape.push_back(*dim);
    }
    if (!offsets_value->is_array() || offsets_value->array().size() != 2) {
      return tensor_error(*offsets_value,
                          "\"data_offsets\" must be [begin, end]");
    }
    const std::optional<int64_t> begin = offsets_value->array()[0].AsInt64();
    const std::optional<int64_t> end = offsets_value->array()[1].AsInt64();
    if (!begin.has_value() || !end.has_value() || *begin < 0 || *end < *begin) {
      return tensor_error(*offsets_value,
                          "\"data_offsets\" must be non-negative integers "
                          "with begin <= end");
    }
    if (static_cast<uint64_t>(*end) > data.size()) {
      return tensor_error(*offsets_value, "data_offsets [", *begin, ", ", *end,
                          "] (file bytes ", data_start + *begin, "..",
                          data_start + *end, ") exceed the data section of ",
                          data.size(), " bytes");
    }
    const std::optional<int64_t> expected_bytes =
        CheckedMultiply(elements, static_cast<int64_t>(DtypeSize(*dtype)));
    if (!expected_bytes.has_value() || *expected_bytes != *end - *begin) {
      return tensor_error(
          *offsets_value, "shape [", absl::StrJoin(view.shape, ", "), "] of ",
          DtypeName(*dtype), " needs ",
          expected_bytes.has_value() ? absl::StrCat(*expected_bytes)
                                     : std::string("too many"),
          " bytes but data_offsets [", *begin, ", ", *end, "] hold ",
          *end - *begin, " (file byte ", data_start + *begin, ")");
    }
    view.bytes = data.substr(*begin, *end - *begin);
    view.file_offset = data_start + *begin;
    result.tensors_.push_back(std::move(view));
    ranges.emplace_back(*begin, *end);
  }

  // The tensors must tile the data section exactly: sorted by offset, each
  // starts where the previous ended, and the last ends at the end of file.
  std::vector<size_t> order(result.tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&ranges](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  uint64_t covered = 0;
  const TensorView* previous = nullptr;
  for (size_t index : order) {
    const TensorView& view = result.tensors_[index];
    const uint64_t begin = ranges[index].first;
    if (begin < covered) {
      return data_loss("tensor \"", view.name, "\" (file bytes ",
                       data_start + begin, "..",
                       data_start + ranges[index].second,
                       ") overlaps tensor \"", previous->name, "\"");
    }
    if (begin > covered) {
      return data_loss("gap in the data section at file byte ",
                       data_start + covered, " before tensor \"", view.name,
                       "\" (at file byte ", data_start + begin, ")");
    }
    covered = ranges[index].second;
    previous = &view;
  }
  if (covered != data.size()) {
    return data_loss("tensors cover ", covered, " of the ", data.size(),
                     " data bytes; unreferenced bytes from file byte ",
                     data_start + covered);
  }
  std::vector<TensorView> sorted;
  sorted.reserve(order.size());
  for (size_t index : order)
    sorted.push_back(std::move(result.tensors_[index]));
  result.tensors_ = std::move(sorted);
  result.storage_ = std::move(storage);
  return result;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  for (const TensorView& view : tensors_) {
    if (view.name == name) return &view;
  }
  return nullptr;
}

absl::StatusOr<const TensorView*> SafetensorsFile::Get(
    std::string_view name) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(origin_, ": no tensor named \"", AsAbsl(name), "\""));
  }
  return view;
}

absl::StatusOr<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(
    const std::string& dir) {
  SafetensorsCheckpoint checkpoint;
  checkpoint.dir_ = dir;
  const std::string single_path = absl::StrCat(dir, "/model.safetensors");
  const std::string index_path =
      absl::StrCat(dir, "/model.safetensors.index.json");
  absl::StatusOr<SafetensorsFile> single = SafetensorsFile::Open(single_path);
  if (single.ok()) {
    checkpoint.files_.push_back(*std::move(single));
  } else if (single.status().code() != absl::StatusCode::kNotFound) {
    return single.status();
  } else {
    absl::StatusOr<std::string> index_text = ReadFileToString(index_path);
    if (!index_text.ok()) {
      if (index_text.status().code() == absl::StatusCode::kNotFound) {
        return absl::NotFoundError(
            absl::StrCat("no weights in ", dir, ": neither ", single_path,
                         " nor ", index_path, " exists"));
      }
      return index_text.status();
    }
    absl::StatusOr<JsonValue> index = ParseJson(*index_text, index_path);
    if (!index.ok()) return absl::DataLossError(index.status().message());
    const JsonValue* weight_map = index->Find("weight_map");
    if (weight_map == nullptr || !weight_map->is_object()) {
      return absl::DataLossError(absl::StrCat(
          index_path, ": expected an object \"weight_map\" at the top level"));
    }
    std::map<std::string, size_t> shard_index;  // shard name -> files_ index
    std::vector<std::pair<std::string, size_t>> wanted;
    for (const JsonValue::Member& member : weight_map->members()) {
      if (!member.second.is_string()) {
        return absl::DataLossError(absl::StrCat(
            index_path, ": weight_map entry \"", member.first, "\" at byte ",
            member.second.offset(), " must be a file name"));
      }
      const std::string& shard = member.second.string_value();
      // Shards are plain file names beside the index; anything else could
      // read outside the configured data roots.
      if (shard.empty() || shard.find('/') != std::string::npos ||
          shard == "." || shard == "..") {
        return absl::DataLossError(
            absl::StrCat(index_path, ": weight_map entry \"", member.first,
                         "\" at byte ", member.second.offset(), " names \"",
                         shard, "\", which is not a file name in ", dir));
      }
      auto [it, inserted] =
          shard_index.emplace(shard, checkpoint.files_.size());
      if (inserted) {
        SAETRACK_ASSIGN_OR_RETURN(
            SafetensorsFile file,
            SafetensorsFile::Open(absl::StrCat(dir, "/", shard)));
        checkpoint.files_.push_back(std::move(file));
      }
      wanted.emplace_back(member.first, it->second);
    }
    for (const auto& [name, file_index] : wanted) {
      const SafetensorsFile& file = checkpoint.files_[file_index];
      const TensorView* view = file.Find(name);
      if (view == nullptr) {
        return absl::DataLossError(
            absl::StrCat(index_path, ": tensor \"", name, "\" is mapped to ",
                         file.origin(), ", which does not contain it"));
      }
      checkpoint.by_name_[name] = view;
    }
    return checkpoint;
  }
  for (const TensorView& view : checkpoint.files_[0].tensors()) {
    checkpoint.by_name_[view.name] = &view;
  }
  return checkpoint;
}

absl::StatusOr<const TensorView*> SafetensorsCheckpoint::Get(
    std::string_view name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "checkpoint ", dir_, " has no tensor named \"", AsAbsl(name), "\""));
  }
  return it->second;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(by_name_.size());
  for (const auto& entry : by_name_) names.push_back(entry.first);
  return names;
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

absl::Status SafetensorsWriter::Add(std::string name, Dtype dtype,
                                    std::vector<int64_t> shape,
                                    std::string_view bytes) {
  if (name.empty() || name == kMetadataKey) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tensor name \"", name, "\""));
  }
  for (const Entry& entry : entries_) {
    if (entry.name == name) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor name \"", name, "\""));
    }
  }
  int64_t elements = 1;
  for (int64_t dim : shape) {
    std::optional<int64_t> product;
    if (dim >= 0) product = CheckedMultiply(elements, dim);
    if (!product.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\": invalid shape [",
                       absl::StrJoin(shape, ", "), "]"));
    }
    elements = *product;
  }
  const std::optional<int64_t> expected =
      CheckedMultiply(elements, static_cast<int64_t>(DtypeSize(dtype)));
  if (!expected.has_value() ||
      *expected != static_cast<int64_t>(bytes.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", name, "\": shape [", absl::StrJoin(shape, ", "), "] of ",
        DtypeName(dtype), " does not match ", bytes.size(), " bytes"));
  }
  entries_.push_back(
      Entry{std::move(name), dtype, std::move(shape), std::string(bytes)});
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddF32(std::string name,
                                       std::vector<int64_t> shape,
                                       const float* values) {
  int64_t elements = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || (dim != 0 && elements > (int64_t{1} << 40) / dim)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\": invalid shape [",
                       absl::StrJoin(shape, ", "), "]"));
    }
    elements *= dim;
  }
  return Add(std::move(name), Dtype::kF32, std::move(shape),
             std::string_view(reinterpret_cast<const char*>(values),
                              elements * sizeof(float)));
}

std::string SafetensorsWriter::Serialize() const {
  JsonValue::Object header;
  if (!metadata_.empty()) {
    JsonValue::Object metadata;
    for (const auto& [key, value] : metadata_) {
      metadata.emplace_back(key, JsonValue::String(value));
    }
    header.emplace_back(kMetadataKey,
                        JsonValue::MakeObject(std::move(metadata)));
  }
  int64_t offset = 0;
  for (const Entry& entry : entries_) {
    JsonValue::Array shape;
    for (int64_t dim : entry.shape) shape.push_back(JsonValue::Integer(dim));
    const int64_t end = offset + static_cast<int64_t>(entry.bytes.size());
    header.emplace_back(
        entry.name, JsonValue::MakeObject(
                        {{"dtype", JsonValue::String(DtypeName(entry.dtype))},
                         {"shape", JsonValue::MakeArray(std::move(shape))},
                         {"data_offsets",
                          JsonValue::MakeArray({JsonValue::Integer(offset),
                                                JsonValue::Integer(end)})}}));
    offset = end;
  }
  std::string header_text = SerializeJson(JsonValue::MakeObject(header));
  // Pad with spaces (valid JSON whitespace) so tensor data is 8-aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(kHeaderLengthBytes + header_text.size() + offset);
  uint64_t length = header_text.size();
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>(length & 0xFF));
    length >>= 8;
  }
  out += header_text;
  for (const Entry& entry : entries_) out += entry.bytes;
  return out;
}

}  // namespace saetrack::format
