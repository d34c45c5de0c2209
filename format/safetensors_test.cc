#include "format/safetensors.h"

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace saetrack::format {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Message(const absl::Status& status) {
  return std::string(status.message());
}

// A file from a raw header (unpadded) and data section.
std::string RawFile(const std::string& header, const std::string& data) {
  std::string out;
  uint64_t length = header.size();
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>(length >> (8 * i)));
  return out + header + data;
}

absl::Status OpenError(const std::string& bytes) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::FromBytes(bytes, "w.safetensors");
  EXPECT_FALSE(file.ok());
  return file.status();
}

TEST(SafetensorsTest, WriterRoundTrip) {
  SafetensorsWriter writer;
  const std::vector<float> matrix = {1.5f, -2.f, 3.25f, 0.f, 1e-30f, -0.f};
  const std::vector<float> bias = {7.f, 8.f, 9.f};
  ASSERT_TRUE(writer.AddF32("W_enc", {2, 3}, matrix.data()).ok());
  ASSERT_TRUE(writer.AddF32("b_enc", {3}, bias.data()).ok());
  ASSERT_TRUE(writer.Add("empty", Dtype::kF32, {0, 4}, "").ok());
  writer.SetMetadata("format", "pt");
  const std::string bytes = writer.Serialize();
  // Header padded so the data section is 8-aligned.
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_length + 9 * sizeof(float));

  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::FromBytes(bytes, "sae.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->tensors().size(), 3u);
  absl::StatusOr<const TensorView*> w_enc = file->Get("W_enc");
  ASSERT_TRUE(w_enc.ok());
  EXPECT_EQ((*w_enc)->dtype, Dtype::kF32);
  EXPECT_THAT((*w_enc)->shape, ElementsAre(2, 3));
  EXPECT_EQ((*w_enc)->file_offset, 8 + header_length);
  std::vector<float> decoded(6);
  ASSERT_TRUE(DecodeToFloat(**w_enc, decoded.data()).ok());
  EXPECT_EQ(std::memcmp(decoded.data(), matrix.data(), 6 * sizeof(float)), 0);
  EXPECT_EQ(file->Find("empty")->num_elements(), 0);
  EXPECT_EQ(file->Get("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(file->Get("missing").status()),
              HasSubstr("sae.safetensors: no tensor named \"missing\""));
}

TEST(SafetensorsTest, WriterRejectsBadTensors) {
  SafetensorsWriter writer;
  const float values[2] = {1, 2};
  ASSERT_TRUE(writer.AddF32("a", {2}, values).ok());
  EXPECT_EQ(writer.AddF32("a", {2}, values).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(writer.Add("b", Dtype::kF32, {3}, std::string(8, '\0')).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(writer.Add("__metadata__", Dtype::kU8, {1}, "x").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(writer.Add("c", Dtype::kU8, {-1}, "").code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, DecodesHalfAndBfloat16) {
  // F16: 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF, smallest subnormal
  // 0x0001 = 2^-24. BF16: 1.0 = 0x3F80, -0.5 = 0xBF00.
  const uint16_t half[4] = {0x3C00, 0xC000, 0x7BFF, 0x0001};
  const uint16_t bf16[2] = {0x3F80, 0xBF00};
  SafetensorsWriter writer;
  ASSERT_TRUE(writer
                  .Add("h", Dtype::kF16, {4},
                       std::string_view(reinterpret_cast<const char*>(half), 8))
                  .ok());
  ASSERT_TRUE(writer
                  .Add("b", Dtype::kBF16, {2},
                       std::string_view(reinterpret_cast<const char*>(bf16), 4))
                  .ok());
  ASSERT_TRUE(writer.Add("i", Dtype::kI64, {1}, std::string(8, '\0')).ok());
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::FromBytes(writer.Serialize(), "x");
  ASSERT_TRUE(file.ok()) << file.status();
  float out[4];
  ASSERT_TRUE(DecodeToFloat(*file->Find("h"), out).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 65504.0f);
  EXPECT_EQ(out[3], std::ldexp(1.0f, -24));
  ASSERT_TRUE(DecodeToFloat(*file->Find("b"), out).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -0.5f);
  const absl::Status status = DecodeToFloat(*file->Find("i"), out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("\"i\" has dtype I64"));
}

TEST(SafetensorsTest, TruncatedFile) {
  const absl::Status status = OpenError("abc");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status),
              HasSubstr("w.safetensors: truncated safetensors file: 3 bytes"));
}

TEST(SafetensorsTest, HeaderLongerThanFile) {
  std::string bytes = RawFile("{}", "");
  bytes[0] = 100;
  const absl::Status status = OpenError(bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("header length 100 (at byte 0) "
                                         "exceeds the 2 bytes after it"));
}

TEST(SafetensorsTest, HeaderBeyondTheLimitIsNotParsed) {
  std::string bytes = RawFile("{}", "");
  bytes[0] = 1;
  bytes[1] = static_cast<char>(0xe1);
  bytes[2] = static_cast<char>(0xf5);
  bytes[3] = 5;  // 100,000,001 bytes.
  const absl::Status status = OpenError(bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status),
              HasSubstr("header length 100000001 (at byte 0) exceeds the "
                        "100000000-byte limit"));
}

TEST(SafetensorsTest, InvalidHeaderJsonNamesFileOffset) {
  const absl::Status status = OpenError(RawFile("{\"a\" 1}", ""));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  // '1' is at header offset 5, file offset 13.
  EXPECT_THAT(Message(status),
              HasSubstr("w.safetensors: invalid JSON at byte 13"));
}

TEST(SafetensorsTest, UnknownDtype) {
  const std::string header =
      R"({"t":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})";
  const absl::Status status = OpenError(RawFile(header, std::string(4, 'x')));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status),
              HasSubstr(absl::StrCat("tensor \"t\" (at byte ",
                                     8 + header.find("\"F12\""),
                                     "): unknown dtype \"F12\"")));
}

TEST(SafetensorsTest, OffsetsOutOfRange) {
  const absl::Status status = OpenError(
      RawFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
              std::string(4, 'x')));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("tensor \"t\""));
  EXPECT_THAT(Message(status), HasSubstr("exceed the data section of 4 bytes"));
}

TEST(SafetensorsTest, ShapeDoesNotMatchBytes) {
  const std::string header =
      R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  const absl::Status status = OpenError(RawFile(header, std::string(8, 'x')));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("tensor \"t\""));
  EXPECT_THAT(Message(status),
              HasSubstr("shape [3] of F32 needs 12 bytes but data_offsets "
                        "[0, 8] hold 8"));
  EXPECT_THAT(Message(status),
              HasSubstr(absl::StrCat("file byte ", 8 + header.size())));
}

TEST(SafetensorsTest, OverlappingTensors) {
  const absl::Status status = OpenError(
      RawFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
              R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
              std::string(6, 'x')));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("tensor \"b\""));
  EXPECT_THAT(Message(status), HasSubstr("overlaps tensor \"a\""));
}

TEST(SafetensorsTest, GapAndUncoveredBytes) {
  const std::string gap_header =
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
      R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})";
  const absl::Status gap = OpenError(RawFile(gap_header, std::string(6, 'x')));
  EXPECT_EQ(gap.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(gap),
              HasSubstr(absl::StrCat("gap in the data section at file byte ",
                                     8 + gap_header.size() + 2)));
  const absl::Status tail = OpenError(
      RawFile(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
              std::string(5, 'x')));
  EXPECT_EQ(tail.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(tail), HasSubstr("tensors cover 2 of the 5 data bytes"));
}

TEST(SafetensorsTest, MalformedEntries) {
  for (const char* header : {
           R"([])",
           R"({"t":1})",
           R"({"t":{"dtype":"F32","shape":[1]}})",
           R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})",
           R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,0]}})",
           R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})",
           R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})",
           R"({"t":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],)"
           R"("data_offsets":[0,0]}})",
           R"({"__metadata__":{"a":1}})",
       }) {
    const absl::Status status = OpenError(RawFile(header, ""));
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << header;
  }
}

// Random corruption of a valid file never crashes and never yields views
// outside the file.
TEST(SafetensorsTest, RandomCorruptionNeverCrashes) {
  SafetensorsWriter writer;
  const std::vector<float> values(10, 1.0f);
  ASSERT_TRUE(writer.AddF32("a", {2, 5}, values.data()).ok());
  ASSERT_TRUE(writer.AddF32("b", {3}, values.data()).ok());
  const std::string valid = writer.Serialize();
  std::mt19937 rng(3);
  for (int iteration = 0; iteration < 5000; ++iteration) {
    std::string bytes = valid;
    const int edits = 1 + rng() % 3;
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % bytes.size();
      if (rng() % 4 == 0) {
        bytes.resize(pos);
        if (bytes.empty()) break;
      } else {
        bytes[pos] = static_cast<char>(rng() % 256);
      }
    }
    const size_t size = bytes.size();
    absl::StatusOr<SafetensorsFile> file =
        SafetensorsFile::FromBytes(std::move(bytes), "fuzz");
    if (!file.ok()) {
      EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
      continue;
    }
    for (const TensorView& view : file->tensors()) {
      EXPECT_LE(view.file_offset + view.bytes.size(), size);
    }
  }
}

class SafetensorsCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/safetensors_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void Write(const std::string& name, const std::string& contents) {
    std::ofstream(dir_ + "/" + name, std::ios::binary) << contents;
  }
  static std::string OneTensor(const std::string& name, float value) {
    SafetensorsWriter writer;
    EXPECT_TRUE(writer.AddF32(name, {1}, &value).ok());
    return writer.Serialize();
  }
  std::string dir_;
};

TEST_F(SafetensorsCheckpointTest, SingleFileFromDisk) {
  Write("model.safetensors", OneTensor("x", 2.5f));
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  absl::StatusOr<const TensorView*> x = checkpoint->Get("x");
  ASSERT_TRUE(x.ok());
  float value;
  ASSERT_TRUE(DecodeToFloat(**x, &value).ok());
  EXPECT_EQ(value, 2.5f);
  EXPECT_THAT(checkpoint->TensorNames(), ElementsAre("x"));
  EXPECT_EQ(checkpoint->Get("y").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsCheckpointTest, Sharded) {
  Write("model-00001-of-00002.safetensors", OneTensor("a", 1.0f));
  Write("model-00002-of-00002.safetensors", OneTensor("b", 2.0f));
  Write("model.safetensors.index.json",
        R"({"metadata": {"total_size": 8}, "weight_map": {)"
        R"("a": "model-00001-of-00002.safetensors",)"
        R"("b": "model-00002-of-00002.safetensors"}})");
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  // Moving keeps the views valid.
  SafetensorsCheckpoint moved = *std::move(checkpoint);
  float value;
  ASSERT_TRUE(DecodeToFloat(**moved.Get("b"), &value).ok());
  EXPECT_EQ(value, 2.0f);
  EXPECT_THAT(moved.TensorNames(), ElementsAre("a", "b"));
}

TEST_F(SafetensorsCheckpointTest, ShardErrors) {
  Write("s.safetensors", OneTensor("a", 1.0f));
  Write("model.safetensors.index.json",
        R"({"weight_map": {"b": "s.safetensors"}})");
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(checkpoint.status()),
              HasSubstr("tensor \"b\" is mapped to " + dir_ +
                        "/s.safetensors, which does not contain it"));

  Write("model.safetensors.index.json",
        R"({"weight_map": {"a": "../s.safetensors"}})");
  EXPECT_EQ(SafetensorsCheckpoint::Open(dir_).status().code(),
            absl::StatusCode::kDataLoss);

  Write("model.safetensors.index.json",
        R"({"weight_map": {"a": "missing.safetensors"}})");
  checkpoint = SafetensorsCheckpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(checkpoint.status()), HasSubstr("missing.safetensors"));
}

TEST_F(SafetensorsCheckpointTest, NoWeights) {
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(checkpoint.status()), HasSubstr("model.safetensors"));
}

TEST_F(SafetensorsCheckpointTest, CorruptFileOnDiskNamesPath) {
  Write("model.safetensors", std::string("\x05\0\0\0\0\0\0\0{", 9));
  absl::StatusOr<SafetensorsCheckpoint> checkpoint =
      SafetensorsCheckpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(checkpoint.status()),
              HasSubstr(dir_ + "/model.safetensors: header length 5"));
}

}  // namespace
}  // namespace saetrack::format
