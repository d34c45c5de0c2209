// The one mapping between absl::Status and grpc::Status. Both enums share the
// canonical code numbering, so the mapping is exact in both directions; it
// lives here so that the server and every client agree on it.
#ifndef SAETRACK_PROTO_STATUS_MAPPING_H_
#define SAETRACK_PROTO_STATUS_MAPPING_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace saetrack {

// Same code, same message. An OK status maps to OK.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Same code, same message. Codes outside the canonical range map to kUnknown.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace saetrack

#endif  // SAETRACK_PROTO_STATUS_MAPPING_H_
