#!/usr/bin/env bash
# The README's test command: installs the Debian dependencies, builds saetrack
# (Release, into build/) and runs the whole test suite with ctest.
#   deploy/test.sh [extra ctest args, e.g. -R e2e]
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" "$@"
