// Replays the safetensors seed corpus (testdata/safetensors_corpus/, written
// by testdata/make_safetensors_corpus.py) and whatever the fuzzer saved as
// crashes (deploy/fuzz.sh's artifact dirs) through the reader, so that every
// malformed file the fuzzer or a person found stays refused cleanly in the
// ordinary GCC build, without clang.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "format/safetensors.h"

namespace saetrack::format {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Set by worker/format/CMakeLists.txt.
constexpr char kCorpusDir[] = SAETRACK_SAFETENSORS_CORPUS_DIR;
constexpr char kArtifactDirs[] = SAETRACK_SAFETENSORS_FUZZ_ARTIFACT_DIRS;

// What each refused seed's error must say (besides its path). Keep in step
// with make_safetensors_corpus.py; the test fails on a seed missing here.
const std::map<std::string, std::string>& ExpectedErrors() {
  static const auto* const kErrors = new std::map<std::string, std::string>{
      {"bad_byte_size_overflow", "needs too many bytes"},
      {"bad_deeply_nested", "nesting deeper than 256"},
      {"bad_dtype_not_string", "\"dtype\" must be a string"},
      {"bad_duplicate_tensor", "duplicate key \"a\""},
      {"bad_entry_not_object", "entry must be an object"},
      {"bad_header_length_beyond_file", "header length 1000 (at byte 0)"},
      {"bad_header_length_max", "header length 18446744073709551615"},
      {"bad_header_not_object", "must be a JSON object, found array"},
      {"bad_invalid_json", "(safetensors header)"},
      {"bad_metadata_not_string", "entry \"step\" at byte 32 must be a string"},
      {"bad_missing_field", "entry needs \"dtype\", \"shape\""},
      {"bad_offsets_beyond_int64", "non-negative integers with begin <= end"},
      {"bad_offsets_gap", "gap in the data section"},
      {"bad_offsets_huge", "exceed the data section of 4 bytes"},
      {"bad_offsets_negative", "non-negative integers with begin <= end"},
      {"bad_offsets_out_of_range", "exceed the data section of 4 bytes"},
      {"bad_offsets_overlap", "overlaps tensor \"a\""},
      {"bad_offsets_reversed", "non-negative integers with begin <= end"},
      {"bad_shape_fraction", "shape dimensions must be non-negative"},
      {"bad_shape_negative", "shape dimensions must be non-negative"},
      {"bad_shape_overflow", "shape overflows"},
      {"bad_shape_size_mismatch", "needs 24 bytes but data_offsets [0, 20]"},
      {"bad_truncated_length", "truncated safetensors file: 5 bytes"},
      {"bad_unknown_dtype", "unknown dtype \"F31\""},
      {"bad_unreferenced_tail", "tensors cover 4 of the 8 data bytes"},
      {"bad_zero_bytes", "truncated safetensors file: 0 bytes"},
  };
  return *kErrors;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<fs::path> FilesIn(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Reads every tensor the way the engine does; returns the decoded floats of
// float tensors by name.
std::map<std::string, std::vector<float>> ReadAll(const SafetensorsFile& file) {
  std::map<std::string, std::vector<float>> decoded;
  for (const TensorView& view : file.tensors()) {
    EXPECT_EQ(view.bytes.size(), view.num_elements() * DtypeSize(view.dtype))
        << view.name;
    std::vector<float> values(view.num_elements());
    const absl::Status status = DecodeToFloat(view, values.data());
    if (status.ok()) {
      decoded[view.name] = std::move(values);
    } else {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(status.message()), HasSubstr(view.name));
    }
  }
  return decoded;
}

// The tensors of `file` as text: names, dtypes, shapes and bytes (compared
// as bytes so that NaNs compare equal).
std::string Describe(const SafetensorsFile& file) {
  std::ostringstream out;
  for (const TensorView& view : file.tensors()) {
    out << view.name << " " << DtypeName(view.dtype) << " [";
    for (int64_t dim : view.shape) out << dim << ",";
    out << "] " << view.bytes.size() << ":" << view.bytes << "\n";
  }
  return out.str();
}

// Opens `path` both ways (mapped and from bytes) and checks they agree:
// either both parse to the same tensors, or both fail with kDataLoss naming
// the path. Returns the FromBytes result.
absl::StatusOr<SafetensorsFile> OpenBothWays(const fs::path& path) {
  absl::StatusOr<SafetensorsFile> mapped = SafetensorsFile::Open(path);
  absl::StatusOr<SafetensorsFile> in_memory =
      SafetensorsFile::FromBytes(ReadFile(path), path.string());
  EXPECT_EQ(mapped.status(), in_memory.status());
  if (!in_memory.ok()) {
    EXPECT_EQ(in_memory.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(in_memory.status().message()),
                HasSubstr(path.string()));
  } else if (mapped.ok()) {
    EXPECT_EQ(Describe(*mapped), Describe(*in_memory));
  }
  return in_memory;
}

TEST(SafetensorsCorpusTest, EverySeedHasItsExpectedOutcome) {
  const std::vector<fs::path> files = FilesIn(kCorpusDir);
  ASSERT_GE(files.size(), ExpectedErrors().size()) << kCorpusDir;
  std::set<std::string> seen;
  for (const fs::path& path : files) {
    SCOPED_TRACE(path.string());
    const std::string name = path.stem().string();
    seen.insert(name);
    absl::StatusOr<SafetensorsFile> file = OpenBothWays(path);
    if (absl::StartsWith(name, "ok_")) {
      ASSERT_TRUE(file.ok()) << file.status();
      ReadAll(*file);
    } else if (auto it = ExpectedErrors().find(name);
               it != ExpectedErrors().end()) {
      ASSERT_FALSE(file.ok());
      EXPECT_THAT(std::string(file.status().message()), HasSubstr(it->second));
    } else {
      // A fuzzer crash copied in as a regression: any clean outcome.
      EXPECT_TRUE(file.ok() ||
                  file.status().code() == absl::StatusCode::kDataLoss);
    }
  }
  for (const auto& [name, error] : ExpectedErrors()) {
    EXPECT_TRUE(seen.count(name)) << name << " missing from " << kCorpusDir;
  }
}

TEST(SafetensorsCorpusTest, FloatSeedsDecodeToTheirValues) {
  const fs::path dir(kCorpusDir);
  auto decode = [&dir](const std::string& name) {
    absl::StatusOr<SafetensorsFile> file =
        SafetensorsFile::Open(dir / (name + ".safetensors"));
    EXPECT_TRUE(file.ok()) << file.status();
    return file.ok() ? ReadAll(*file)
                     : std::map<std::string, std::vector<float>>{};
  };
  EXPECT_THAT(decode("ok_single_f32")["w"],
              ElementsAre(1.5f, -2.f, 3.25f, 0.f, 1e-30f, -0.f));
  EXPECT_THAT(decode("ok_bf16")["b"], ElementsAre(1.f, -2.f, 3.f, 0.f));
  const std::vector<float> half = decode("ok_f16")["h"];
  ASSERT_EQ(half.size(), 6u);
  EXPECT_EQ(half[0], 1.f);
  EXPECT_EQ(half[1], -2.f);
  EXPECT_EQ(half[2], std::ldexp(1.f, -24));  // smallest subnormal
  EXPECT_TRUE(std::isinf(half[3]) && half[3] > 0);
  EXPECT_TRUE(std::isnan(half[4]));
  EXPECT_EQ(half[5], 0.f);
  EXPECT_THAT(decode("ok_scalar")["s"], ElementsAre(42.f));

  absl::StatusOr<SafetensorsFile> mixed =
      SafetensorsFile::Open(dir / "ok_mixed_dtypes_unordered.safetensors");
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  std::vector<std::string> names;  // data-section order
  for (const TensorView& view : mixed->tensors()) names.push_back(view.name);
  EXPECT_THAT(names, ElementsAre("bias", "ids", "mask", "bytes"));
  EXPECT_THAT(ReadAll(*mixed), ::testing::SizeIs(0));  // no float32 tensors
}

TEST(SafetensorsCorpusTest, FuzzerArtifactsAreRefusedCleanly) {
  int replayed = 0;
  for (const absl::string_view dir :
       absl::StrSplit(kArtifactDirs, ':', absl::SkipEmpty())) {
    for (const fs::path& path : FilesIn(std::string(dir))) {
      SCOPED_TRACE(path.string());
      absl::StatusOr<SafetensorsFile> file = OpenBothWays(path);
      if (file.ok()) ReadAll(*file);
      ++replayed;
    }
  }
  // Usually none: a crash is fixed and moved into the corpus.
  RecordProperty("replayed", replayed);
}

}  // namespace
}  // namespace saetrack::format
