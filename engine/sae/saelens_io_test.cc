#include "engine/sae/saelens_io.h"

#include <torch/torch.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/sae/sae_trainer.h"

namespace saetrack::engine {
namespace {

std::string TempDir(const std::string& name) {
  std::string pattern = ::testing::TempDir() + "/" + name + "_XXXXXX";
  EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
  return pattern;
}

// A trained (not freshly initialised) SAE of `architecture`.
std::unique_ptr<Sae> TrainedSae(const std::string& architecture) {
  at::Generator generator = at::detail::createCPUGenerator(3);
  const torch::Tensor x = torch::randn({512, 16}, generator, torch::kFloat32);
  SaeSpec spec;
  spec.architecture = architecture;
  spec.l1_coefficient = 1e-2;
  spec.k = 5;
  std::unique_ptr<Sae> sae = *MakeSae(spec, InitSaeFromScratch(64, x, 4));
  SaeTrainerOptions options;
  options.lr = 1e-2;
  SaeTrainer trainer(sae.get(), options);
  for (int i = 0; i < 20; ++i) trainer.Step(x.narrow(0, (i % 4) * 128, 128));
  return sae;
}

class SaelensIoTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SaelensIoTest, RoundTripEncodesBitForBit) {
  const std::unique_ptr<Sae> sae = TrainedSae(GetParam());
  format::SaelensConfig metadata;
  metadata.model_name = "/data/pythia-70m/step-1000";
  metadata.hook_name = format::HookName(3, "resid_pre");
  metadata.hook_layer = 3;
  metadata.checkpoint_step = 1000;
  metadata.job_id = "job-1";
  const std::string dir = TempDir("saelens") + "/sae";
  ASSERT_TRUE(ExportSaelens(*sae, metadata, dir).ok());

  absl::StatusOr<ImportedSae> imported = ImportSaelens(dir, torch::kCPU);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->config.architecture, GetParam());
  EXPECT_EQ(imported->config.d_in, 16);
  EXPECT_EQ(imported->config.d_sae, 64);
  EXPECT_EQ(imported->config.k, GetParam() == "topk" ? 5 : 0);
  EXPECT_EQ(imported->config.hook_name, "blocks.3.hook_resid_pre");
  EXPECT_EQ(imported->config.checkpoint_step, 1000);
  EXPECT_EQ(imported->config.model_name, metadata.model_name);
  EXPECT_EQ(imported->config.job_id, "job-1");

  at::Generator generator = at::detail::createCPUGenerator(5);
  const torch::Tensor x = torch::randn({256, 16}, generator, torch::kFloat32);
  const torch::Tensor before = sae->Encode(x);
  const torch::Tensor after = imported->sae->Encode(x);
  EXPECT_GT((before > 0).sum().item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(before, after));  // bit for bit, fp32
  EXPECT_TRUE(torch::equal(sae->Reconstruct(x), imported->sae->Reconstruct(x)));
  EXPECT_EQ(SaeToSafetensors(sae->weights()),
            SaeToSafetensors(imported->sae->weights()));
}

INSTANTIATE_TEST_SUITE_P(Architectures, SaelensIoTest,
                         ::testing::Values("relu_l1", "topk"));

TEST(SaelensIoErrorsTest, MissingDirectoryIsNotFound) {
  absl::StatusOr<ImportedSae> imported =
      ImportSaelens(TempDir("empty") + "/nothing", torch::kCPU);
  EXPECT_EQ(imported.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(imported.status().message()),
              ::testing::HasSubstr("cfg.json"));
}

}  // namespace
}  // namespace saetrack::engine
