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
# ctest runs $jobs tests at once; LibTorch's OpenMP threads would otherwise
# spin against each other (a 0.4 s engine test took 25 s that way).
export OMP_NUM_THREADS=1
ctest --output-on-failure -j"$jobs" "$@"
