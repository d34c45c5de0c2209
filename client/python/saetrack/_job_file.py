"""Job specs from a dict, a JSON string or a job file, with the CLI's rules
(client/job_file.cc): proto field names or their lowerCamelCase JSON names,
an error naming the field's path for an unknown field or a value of the
wrong type, relative paths resolved against the job file's directory (the
current directory for a dict or a string) and made absolute, because the
coordinator may run elsewhere."""

import json
import os
from typing import Any, Mapping, Union

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from saetrack._errors import InvalidArgument, NotFound
from saetrack.v1 import job_pb2

SpecLike = Union[Mapping[str, Any], str, os.PathLike, job_pb2.JobSpec]


def load_job_spec(spec_or_path: SpecLike) -> job_pb2.JobSpec:
    """A JobSpec from `spec_or_path`: a JobSpec, a dict of its fields, a
    JSON string (one starting with "{") or the path of a job file.

    Raises:
      NotFound: the job file cannot be read.
      InvalidArgument: a JSON syntax error (with its offset), an unknown
        field or a value of the wrong type, e.g.
        "job.json: model.checkpoints[1].step: expected an integer".
    """
    if isinstance(spec_or_path, job_pb2.JobSpec):
        spec = job_pb2.JobSpec()
        spec.CopyFrom(spec_or_path)
        return spec
    if isinstance(spec_or_path, Mapping):
        return parse_job_spec(spec_or_path, "spec", os.getcwd())
    if isinstance(spec_or_path, str) and spec_or_path.lstrip().startswith("{"):
        return parse_job_spec(_parse_json(spec_or_path, "spec"), "spec",
                              os.getcwd())
    if isinstance(spec_or_path, (str, os.PathLike)):
        path = os.fspath(spec_or_path)
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            raise NotFound(f"{path}: cannot read job file") from None
        base = os.path.dirname(os.path.abspath(path))
        return parse_job_spec(_parse_json(text, path), path, base)
    raise InvalidArgument(
        "spec: expected a dict, a JSON string, a job file path or a JobSpec, "
        f"not {type(spec_or_path).__name__}")


def parse_job_spec(tree: Mapping[str, Any], origin: str,
                   base_dir: str) -> job_pb2.JobSpec:
    """A JobSpec from a parsed JSON object; see load_job_spec. `origin`
    starts error messages; relative paths resolve against `base_dir`."""
    if not isinstance(tree, Mapping):
        raise InvalidArgument(f"{origin}: a job file must hold a JSON object")
    _check_fields(tree, job_pb2.JobSpec.DESCRIPTOR, "", origin)
    spec = job_pb2.JobSpec()
    try:
        json_format.ParseDict(dict(tree), spec)
    except json_format.ParseError as e:
        raise InvalidArgument(f"{origin}: {e}") from None
    for checkpoint in spec.model.checkpoints:
        checkpoint.path = _resolve(base_dir, checkpoint.path)
    spec.data.tokens_path = _resolve(base_dir, spec.data.tokens_path)
    spec.data.tokenizer_path = _resolve(base_dir, spec.data.tokenizer_path)
    return spec


def _parse_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(
            f"{origin}: JSON syntax error at byte {e.pos}: {e.msg}") from None


def _resolve(base_dir: str, path: str) -> str:
    if not path:
        return path
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return os.path.normpath(os.path.abspath(path))


def _field(descriptor, key: str):
    field = descriptor.fields_by_name.get(key)
    if field is None:
        for f in descriptor.fields:
            if f.json_name == key:
                return f
    return field


def _check_fields(value: Mapping[str, Any], descriptor, path: str,
                  origin: str) -> None:
    for key, child in value.items():
        child_path = f"{path}.{key}" if path else key
        field = _field(descriptor, key)
        if field is None:
            raise InvalidArgument(f"{origin}: {child_path}: unknown field")
        if child is None:
            continue
        if field.label == FieldDescriptor.LABEL_REPEATED:
            if not isinstance(child, list):
                raise InvalidArgument(
                    f"{origin}: {child_path}: expected a list")
            for i, item in enumerate(child):
                _check_scalar(item, field, f"{child_path}[{i}]", origin)
            continue
        _check_scalar(child, field, child_path, origin)


def _check_scalar(value: Any, field, path: str, origin: str) -> None:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_MESSAGE:
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"{origin}: {path}: expected an object")
        _check_fields(value, field.message_type, path, origin)
    elif cpp == FieldDescriptor.CPPTYPE_STRING:
        if not isinstance(value, str):
            raise InvalidArgument(f"{origin}: {path}: expected a string")
    elif cpp == FieldDescriptor.CPPTYPE_BOOL:
        if not isinstance(value, bool):
            raise InvalidArgument(f"{origin}: {path}: expected true or false")
    elif cpp == FieldDescriptor.CPPTYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        if not isinstance(value, str) or value not in names:
            raise InvalidArgument(
                f"{origin}: {path}: expected one of {', '.join(names)}")
    elif cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgument(f"{origin}: {path}: expected a number")
    else:  # Integers; protobuf also accepts them as decimal strings.
        if isinstance(value, str):
            try:
                int(value, 10)
                return
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return
        raise InvalidArgument(f"{origin}: {path}: expected an integer")
