#!/usr/bin/env python3
"""Writes the safetensors seed corpus (safetensors_corpus/ beside this script).

The files seed the libFuzzer target (format/safetensors_fuzz.cc) and are
replayed by format/safetensors_corpus_test.cc. A name starting with
"ok_" must parse; one starting with "bad_" must be refused with kDataLoss. The
test pins the error text of each bad_ file, so keep the two lists in step.

Hand-built rather than written by a safetensors library: most seeds are files
no writer would produce. Deterministic, so rerunning it changes nothing.
  format/testdata/make_safetensors_corpus.py
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                   "safetensors_corpus")


def raw(header_text, data=b"", length=None):
    """8-byte little-endian header length, header text, data section."""
    header = header_text.encode() if isinstance(header_text, str) else header_text
    if length is None:
        length = len(header)
    return struct.pack("<Q", length) + header + data


def st(header, data=b""):
    """A file from a header dict, serialised compactly (key order kept)."""
    return raw(json.dumps(header, separators=(",", ":")), data)


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def main():
    files = {}
    # --- Files that must parse.
    files["ok_single_f32"] = st({"w": entry("F32", [2, 3], 0, 24)},
                                f32(1.5, -2, 3.25, 0, 1e-30, -0.0))
    # F16: 1.0, -2.0, smallest subnormal, +inf, NaN, 0.
    files["ok_f16"] = st({"h": entry("F16", [6], 0, 12)},
                         struct.pack("<6H", 0x3C00, 0xC000, 0x0001, 0x7C00,
                                     0x7E00, 0x0000))
    # BF16: 1.0, -2.0, 3.0 (the upper halves of the float32 bits), 0.
    files["ok_bf16"] = st({"b": entry("BF16", [2, 2], 0, 8)},
                          struct.pack("<4H", 0x3F80, 0xC000, 0x4040, 0x0000))
    files["ok_empty"] = raw("{}")
    files["ok_zero_size_tensor"] = st({"z": entry("F32", [0, 4], 0, 0)})
    files["ok_scalar"] = st({"s": entry("F32", [], 0, 4)}, f32(42))
    files["ok_metadata"] = st(
        {"__metadata__": {"format": "pt", "step": "512"},
         "w": entry("F32", [2], 0, 8)}, f32(1, 2))
    # Header order differs from data order; non-float dtypes (which
    # DecodeToFloat refuses) beside float ones; spaces padding the header.
    header = json.dumps({
        "ids": entry("I64", [2], 8, 24),
        "mask": entry("BOOL", [3], 24, 27),
        "bias": entry("F64", [1], 0, 8),
        "bytes": entry("U8", [1], 27, 28),
    }, separators=(",", ":"))
    header += " " * ((8 - len(header) % 8) % 8)
    files["ok_mixed_dtypes_unordered"] = raw(
        header, struct.pack("<d", 0.5) + struct.pack("<2q", -1, 7) +
        b"\x01\x00\x01" + b"\xff")

    # --- Files that must be refused (kDataLoss).
    files["bad_zero_bytes"] = b""
    files["bad_truncated_length"] = b"\x10\x00\x00\x00\x00"
    files["bad_header_length_beyond_file"] = raw("{}", length=1000)
    files["bad_header_length_max"] = raw("{}", length=2**64 - 1)
    files["bad_invalid_json"] = raw('{"w": {"dtype": "F32",')
    files["bad_header_not_object"] = raw("[1, 2]")
    files["bad_entry_not_object"] = st({"w": [1, 2]})
    files["bad_missing_field"] = st({"w": {"dtype": "F32", "shape": [1]}}, f32(1))
    files["bad_unknown_dtype"] = st({"w": entry("F31", [1], 0, 4)}, f32(1))
    files["bad_dtype_not_string"] = st({"w": entry(32, [1], 0, 4)}, f32(1))
    files["bad_shape_negative"] = st({"w": entry("F32", [-1], 0, 4)}, f32(1))
    files["bad_shape_fraction"] = st({"w": entry("F32", [1.5], 0, 4)}, f32(1))
    files["bad_shape_overflow"] = st(
        {"w": entry("F32", [2**32, 2**32], 0, 4)}, f32(1))
    # Elements fit in int64, bytes (elements * 8) do not.
    files["bad_byte_size_overflow"] = st({"w": entry("F64", [2**62], 0, 8)},
                                         b"\0" * 8)
    files["bad_shape_size_mismatch"] = st({"w": entry("F32", [2, 3], 0, 20)},
                                          b"\0" * 20)
    files["bad_offsets_out_of_range"] = st({"w": entry("F32", [2], 0, 8)},
                                           f32(1))
    files["bad_offsets_huge"] = st(
        {"w": entry("F32", [1], 2**63 - 8, 2**63 - 4)}, f32(1))
    files["bad_offsets_beyond_int64"] = st(
        {"w": entry("F32", [1], 2**64 - 4, 2**64)}, f32(1))
    files["bad_offsets_reversed"] = st({"w": entry("F32", [1], 4, 0)}, f32(1))
    files["bad_offsets_negative"] = st({"w": entry("F32", [1], -4, 0)}, f32(1))
    files["bad_offsets_overlap"] = st(
        {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)},
        f32(1, 2, 3))
    files["bad_offsets_gap"] = st(
        {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)},
        f32(1, 2, 3))
    files["bad_unreferenced_tail"] = st({"a": entry("F32", [1], 0, 4)},
                                        f32(1, 2))
    files["bad_duplicate_tensor"] = raw(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(1, 2))
    files["bad_metadata_not_string"] = st({"__metadata__": {"step": 512}})
    files["bad_deeply_nested"] = raw(
        '{"__metadata__":' + "[" * 2000 + "]" * 2000 + "}")

    os.makedirs(OUT, exist_ok=True)
    for name, content in sorted(files.items()):
        with open(os.path.join(OUT, name + ".safetensors"), "wb") as out:
            out.write(content)


if __name__ == "__main__":
    main()
