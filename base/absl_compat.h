// Debian's Abseil is built with ABSL_OPTION_USE_STD_STRING_VIEW=0, so
// absl::string_view is a distinct type that std::string_view does not convert
// to (absl::StrCat, SimpleAtoi, ... reject it). Our APIs use std::string_view;
// this bridges the two at call sites.
#ifndef SAETRACK_BASE_ABSL_COMPAT_H_
#define SAETRACK_BASE_ABSL_COMPAT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace saetrack::format {

inline absl::string_view AsAbsl(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}

}  // namespace saetrack::format

#endif  // SAETRACK_BASE_ABSL_COMPAT_H_
