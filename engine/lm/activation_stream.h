// Feeds an SAE trainer shuffled activation rows. Activations arrive in
// chunks (one LM forward pass each), in context order, so consecutive rows
// are strongly correlated; the stream mixes them in a buffer of many
// chunks on the compute device and serves batches of random rows from it.
//
// Mixing (as in SAELens): the buffer is filled, then batches are drawn in a
// random order; when fewer than `refill_fraction` of its rows are left, the
// served slots are refilled from the source and the remaining and new rows
// are reshuffled together. Each produced row is served exactly once; the
// order depends only on the produced rows and the seed.
#ifndef SAETRACK_ENGINE_LM_ACTIVATION_STREAM_H_
#define SAETRACK_ENGINE_LM_ACTIVATION_STREAM_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"

namespace saetrack::engine {

// Produces the next chunk of activation rows [n, d] (float32, any device,
// the same d every time), or an undefined tensor when the source is
// exhausted. An error status stops the stream and is returned by NextBatch.
using ActivationSource = std::function<absl::StatusOr<torch::Tensor>()>;

struct ActivationStreamOptions {
  // --- behaviour ---
  // Rows the mixing buffer holds. When 0, buffer_bytes / (4 * d) rows.
  // Always at least one batch.
  int64_t buffer_rows = 0;
  // Size of the mixing buffer in bytes when buffer_rows is 0. Memory peaks at
  // the buffer plus one source chunk.
  int64_t buffer_bytes = int64_t{256} << 20;
  // Refill when fewer than this fraction of the buffer's rows are unserved
  // (or fewer than one batch). In [0, 1]; higher mixes better, costs more
  // shuffles.
  double refill_fraction = 0.5;
  // Seeds the shuffles (a private generator; LibTorch's global one is not
  // touched).
  uint64_t seed = 0;
  // Where the buffer lives and batches are returned: the trainer's device.
  torch::Device device = torch::kCPU;
};

// Move-only. Not thread-safe. Holds the source (and whatever it references)
// for its lifetime.
class ActivationStream {
 public:
  // Errors: kInvalidArgument naming the option for a negative buffer size,
  // both sizes 0, or refill_fraction outside [0, 1].
  static absl::StatusOr<ActivationStream> Create(
      ActivationSource source, const ActivationStreamOptions& options);

  ActivationStream(ActivationStream&&) = default;
  ActivationStream& operator=(ActivationStream&&) = default;

  // The next `batch_size` rows [batch_size, d] on options.device, fewer only
  // for the last batch of the stream; an undefined tensor once every row has
  // been served. The batch is a fresh tensor, not a view of the buffer.
  // Errors: the source's error; kInvalidArgument when a chunk is not a 2-D
  // float32 tensor of the first chunk's width, or batch_size is not positive
  // or exceeds the buffer (sized at the first call to hold at least one
  // batch).
  absl::StatusOr<torch::Tensor> NextBatch(int64_t batch_size);

  // Up to `max_rows` of the rows to be served next, without consuming them
  // (they are still served later): a random sample of the buffer, e.g. for
  // initialising an SAE's b_dec. Fills the buffer first if needed. Undefined
  // when the source is empty. Errors: as NextBatch.
  absl::StatusOr<torch::Tensor> Peek(int64_t max_rows);

  // Rows served by NextBatch so far.
  int64_t rows_served() const { return rows_served_; }

 private:
  ActivationStream(ActivationSource source,
                   const ActivationStreamOptions& options);

  // Refills free slots from the source and reshuffles the unserved rows when
  // fewer than max(batch_size, refill threshold) are left.
  absl::Status MaybeRefill(int64_t batch_size);
  // Allocates the buffer once the first chunk tells the row width.
  absl::Status Allocate(const torch::Tensor& first_chunk, int64_t batch_size);

  ActivationSource source_;
  ActivationStreamOptions options_;
  at::Generator generator_;
  bool source_exhausted_ = false;
  // Rows of a chunk that did not fit into the buffer, for the next refill.
  torch::Tensor carry_;
  torch::Tensor buffer_;  // [capacity, d] on options_.device
  // Buffer slots of unserved rows, in serving order (int64 on the device);
  // order_[next_:] are still to be served.
  torch::Tensor order_;
  int64_t next_ = 0;
  // Slots never filled (only when the source ran dry before the buffer was
  // full); together with order_[:next_] they are the free slots.
  torch::Tensor empty_slots_;
  int64_t rows_served_ = 0;
};

}  // namespace saetrack::engine

#endif  // SAETRACK_ENGINE_LM_ACTIVATION_STREAM_H_
