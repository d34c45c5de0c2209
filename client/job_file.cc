#include "client/job_file.h"

#include <google/protobuf/util/json_util.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "format/json.h"

namespace saetrack::client {
namespace {

namespace pb = google::protobuf;

// A type or field error at `value`, with the byte offset where the value
// starts so that it can be found in a long job file.
absl::Status FieldError(const std::string& path, const std::string& what,
                        const format::JsonValue& value) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": ", what, " (value at byte ", value.offset(), ")"));
}

// Checks that every key of `value` names a field of `descriptor` and that each
// value has the field's JSON type, so that a typo is reported with its path
// and offset instead of protobuf's context-free "Cannot find field".
absl::Status CheckFields(const format::JsonValue& value,
                         const pb::Descriptor& descriptor,
                         const std::string& path);

absl::Status CheckScalar(const format::JsonValue& value,
                         const pb::FieldDescriptor& field,
                         const std::string& path) {
  using FD = pb::FieldDescriptor;
  switch (field.cpp_type()) {
    case FD::CPPTYPE_MESSAGE:
      if (!value.is_object()) {
        return FieldError(path, "expected an object", value);
      }
      return CheckFields(value, *field.message_type(), path);
    case FD::CPPTYPE_STRING:
      if (!value.is_string()) {
        return FieldError(path, "expected a string", value);
      }
      return absl::OkStatus();
    case FD::CPPTYPE_BOOL:
      if (!value.is_bool()) {
        return FieldError(path, "expected true or false", value);
      }
      return absl::OkStatus();
    case FD::CPPTYPE_ENUM:
      if (!value.is_string() ||
          field.enum_type()->FindValueByName(value.string_value()) == nullptr) {
        std::string names;
        for (int i = 0; i < field.enum_type()->value_count(); ++i) {
          absl::StrAppend(&names, i ? ", " : "",
                          field.enum_type()->value(i)->name());
        }
        return FieldError(path, absl::StrCat("expected one of ", names), value);
      }
      return absl::OkStatus();
    case FD::CPPTYPE_DOUBLE:
    case FD::CPPTYPE_FLOAT:
      if (!value.is_number()) {
        return FieldError(path, "expected a number", value);
      }
      return absl::OkStatus();
    default:  // Integers; protobuf also accepts them as strings.
      if (!value.is_string() && !value.AsInt64().has_value()) {
        return FieldError(path, "expected an integer", value);
      }
      return absl::OkStatus();
  }
}

absl::Status CheckFields(const format::JsonValue& value,
                         const pb::Descriptor& descriptor,
                         const std::string& path) {
  for (const auto& [key, child] : value.members()) {
    const pb::FieldDescriptor* field = descriptor.FindFieldByName(key);
    for (int i = 0; field == nullptr && i < descriptor.field_count(); ++i) {
      if (descriptor.field(i)->json_name() == key) field = descriptor.field(i);
    }
    const std::string child_path = path.empty() ? key : path + "." + key;
    if (field == nullptr) return FieldError(child_path, "unknown field", child);
    if (child.is_null()) continue;
    if (field->is_repeated()) {
      if (!child.is_array()) {
        return FieldError(child_path, "expected a list", child);
      }
      for (size_t i = 0; i < child.array().size(); ++i) {
        absl::Status s = CheckScalar(child.array()[i], *field,
                                     absl::StrCat(child_path, "[", i, "]"));
        if (!s.ok()) return s;
      }
      continue;
    }
    absl::Status s = CheckScalar(child, *field, child_path);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty()) return path;
  std::filesystem::path p(path);
  if (p.is_relative()) p = std::filesystem::path(base_dir) / p;
  return std::filesystem::absolute(p).lexically_normal().string();
}

absl::Status Prefixed(const std::string& origin, const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrCat(origin, ": ", status.message()));
}

}  // namespace

absl::StatusOr<v1::JobSpec> ParseJobSpec(std::string_view text,
                                         std::string_view origin_view,
                                         const std::string& base_dir) {
  // Debian's absl has its own string_view, which StrCat wants.
  const std::string origin(origin_view);
  // Our own parser first: it reports the byte offset of a syntax error, and
  // of every value, for the field errors below.
  absl::StatusOr<format::JsonValue> tree = format::ParseJson(text, origin);
  if (!tree.ok()) return tree.status();
  if (!tree->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": a job file must hold a JSON object"));
  }
  absl::Status fields = CheckFields(*tree, *v1::JobSpec::descriptor(), "");
  if (!fields.ok()) return Prefixed(origin, fields);

  v1::JobSpec spec;
  auto parsed = pb::util::JsonStringToMessage(
      pb::StringPiece(text.data(), text.size()), &spec);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": ", parsed.message().as_string()));
  }
  for (auto& checkpoint : *spec.mutable_model()->mutable_checkpoints()) {
    checkpoint.set_path(Resolve(base_dir, checkpoint.path()));
  }
  // has_follow(): a following job is told apart by the field's presence, so
  // a spec without it must stay without it.
  if (spec.model().has_follow()) {
    auto* follow = spec.mutable_model()->mutable_follow();
    follow->set_dir(Resolve(base_dir, follow->dir()));
  }
  auto* data = spec.mutable_data();
  data->set_tokens_path(Resolve(base_dir, data->tokens_path()));
  data->set_tokenizer_path(Resolve(base_dir, data->tokenizer_path()));
  return spec;
}

absl::StatusOr<v1::JobSpec> LoadJobFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot read job file"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::filesystem::path base =
      std::filesystem::absolute(std::filesystem::path(path)).parent_path();
  return ParseJobSpec(buffer.str(), path, base.string());
}

}  // namespace saetrack::client
