#!/usr/bin/env bash
# Fuzzes the safetensors reader: builds the libFuzzer target
# (format/safetensors_fuzz.cc) with clang, ASan and UBSan in its own
# build dir, then runs it for a bounded time over the checked-in seed corpus.
#   deploy/fuzz.sh [seconds]        (default 30)
# Exit status: 0 when no input crashed; non-zero when one did (libFuzzer's
# report is on stderr and the input is saved under
# BUILD/safetensors_fuzz_artifacts/: copy it into
# format/testdata/safetensors_corpus/ once fixed, so that
# safetensors_corpus_test replays it forever); 77 when clang++ or its libFuzzer
# runtime (libclang-rt-14-dev) is missing, which ctest reports as skipped.
# Environment: SAETRACK_FUZZ_BUILD_DIR (default build-fuzz),
# SAETRACK_FUZZ_JOBS (build parallelism, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
build=${SAETRACK_FUZZ_BUILD_DIR:-build-fuzz}
jobs=${SAETRACK_FUZZ_JOBS:-2}
readonly kSkip=77

if ! command -v clang++ >/dev/null 2>&1 || ! command -v clang >/dev/null 2>&1
then
  echo "fuzz.sh: clang++ not found; skipping (install clang-14)" >&2
  exit "$kSkip"
fi
# clang without compiler-rt compiles but cannot link -fsanitize=fuzzer; find
# out in a second rather than after configuring.
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) {
  return 0; }' >"$probe_dir/probe.cc"
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe_dir/probe.cc" \
    -o "$probe_dir/probe" 2>"$probe_dir/log"; then
  cat "$probe_dir/log" >&2
  echo "fuzz.sh: clang++ cannot link -fsanitize=fuzzer; skipping" \
       "(install libclang-rt-14-dev)" >&2
  exit "$kSkip"
fi

# Only saetrack_format and the fuzz target are built. fuzzer-no-link gives
# the library coverage instrumentation, so libFuzzer can steer into the
# parser; the target adds the fuzzer runtime itself.
start=$(date +%s)
CC=clang CXX=clang++ cmake -S . -B "$build" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all" \
  -DSAETRACK_ENGINE_ONLY=ON -DSAETRACK_BUILD_TESTS=OFF \
  -DSAETRACK_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target safetensors_fuzz
echo "fuzz.sh: configured and built in $(($(date +%s) - start)) s" >&2

# libFuzzer adds new inputs to the first corpus dir, so it is a scratch dir in
# the build tree; the checked-in seeds are read only.
work_corpus="$build/safetensors_fuzz_corpus"
artifacts="$build/safetensors_fuzz_artifacts"
mkdir -p "$work_corpus" "$artifacts"
# The header's vocabulary: without it reaching a valid entry by mutation
# takes far longer than a CI run.
dict="$build/safetensors.dict"
{
  for token in '{' '}' '[' ']' ':' ',' '"dtype"' '"shape"' '"data_offsets"' \
      '"__metadata__"' '"F32"' '"F16"' '"BF16"' '"I64"' '"BOOL"' '"U8"' \
      '"F64"' '"F8_E4M3"' '0' '-1' '1e999' '9223372036854775807' \
      '18446744073709551615' '4294967296'; do
    printf '"%s"\n' "$(printf '%s' "$token" | sed 's/\\/\\\\/g; s/"/\\"/g')"
  done
} >"$dict"

# libFuzzer exits 77 on a crash by default, which ctest would read as
# "skipped": crashes, timeouts and OOMs exit 1 instead.
exec "$build/bin/safetensors_fuzz" \
  -max_total_time="$seconds" \
  -error_exitcode=1 \
  -timeout_exitcode=1 \
  -max_len=8192 \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -dict="$dict" \
  -artifact_prefix="$artifacts/" \
  -print_final_stats=1 \
  "$work_corpus" format/testdata/safetensors_corpus
