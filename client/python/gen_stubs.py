#!/usr/bin/env python3
"""Generates the saetrack.v1 Python stubs from proto/ with Debian's protoc
and grpc_python_plugin (Debian's python3-grpc-tools bundles a protoc too old
for proto3 `optional`). Used by the CMake build (into build/python) and by
setup.py (pip install ./client/python). The stubs are never edited by hand.

    gen_stubs.py --proto_dir proto --out build/python
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys


def generate(proto_dir: str, out: str, protoc: str = "protoc",
             plugin: str = "grpc_python_plugin") -> None:
    """Writes OUT/saetrack/v1/{*_pb2,*_pb2_grpc,__init__}.py from
    PROTO_DIR/saetrack/v1/*.proto. Raises RuntimeError when a tool is
    missing or protoc fails."""
    protos = sorted(glob.glob(os.path.join(proto_dir, "saetrack", "v1",
                                           "*.proto")))
    if not protos:
        raise RuntimeError(f"no .proto files under {proto_dir}/saetrack/v1")
    protoc_path = shutil.which(protoc)
    plugin_path = shutil.which(plugin)
    if protoc_path is None:
        raise RuntimeError(f"{protoc} not found (Debian: protobuf-compiler)")
    if plugin_path is None:
        raise RuntimeError(
            f"{plugin} not found (Debian: protobuf-compiler-grpc)")
    package_dir = os.path.join(out, "saetrack", "v1")
    os.makedirs(package_dir, exist_ok=True)
    # -I proto: the generated modules import each other as saetrack.v1.*,
    # which is this package's own saetrack.v1.
    subprocess.run([protoc_path, f"-I{proto_dir}", f"--python_out={out}",
                    f"--grpc_out={out}",
                    f"--plugin=protoc-gen-grpc={plugin_path}"] + protos,
                   check=True)
    with open(os.path.join(package_dir, "__init__.py"), "w") as f:
        f.write('"""saetrack.v1 stubs, generated from proto/ by '
                'gen_stubs.py."""\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--protoc", default="protoc")
    parser.add_argument("--plugin", default="grpc_python_plugin")
    args = parser.parse_args()
    try:
        generate(args.proto_dir, args.out, args.protoc, args.plugin)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"gen_stubs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
