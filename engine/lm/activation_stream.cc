#include "engine/lm/activation_stream.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace saetrack::engine {

absl::StatusOr<ActivationStream> ActivationStream::Create(
    ActivationSource source, const ActivationStreamOptions& options) {
  if (options.buffer_rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ActivationStreamOptions.buffer_rows must be >= 0, found ",
                     options.buffer_rows));
  }
  if (options.buffer_bytes < 0 ||
      (options.buffer_rows == 0 && options.buffer_bytes == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ActivationStreamOptions.buffer_bytes must be positive when "
        "buffer_rows is 0, found ",
        options.buffer_bytes));
  }
  if (!(options.refill_fraction >= 0 && options.refill_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ActivationStreamOptions.refill_fraction must be in [0, 1], found ",
        options.refill_fraction));
  }
  return ActivationStream(std::move(source), options);
}

ActivationStream::ActivationStream(ActivationSource source,
                                   const ActivationStreamOptions& options)
    : source_(std::move(source)),
      options_(options),
      generator_(at::detail::createCPUGenerator(options.seed)) {}

absl::Status ActivationStream::Allocate(const torch::Tensor& first_chunk,
                                        int64_t batch_size) {
  if (first_chunk.dim() != 2 || first_chunk.scalar_type() != torch::kFloat32) {
    return absl::InvalidArgumentError(
        absl::StrCat("activation source produced a chunk of shape ",
                     c10::str(first_chunk.sizes()), " and dtype ",
                     c10::toString(first_chunk.scalar_type()),
                     "; expected float32 [rows, d]"));
  }
  const int64_t width = first_chunk.size(1);
  int64_t capacity = options_.buffer_rows;
  if (capacity == 0) {
    capacity = options_.buffer_bytes /
               (std::max<int64_t>(width, 1) * int64_t{sizeof(float)});
  }
  capacity = std::max({capacity, batch_size, int64_t{1}});
  const auto on_device = torch::TensorOptions().device(options_.device);
  buffer_ = torch::empty({capacity, width}, on_device.dtype(torch::kFloat32));
  order_ = torch::empty({0}, on_device.dtype(torch::kInt64));
  empty_slots_ = torch::arange(capacity, on_device.dtype(torch::kInt64));
  next_ = 0;
  carry_ = first_chunk;
  return absl::OkStatus();
}

absl::Status ActivationStream::MaybeRefill(int64_t batch_size) {
  if (!buffer_.defined()) {
    if (source_exhausted_) return absl::OkStatus();
    SAETRACK_ASSIGN_OR_RETURN(torch::Tensor first, source_());
    if (!first.defined()) {
      source_exhausted_ = true;
      return absl::OkStatus();
    }
    SAETRACK_RETURN_IF_ERROR(Allocate(first, batch_size));
  }
  const int64_t capacity = buffer_.size(0);
  const int64_t unserved = order_.size(0) - next_;
  const int64_t threshold =
      std::min(capacity,
               std::max(batch_size, static_cast<int64_t>(std::ceil(
                                        options_.refill_fraction * capacity))));
  const bool source_has_rows =
      !source_exhausted_ || (carry_.defined() && carry_.size(0) > 0);
  if (unserved >= threshold || !source_has_rows) return absl::OkStatus();

  // Served slots and never-filled slots take the new rows.
  const torch::Tensor free_slots =
      torch::cat({order_.narrow(0, 0, next_), empty_slots_});
  int64_t filled = 0;
  while (filled < free_slots.size(0)) {
    torch::Tensor chunk;
    if (carry_.defined() && carry_.size(0) > 0) {
      chunk = std::exchange(carry_, torch::Tensor());
    } else if (source_exhausted_) {
      break;
    } else {
      SAETRACK_ASSIGN_OR_RETURN(chunk, source_());
      if (!chunk.defined()) {
        source_exhausted_ = true;
        break;
      }
    }
    if (chunk.dim() != 2 || chunk.scalar_type() != torch::kFloat32 ||
        chunk.size(1) != buffer_.size(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("activation source produced a chunk of shape ",
                       c10::str(chunk.sizes()), " and dtype ",
                       c10::toString(chunk.scalar_type()),
                       "; expected float32 [rows, ", buffer_.size(1), "]"));
    }
    const int64_t take = std::min(chunk.size(0), free_slots.size(0) - filled);
    buffer_.index_copy_(0, free_slots.narrow(0, filled, take),
                        chunk.narrow(0, 0, take).to(options_.device));
    if (take < chunk.size(0)) {
      carry_ = chunk.narrow(0, take, chunk.size(0) - take);
    }
    filled += take;
  }
  empty_slots_ = free_slots.narrow(0, filled, free_slots.size(0) - filled);
  const torch::Tensor live = torch::cat(
      {order_.narrow(0, next_, unserved), free_slots.narrow(0, 0, filled)});
  // The permutation comes from the CPU generator whatever the device, so a
  // seed gives the same order on CPU and GPU.
  const torch::Tensor permutation =
      torch::randperm(live.size(0), generator_, torch::kInt64)
          .to(options_.device);
  order_ = live.index_select(0, permutation);
  next_ = 0;
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> ActivationStream::NextBatch(int64_t batch_size) {
  if (batch_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch size must be positive, found ", batch_size));
  }
  if (buffer_.defined() && batch_size > buffer_.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch size ", batch_size, " exceeds the ",
                     buffer_.size(0), " rows of the activation buffer"));
  }
  SAETRACK_RETURN_IF_ERROR(MaybeRefill(batch_size));
  const int64_t unserved = buffer_.defined() ? order_.size(0) - next_ : 0;
  if (unserved == 0) return torch::Tensor();
  const int64_t rows = std::min(batch_size, unserved);
  torch::Tensor batch = buffer_.index_select(0, order_.narrow(0, next_, rows));
  next_ += rows;
  rows_served_ += rows;
  return batch;
}

absl::StatusOr<torch::Tensor> ActivationStream::Peek(int64_t max_rows) {
  SAETRACK_RETURN_IF_ERROR(MaybeRefill(/*batch_size=*/1));
  const int64_t unserved = buffer_.defined() ? order_.size(0) - next_ : 0;
  if (unserved == 0) return torch::Tensor();
  return buffer_.index_select(
      0, order_.narrow(0, next_, std::min(max_rows, unserved)));
}

}  // namespace saetrack::engine
