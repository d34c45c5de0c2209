"""Builds the saetrack package with its saetrack.v1 stubs generated from the
repository's proto/ (gen_stubs.py) into the build directory; the metadata
is in pyproject.toml."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_stubs  # noqa: E402

PROTO_DIR = os.environ.get("SAETRACK_PROTO_DIR",
                           os.path.join(HERE, "..", "..", "proto"))


class BuildPyWithStubs(build_py):
    """build_py, then the stubs into build_lib/saetrack/v1."""

    def run(self):
        super().run()
        if not os.path.isdir(os.path.join(PROTO_DIR, "saetrack", "v1")):
            raise SystemExit(
                f"saetrack: no protos under {PROTO_DIR}/saetrack/v1: build "
                "from a saetrack checkout (pip install ./client/python) or "
                "set SAETRACK_PROTO_DIR")
        try:
            gen_stubs.generate(PROTO_DIR, self.build_lib)
        except RuntimeError as e:
            raise SystemExit(f"saetrack: {e}")


setup(cmdclass={"build_py": BuildPyWithStubs})
