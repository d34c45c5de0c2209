"""Protobuf answers as plain Python: dicts with the CLI's --json field names,
and tables (pandas DataFrames, or dicts of numpy arrays without pandas)."""

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

try:  # pandas is optional.
    import pandas as _pd
except ImportError:  # pragma: no cover - depends on the installation
    _pd = None

_INT64_TYPES = frozenset((
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
))
_FLOAT_TYPES = frozenset(
    (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT))


def have_pandas() -> bool:
    """True when tables come back as pandas DataFrames."""
    return _pd is not None


def to_dict(message: Message) -> Dict[str, Any]:
    """`message` as the CLI's --json prints it, parsed: proto field names
    (snake_case), enums as their names, fields at their default values
    included (unset sub-messages and unset optional fields left out).

    Unlike proto JSON, which writes 64-bit integers as strings, steps and
    counts are ints; NaN and infinities are floats.
    """
    d = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        including_default_value_fields=True)
    _fix_numbers(message.DESCRIPTOR, d)
    return d


def _fix_numbers(descriptor, d: Dict[str, Any]) -> None:
    fields = descriptor.fields_by_name
    for key, value in d.items():
        field = fields.get(key)
        if field is None:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            if isinstance(value, list):
                for item in value:
                    _fix_numbers(field.message_type, item)
            elif isinstance(value, dict):
                _fix_numbers(field.message_type, value)
        elif field.type in _INT64_TYPES:
            d[key] = ([int(v) for v in value] if isinstance(value, list)
                      else int(value))
        elif field.type in _FLOAT_TYPES:
            if isinstance(value, list):
                d[key] = [float(v) for v in value]
            elif isinstance(value, str):  # "NaN", "Infinity", "-Infinity"
                d[key] = float(value)


def optional(message: Message, field: str, default=None):
    """message.field when set (proto3 optional / sub-message), else default."""
    return getattr(message, field) if message.HasField(field) else default


class Column:
    """One column of a table under construction: values and their kind.

    kind: "int" (int64, None allowed: pandas Int64 or float NaN without
    pandas), "float" (None becomes NaN), "bool", "str" or "object". values:
    a list, or a numpy array without None (cast to the kind's dtype).
    """

    __slots__ = ("kind", "values")

    def __init__(self, kind: str):
        self.kind = kind
        self.values: List[Any] = []


def make_table(index_name: str, index: Sequence[int],
               columns: Mapping[str, Column]):
    """A table with one row per index value: a pandas DataFrame indexed by
    `index_name` when pandas is installed, else a dict of numpy arrays whose
    first key is `index_name`."""
    arrays: Dict[str, Any] = {}
    for name, column in columns.items():
        arrays[name] = _array(column)
    if _pd is not None:
        data = {}
        for name, column in columns.items():
            if (column.kind == "int" and
                    not isinstance(column.values, np.ndarray) and
                    any(v is None for v in column.values)):
                data[name] = _pd.array(column.values, dtype="Int64")
            else:
                data[name] = arrays[name]
        return _pd.DataFrame(
            data, index=_pd.Index(np.asarray(index, dtype=np.int64),
                                  name=index_name))
    table = {index_name: np.asarray(index, dtype=np.int64)}
    table.update(arrays)
    return table


_NUMPY_KINDS = {"int": np.int64, "float": np.float64, "bool": bool}


def _array(column: Column) -> np.ndarray:
    values = column.values
    if isinstance(values, np.ndarray):  # Already converted by the caller.
        return values.astype(_NUMPY_KINDS.get(column.kind, values.dtype),
                             copy=False)
    if column.kind == "int":
        if any(v is None for v in values):
            return np.array([math.nan if v is None else v for v in values],
                            dtype=np.float64)
        return np.asarray(values, dtype=np.int64)
    if column.kind == "float":
        return np.array([math.nan if v is None else v for v in values],
                        dtype=np.float64)
    if column.kind == "bool":
        return np.asarray(values, dtype=bool)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def enum_name(enum_type, value: int) -> str:
    """The name of an enum value, as in the CLI's --json."""
    return enum_type.Name(value)


def rows_to_table(index_name: str, rows: Iterable[Dict[str, Any]],
                  kinds: Mapping[str, str]):
    """A table from dict rows; `kinds` names each column's kind (see
    Column), in column order. The index comes from each row's index_name."""
    index: List[int] = []
    columns = {name: Column(kind) for name, kind in kinds.items()}
    for row in rows:
        index.append(row[index_name])
        for name, column in columns.items():
            column.values.append(row.get(name))
    return make_table(index_name, index, columns)


def field_kinds(descriptor, skip: Sequence[str] = (),
                prefix: str = "") -> Dict[str, str]:
    """Column kinds of a message's scalar fields (repeated and message
    fields left out), keyed prefix + field name."""
    kinds: Dict[str, str] = {}
    for field in descriptor.fields:
        if field.name in skip or field.label == FieldDescriptor.LABEL_REPEATED:
            continue
        t = field.type
        if t == FieldDescriptor.TYPE_MESSAGE:
            continue
        if t in _FLOAT_TYPES:
            kind = "float"
        elif t == FieldDescriptor.TYPE_BOOL:
            kind = "bool"
        elif t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM,
                   FieldDescriptor.TYPE_BYTES):
            kind = "str"
        else:
            kind = "int"
        kinds[prefix + field.name] = kind
    return kinds


def scalar_values(message: Message, descriptor, prefix: str = "",
                  out: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The scalar fields of `message` (None for an unset optional field,
    enum names as strings), keyed prefix + field name; every field None when
    `message` is None."""
    if out is None:
        out = {}
    for field in descriptor.fields:
        if (field.label == FieldDescriptor.LABEL_REPEATED or
                field.type == FieldDescriptor.TYPE_MESSAGE):
            continue
        key = prefix + field.name
        if message is None or (field.has_presence and
                               not message.HasField(field.name)):
            out[key] = None
            continue
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_ENUM:
            value = field.enum_type.values_by_number[value].name
        out[key] = value
    return out
