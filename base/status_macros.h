// Early-return helpers for absl::Status / absl::StatusOr, private to the
// worker's format and engine libraries.
#ifndef SAETRACK_BASE_STATUS_MACROS_H_
#define SAETRACK_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns the status of `expr` from the enclosing function unless it is OK.
#define SAETRACK_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    const absl::Status saetrack_status_ = (expr);        \
    if (!saetrack_status_.ok()) return saetrack_status_; \
  } while (false)

#define SAETRACK_STATUS_CONCAT_INNER_(a, b) a##b
#define SAETRACK_STATUS_CONCAT_(a, b) SAETRACK_STATUS_CONCAT_INNER_(a, b)

// `lhs = value of expr` (a StatusOr), or returns its error status.
// Usage: SAETRACK_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
#define SAETRACK_ASSIGN_OR_RETURN(lhs, expr) \
  SAETRACK_ASSIGN_OR_RETURN_IMPL_(           \
      SAETRACK_STATUS_CONCAT_(saetrack_statusor_, __LINE__), lhs, expr)

#define SAETRACK_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                    \
  if (!statusor.ok()) return statusor.status();              \
  lhs = *std::move(statusor)

#endif  // SAETRACK_BASE_STATUS_MACROS_H_
