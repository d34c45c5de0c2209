"""Files of an exported SAE: CRC-32C of the transfer and a safetensors
reader with numpy."""

import json
import os
import struct
import tempfile
from typing import Dict

import numpy as np

try:  # Debian's python3-crc32c, when installed, is much faster.
    import crc32c as _crc32c_module
except ImportError:  # pragma: no cover - depends on the installation
    _crc32c_module = None


def _make_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as the coordinator computes it."""
    if _crc32c_module is not None:
        return _crc32c_module.crc32c(data)
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """The tensors of a .safetensors file as numpy arrays, by name
    (bfloat16 is not supported). Raises ValueError for a malformed file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{path}: header length {header_len} past the end")
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    body = memoryview(data)[8 + header_len:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(
                f"{path}: {name}: dtype {entry['dtype']} unsupported")
        begin, end = entry["data_offsets"]
        array = np.frombuffer(body[begin:end], dtype=dtype)
        tensors[name] = array.reshape(entry["shape"]).copy()
    return tensors


def write_atomically(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a synced temporary file renamed over
    it, so that a reader finds the old file or the whole new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
