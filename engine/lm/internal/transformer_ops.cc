#include "engine/lm/internal/transformer_ops.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "format/mapped_file.h"

namespace saetrack::engine::internal {

absl::StatusOr<torch::Tensor> LoadCheckpointTensor(
    const format::SafetensorsCheckpoint& checkpoint, const std::string& dir,
    const std::string& name, const std::vector<int64_t>& expected_shape,
    const torch::Device& device) {
  absl::StatusOr<const format::TensorView*> found = checkpoint.Get(name);
  if (!found.ok()) {
    // A checkpoint without one of the architecture's tensors is malformed.
    return absl::DataLossError(
        absl::StrCat(dir, ": ", found.status().message()));
  }
  const format::TensorView* view = *found;
  torch::Dtype dtype;
  switch (view->dtype) {
    case format::Dtype::kF32:
      dtype = torch::kFloat32;
      break;
    case format::Dtype::kF16:
      dtype = torch::kFloat16;
      break;
    case format::Dtype::kBF16:
      dtype = torch::kBFloat16;
      break;
    default:
      return absl::DataLossError(absl::StrCat(
          dir, ": tensor \"", name, "\" (at byte ", view->file_offset,
          ") has dtype ", format::DtypeName(view->dtype),
          ", expected F32, F16 or BF16"));
  }
  if (view->shape != expected_shape) {
    return absl::DataLossError(absl::StrCat(
        dir, ": tensor \"", name, "\" (at byte ", view->file_offset,
        ") has shape [", absl::StrJoin(view->shape, ", "), "], expected [",
        absl::StrJoin(expected_shape, ", "), "] from config.json"));
  }
  // Copy rather than from_blob: the mapped bytes need not be aligned for the
  // element type, and the mapping may go away before the model does.
  torch::Tensor tensor = torch::empty(view->shape, torch::dtype(dtype));
  std::memcpy(tensor.data_ptr(), view->bytes.data(), view->bytes.size());
  // NaN or Inf weights would train SAEs on NaN activations and store them.
  const torch::Tensor bad = torch::logical_not(torch::isfinite(tensor));
  if (bad.any().item<bool>()) {
    const int64_t first = bad.flatten().nonzero()[0].item<int64_t>();
    return absl::DataLossError(absl::StrCat(
        dir, ": tensor \"", name, "\" (at byte ", view->file_offset, ") holds ",
        bad.sum().item<int64_t>(),
        " NaN or infinite value(s), the first at element ", first));
  }
  return tensor.to(device, torch::kFloat32);
}

torch::Tensor Activation(const std::string& name, const torch::Tensor& x) {
  if (name == "gelu") return torch::gelu(x);
  if (name == "relu") return torch::relu(x);
  // gelu_new, gelu_fast, gelu_pytorch_tanh: the tanh approximation.
  return torch::gelu(x, "tanh");
}

torch::Tensor CausalSelfAttention(const torch::Tensor& q,
                                  const torch::Tensor& k,
                                  const torch::Tensor& v) {
  const int64_t batch = q.size(0);
  const int64_t heads = q.size(1);
  const int64_t seq = q.size(2);
  const int64_t head_dim = q.size(3);
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) /
                         std::sqrt(static_cast<double>(head_dim));
  const torch::Tensor future =
      torch::ones({seq, seq}, torch::dtype(torch::kBool).device(q.device()))
          .triu(1);
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  return torch::matmul(torch::softmax(scores, -1), v)
      .permute({0, 2, 1, 3})
      .reshape({batch, seq, heads * head_dim});
}

absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<std::pair<std::string, torch::Tensor>>& named_tensors) {
  format::SafetensorsWriter writer;
  // HF's save_pretrained marks PyTorch checkpoints this way.
  writer.SetMetadata("format", "pt");
  for (const auto& [name, tensor] : named_tensors) {
    torch::Tensor cpu =
        tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    SAETRACK_RETURN_IF_ERROR(writer.AddF32(
        name, std::vector<int64_t>(cpu.sizes().begin(), cpu.sizes().end()),
        cpu.data_ptr<float>()));
  }
  return writer.Serialize();
}

absl::Status SaveHuggingFace(
    const std::string& dir, const std::string& config_json,
    const std::vector<std::pair<std::string, torch::Tensor>>& named_tensors) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", dir));
  }
  SAETRACK_ASSIGN_OR_RETURN(const std::string weights,
                            SerializeSafetensors(named_tensors));
  SAETRACK_RETURN_IF_ERROR(format::WriteFileAtomically(
      absl::StrCat(dir, "/model.safetensors"), weights));
  return format::WriteFileAtomically(absl::StrCat(dir, "/config.json"),
                                     config_json);
}

}  // namespace saetrack::engine::internal
