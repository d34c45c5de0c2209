#include "engine/lm/activation_stream.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/lm/activations.h"
#include "engine/lm/gpt2.h"

namespace saetrack::engine {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kWidth = 3;

// `chunks` chunks of `rows_per_chunk` rows; row i holds the value i in every
// column, so a served row names its origin.
ActivationSource NumberedRows(int chunks, int64_t rows_per_chunk) {
  auto produced = std::make_shared<int>(0);
  return [=]() -> absl::StatusOr<torch::Tensor> {
    if (*produced == chunks) return torch::Tensor();
    const int64_t first = *produced * rows_per_chunk;
    ++*produced;
    return torch::arange(first, first + rows_per_chunk, torch::kFloat32)
        .unsqueeze(1)
        .expand({rows_per_chunk, kWidth})
        .contiguous();
  };
}

ActivationStreamOptions Options(int64_t buffer_rows, uint64_t seed) {
  ActivationStreamOptions options;
  options.buffer_rows = buffer_rows;
  options.refill_fraction = 0.5;
  options.seed = seed;
  return options;
}

// All batches of a stream.
std::vector<torch::Tensor> Drain(ActivationStream& stream, int64_t batch) {
  std::vector<torch::Tensor> batches;
  while (true) {
    absl::StatusOr<torch::Tensor> next = stream.NextBatch(batch);
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok() || !next->defined()) break;
    batches.push_back(*next);
  }
  return batches;
}

std::vector<int64_t> RowIds(const torch::Tensor& batch) {
  const torch::Tensor ids = batch.select(1, 0).to(torch::kInt64).contiguous();
  return std::vector<int64_t>(ids.data_ptr<int64_t>(),
                              ids.data_ptr<int64_t>() + ids.numel());
}

TEST(ActivationStreamTest, ServesEveryProducedRowExactlyOnce) {
  // 23 chunks of 7 rows through a 40-row buffer: many refills, chunks that
  // straddle refills, and a short last batch (161 = 10 * 16 + 1).
  absl::StatusOr<ActivationStream> stream =
      ActivationStream::Create(NumberedRows(23, 7), Options(40, 1));
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::vector<torch::Tensor> batches = Drain(*stream, 16);
  ASSERT_EQ(batches.size(), 11);
  std::vector<int64_t> ids;
  for (size_t i = 0; i < batches.size(); ++i) {
    EXPECT_EQ(batches[i].size(0), i + 1 < batches.size() ? 16 : 1);
    // Every column of a row comes from the same produced row.
    EXPECT_TRUE(torch::equal(batches[i].select(1, 0), batches[i].select(1, 2)));
    for (int64_t id : RowIds(batches[i])) ids.push_back(id);
  }
  EXPECT_EQ(stream->rows_served(), 161);
  std::sort(ids.begin(), ids.end());
  std::vector<int64_t> expected(161);
  for (int64_t i = 0; i < 161; ++i) expected[i] = i;
  EXPECT_EQ(ids, expected);
}

TEST(ActivationStreamTest, MixesRowsFromManyChunks) {
  absl::StatusOr<ActivationStream> stream =
      ActivationStream::Create(NumberedRows(10, 8), Options(80, 2));
  ASSERT_TRUE(stream.ok());
  absl::StatusOr<torch::Tensor> batch = stream->NextBatch(16);
  ASSERT_TRUE(batch.ok());
  std::set<int64_t> chunks;
  for (int64_t id : RowIds(*batch)) chunks.insert(id / 8);
  // 16 rows drawn from 10 chunks of 8: all from <= 4 chunks has probability
  // far below 1e-6; the seed is fixed anyway.
  EXPECT_GE(chunks.size(), 5);
}

TEST(ActivationStreamTest, DeterministicForSeed) {
  auto batches = [](uint64_t seed) {
    absl::StatusOr<ActivationStream> stream =
        ActivationStream::Create(NumberedRows(12, 5), Options(24, seed));
    EXPECT_TRUE(stream.ok());
    return Drain(*stream, 8);
  };
  const std::vector<torch::Tensor> first = batches(7);
  const std::vector<torch::Tensor> again = batches(7);
  const std::vector<torch::Tensor> other = batches(8);
  ASSERT_EQ(first.size(), again.size());
  ASSERT_EQ(first.size(), other.size());
  bool all_equal_to_other = true;
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_TRUE(torch::equal(first[i], again[i])) << "batch " << i;
    all_equal_to_other &= torch::equal(first[i], other[i]);
  }
  EXPECT_FALSE(all_equal_to_other);
}

TEST(ActivationStreamTest, PeekDoesNotConsume) {
  absl::StatusOr<ActivationStream> stream =
      ActivationStream::Create(NumberedRows(4, 10), Options(40, 3));
  ASSERT_TRUE(stream.ok());
  absl::StatusOr<torch::Tensor> peeked = stream->Peek(5);
  ASSERT_TRUE(peeked.ok());
  ASSERT_EQ(peeked->size(0), 5);
  absl::StatusOr<torch::Tensor> batch = stream->NextBatch(10);
  ASSERT_TRUE(batch.ok());
  EXPECT_TRUE(torch::equal(*peeked, batch->narrow(0, 0, 5)));
  EXPECT_EQ(stream->rows_served(), 10);
}

TEST(ActivationStreamTest, BufferSizeFromBytes) {
  ActivationStreamOptions options;
  options.buffer_bytes = 10 * kWidth * sizeof(float);  // 10 rows
  options.refill_fraction = 0;
  absl::StatusOr<ActivationStream> stream =
      ActivationStream::Create(NumberedRows(3, 10), options);
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE(stream->NextBatch(4).ok());
  // A batch larger than the 10-row buffer is refused.
  EXPECT_EQ(stream->NextBatch(11).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Drain(*stream, 4).size(), 7);  // 26 remaining rows
}

TEST(ActivationStreamTest, EmptySource) {
  absl::StatusOr<ActivationStream> stream =
      ActivationStream::Create(NumberedRows(0, 4), Options(8, 0));
  ASSERT_TRUE(stream.ok());
  absl::StatusOr<torch::Tensor> batch = stream->NextBatch(4);
  ASSERT_TRUE(batch.ok());
  EXPECT_FALSE(batch->defined());
}

TEST(ActivationStreamTest, InvalidOptionsNameTheField) {
  ActivationStreamOptions options;
  options.refill_fraction = 1.5;
  absl::StatusOr<ActivationStream> stream =
      ActivationStream::Create(NumberedRows(1, 1), options);
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(stream.status().message()),
              HasSubstr("refill_fraction"));
  options = ActivationStreamOptions();
  options.buffer_rows = -1;
  EXPECT_THAT(std::string(ActivationStream::Create(NumberedRows(1, 1), options)
                              .status()
                              .message()),
              HasSubstr("buffer_rows"));
  options = ActivationStreamOptions();
  options.buffer_bytes = 0;
  EXPECT_THAT(std::string(ActivationStream::Create(NumberedRows(1, 1), options)
                              .status()
                              .message()),
              HasSubstr("buffer_bytes"));
}

TEST(ActivationStreamTest, SourceErrorsAndBadChunksStopTheStream) {
  int calls = 0;
  absl::StatusOr<ActivationStream> failing = ActivationStream::Create(
      [&]() -> absl::StatusOr<torch::Tensor> {
        if (++calls == 1) return torch::zeros({4, kWidth});
        return absl::DataLossError("token file truncated");
      },
      Options(8, 0));
  ASSERT_TRUE(failing.ok());
  EXPECT_EQ(failing->NextBatch(2).status().code(), absl::StatusCode::kDataLoss);

  calls = 0;
  absl::StatusOr<ActivationStream> ragged = ActivationStream::Create(
      [&]() -> absl::StatusOr<torch::Tensor> {
        return torch::zeros({4, ++calls == 1 ? kWidth : kWidth + 1});
      },
      Options(8, 0));
  ASSERT_TRUE(ragged.ok());
  const absl::Status status = ragged->NextBatch(2).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("[rows, 3]"));
}

// The LM-backed source: every streamed row is one of the activations
// collected directly at the same contexts, and all of them are streamed.
TEST(ActivationStreamTest, LanguageModelRowsComeFromTheCollectedSet) {
  std::string dir = ::testing::TempDir() + "/stream_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string token_path = dir + "/tokens.u16";
  {
    std::vector<uint16_t> ids(400);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = (i * 7 + i / 3) % 20;
    std::ofstream(token_path, std::ios::binary)
        .write(reinterpret_cast<const char*>(ids.data()), ids.size() * 2);
  }
  absl::StatusOr<format::TokenFile> tokens =
      format::TokenFile::Open(token_path, format::TokenDtype::kUint16);
  ASSERT_TRUE(tokens.ok()) << tokens.status();

  format::ModelConfig config;
  config.architecture = "gpt2";
  config.vocab_size = 20;
  config.hidden_size = 8;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.intermediate_size = 32;
  config.max_position_embeddings = 16;
  config.hidden_act = "gelu_new";
  const Gpt2Model model = Gpt2Model::RandomInit(config, 5, torch::kCPU);
  const int context_length = 10;
  const std::vector<int64_t> starts = {0, 33, 100, 250, 7, 390, 120, 64};
  const HookPoint hook{1, HookSite::kResidPre};

  absl::StatusOr<torch::Tensor> contexts =
      GatherContexts(*tokens, starts, context_length, config.vocab_size);
  ASSERT_TRUE(contexts.ok());
  const torch::Tensor collected =
      CollectActivations(model, *contexts, hook, 3, torch::kCPU);
  ASSERT_EQ(collected.size(0), 80);

  absl::StatusOr<ActivationStream> stream = ActivationStream::Create(
      ContextActivationSource(model, *tokens, starts, context_length, hook,
                              /*contexts_per_forward=*/3, torch::kCPU),
      Options(32, 9));
  ASSERT_TRUE(stream.ok());
  const std::vector<torch::Tensor> batches = Drain(*stream, 16);
  ASSERT_EQ(batches.size(), 5);
  const torch::Tensor streamed = torch::cat(batches);
  ASSERT_EQ(streamed.sizes(), collected.sizes());
  // The streamed rows are the collected rows as a multiset (contexts that
  // start with the same token share their first row): every collected row
  // occurs as often among the streamed rows as among the collected ones.
  // The forward passes are identical, so rows match bit for bit.
  auto equal_rows = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a.unsqueeze(1) == b.unsqueeze(0)).all(-1);
  };
  EXPECT_TRUE(torch::equal(equal_rows(streamed, collected).sum(0),
                           equal_rows(collected, collected).sum(0)));
  // The stream shuffled them.
  EXPECT_FALSE(torch::allclose(streamed, collected));
}

}  // namespace
}  // namespace saetrack::engine
