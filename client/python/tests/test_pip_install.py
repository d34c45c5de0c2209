"""`pip install ./client/python` works offline with Debian's setuptools: the
package is built from a copy of client/python (so that the source tree is
left clean) into a fresh virtual environment that sees Debian's grpcio,
protobuf and numpy, with the stubs generated from proto/ by setup.py."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.dirname(HERE)
PROTO_DIR = os.path.join(PACKAGE_DIR, "..", "..", "proto")


class PipInstallTest(unittest.TestCase):

    def test_installs_and_imports_outside_the_build_tree(self):
        root = tempfile.mkdtemp(prefix="saetrack-python-pip.")
        self.addCleanup(shutil.rmtree, root)
        source = os.path.join(root, "src")
        shutil.copytree(PACKAGE_DIR, source, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__"))
        venv = os.path.join(root, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                        venv], check=True, timeout=120)
        python = os.path.join(venv, "bin", "python")
        env = dict(os.environ, SAETRACK_PROTO_DIR=PROTO_DIR)
        env.pop("PYTHONPATH", None)  # Not the build tree's package.
        install = subprocess.run(
            [python, "-m", "pip", "install", "--no-index",
             "--no-build-isolation", "--quiet", source],
            capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(install.returncode, 0, install.stderr)
        check = subprocess.run(
            [python, "-c",
             "import saetrack, saetrack.v1.query_pb2_grpc as q; "
             "print(saetrack.__file__); print(saetrack.__version__); "
             "print(q.QueryServiceStub.__name__)"],
            capture_output=True, text=True, env=env, cwd=root, timeout=60)
        self.assertEqual(check.returncode, 0, check.stderr)
        path, version, stub = check.stdout.split()
        self.assertTrue(path.startswith(venv), path)
        self.assertEqual(version, "0.1.0")
        self.assertEqual(stub, "QueryServiceStub")


if __name__ == "__main__":
    unittest.main(verbosity=2)
