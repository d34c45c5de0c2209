// Parity with Hugging Face transformers: for each fixture directory made by
// testdata/make_parity_fixtures.py (a tiny random model saved with
// save_pretrained plus golden inputs and outputs of the HF forward pass),
// the model loaded by LoadLanguageModel must reproduce HF's hidden states
// and logits in float32. Fixtures are generated where transformers is
// installed and are never hand-made; without them the tests skip.
#include <sys/stat.h>
#include <torch/torch.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "engine/lm/language_model.h"
#include "format/safetensors.h"

namespace saetrack::engine {
namespace {

// Largest absolute difference allowed between our float32 outputs and HF's.
constexpr double kTolerance = 1e-4;

bool IsDirectory(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

// Tensor `name` of `file` as a CPU tensor of its own dtype (F32 or I64).
torch::Tensor ReadTensor(const format::SafetensorsFile& file,
                         const std::string& name) {
  absl::StatusOr<const format::TensorView*> view = file.Get(name);
  EXPECT_TRUE(view.ok()) << view.status();
  if (!view.ok()) return torch::Tensor();
  const torch::Dtype dtype =
      (*view)->dtype == format::Dtype::kI64 ? torch::kInt64 : torch::kFloat32;
  EXPECT_TRUE((*view)->dtype == format::Dtype::kI64 ||
              (*view)->dtype == format::Dtype::kF32)
      << name << " has dtype " << format::DtypeName((*view)->dtype);
  torch::Tensor tensor = torch::empty((*view)->shape, torch::dtype(dtype));
  std::memcpy(tensor.data_ptr(), (*view)->bytes.data(), (*view)->bytes.size());
  return tensor;
}

double MaxAbsError(const torch::Tensor& actual, const torch::Tensor& expected) {
  return (actual - expected).abs().max().item<double>();
}

class HuggingFaceParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HuggingFaceParityTest, HiddenStatesAndLogitsMatch) {
  const std::string dir =
      absl::StrCat(SAETRACK_PARITY_FIXTURES_DIR, "/", GetParam());
  // The fixtures are committed (made with transformers 4.36.2 by
  // lm/testdata/make_parity_fixtures.py); a missing one is a failure.
  ASSERT_TRUE(IsDirectory(dir)) << "missing parity fixture " << dir;
  absl::StatusOr<std::unique_ptr<LanguageModel>> model =
      LoadLanguageModel(dir, torch::kCPU);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<format::SafetensorsFile> expected =
      format::SafetensorsFile::Open(dir + "/expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status();

  const torch::Tensor input_ids = ReadTensor(*expected, "input_ids");
  ASSERT_EQ(input_ids.dim(), 2);
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> hidden_states =
      (*model)->HiddenStates(input_ids);
  ASSERT_EQ(hidden_states.size(), (*model)->num_layers() + 1);
  for (size_t i = 0; i < hidden_states.size(); ++i) {
    const torch::Tensor golden =
        ReadTensor(*expected, absl::StrCat("hidden_states.", i));
    ASSERT_EQ(hidden_states[i].sizes(), golden.sizes()) << "hidden state " << i;
    EXPECT_LE(MaxAbsError(hidden_states[i], golden), kTolerance)
        << "hidden state " << i
        << (i + 1 == hidden_states.size() ? " (after the final layer norm)"
                                          : " (resid_pre of that layer)");
  }
  const torch::Tensor logits = (*model)->Logits(input_ids);
  const torch::Tensor golden_logits = ReadTensor(*expected, "logits");
  ASSERT_EQ(logits.sizes(), golden_logits.sizes());
  EXPECT_LE(MaxAbsError(logits, golden_logits), kTolerance) << "logits";
}

// The fixture names make_parity_fixtures.py writes.
INSTANTIATE_TEST_SUITE_P(Fixtures, HuggingFaceParityTest,
                         ::testing::Values("gpt_neox_parallel",
                                           "gpt_neox_sequential", "gpt2"));

}  // namespace
}  // namespace saetrack::engine
