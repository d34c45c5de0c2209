#!/usr/bin/env python3
"""Checks that every source file includes only headers of its own layer or of
the layers below it, and no other module's internal/ headers.

The layers (docs/DESIGN.md, "Layers"), each a top-level folder with one CMake
library; a folder may include itself and what LAYERS lists for it:

  base                      Status macros, absl shims
  format    -> base         torch-free file formats
  analysis  -> format       torch-free feature dynamics and verdicts
  engine    -> analysis     LibTorch: LMs, SAEs, training, evaluation
  storage   -> base         key-value storage (RocksDB, in-memory)
  proto     -> format       the saetrack.v1 API, Status <-> grpc::Status
  server    -> analysis, storage, proto   the coordinator
  worker    -> engine, proto              the worker's RPC loop
  client    -> analysis, proto            client library and CLI
  web       -> proto                      saetrack-web, the feature browser
  tools     -> client, engine             auxiliary binaries
  bench, tests -> anything but another module's internal/

`internal/` headers are private to the folder that holds the internal/
folder: "server/internal/x.h" may be included from server/... only, and
"engine/lm/internal/y.h" from engine/lm/... only.

Usage: check_layering.py [SOURCE_ROOT]. Prints one line per violation
(file:line: what) and exits 1 when there is any, 0 otherwise.
"""
import os
import re
import sys

LAYERS = {
    "base": [],
    "format": ["base"],
    "analysis": ["format"],
    "engine": ["analysis"],
    "storage": ["base"],
    "proto": ["format"],
    "server": ["analysis", "storage", "proto"],
    "worker": ["engine", "proto"],
    "client": ["analysis", "proto"],
    "web": ["proto"],
    "tools": ["client", "engine"],
    "bench": None,  # any layer
    "tests": None,
}

# Generated headers and where they come from: "saetrack/v1/*.pb.h" is the
# proto layer's output.
GENERATED = {"saetrack": "proto"}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
SOURCE_SUFFIXES = (".h", ".cc", ".inc")


def allowed_layers(layer):
    """The layer itself and everything below it (transitively)."""
    seen = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(LAYERS[current] or [])
    return seen


def check_file(root, rel_path, violations):
    layer = rel_path.split("/", 1)[0]
    below = LAYERS[layer]
    allowed = None if below is None else allowed_layers(layer)
    with open(os.path.join(root, rel_path), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            match = INCLUDE.match(line)
            if not match:
                continue
            header = match.group(1)
            top = header.split("/", 1)[0]
            target = GENERATED.get(top, top)
            if target not in LAYERS:
                continue  # a system or third-party header in quotes
            if "/internal/" in header:
                owner = header.split("/internal/", 1)[0] + "/"
                if not rel_path.startswith(owner):
                    violations.append(
                        f"{rel_path}:{number}: includes {header}, private to "
                        f"{owner}")
                    continue
            if allowed is not None and target not in allowed:
                violations.append(
                    f"{rel_path}:{number}: {layer}/ includes {header} of the "
                    f"layer {target}/, which is not below it (allowed: "
                    f"{', '.join(sorted(allowed))})")


def main(argv):
    root = os.path.abspath(argv[1] if len(argv) > 1 else
                           os.path.join(os.path.dirname(__file__), ".."))
    violations = []
    checked = 0
    for layer in sorted(LAYERS):
        top = os.path.join(root, layer)
        for dirpath, dirnames, filenames in os.walk(top):
            # npm's packages (web/frontend) are not saetrack's sources.
            dirnames[:] = [d for d in dirnames if d != "node_modules"]
            for name in sorted(filenames):
                if not name.endswith(SOURCE_SUFFIXES):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                check_file(root, rel.replace(os.sep, "/"), violations)
                checked += 1
    for violation in violations:
        print(violation)
    print(f"check_layering: {checked} files, {len(violations)} violations")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
