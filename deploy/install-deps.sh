#!/usr/bin/env bash
# Installs every Debian (bookworm) package that saetrack's build, tests, benchmarks
# and demo need. Idempotent: when everything is present it prints nothing and
# touches nothing. Works as root or through sudo.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  # gRPC + protobuf. The gRPC CMake config fails unless protobuf-compiler-grpc
  # (grpc_cpp_plugin) is installed as well.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev
  libabsl-dev
  # Security of the API: SHA-256 of bearer tokens and random tokens
  # (libssl-dev); the tests and "Securing a fleet" make certificates with
  # the openssl command.
  libssl-dev openssl
  # Packaged libraries instead of hand-written infrastructure: JSON
  # (format/json), Unicode normalisation and character classes (the
  # tokenizer), small dense linear algebra (analysis/), sub-command parsing
  # (the CLI).
  nlohmann-json3-dev libicu-dev libeigen3-dev libcli11-dev
  libtorch-dev
  # Debian's LibTorch links the generic libblas.so.3, which defaults to the
  # reference BLAS (~5 GFLOP/s on two cores). libopenblas0-openmp switches the
  # libblas.so.3 alternative to OpenBLAS: LibTorch's matmuls get ~30x faster
  # (~160-180 GFLOP/s on the same two cores). Without it SAE training crawls.
  libopenblas0-openmp
  prometheus-cpp-dev
  libgtest-dev libgmock-dev
  libbenchmark-dev
  # clang with its runtime: libFuzzer + ASan/UBSan for the safetensors fuzz
  # test (deploy/fuzz.sh, run by ctest for 30 s).
  clang libclang-rt-14-dev
  python3
  # The Python client (client/python, import saetrack) and its tests: Debian's
  # grpcio/protobuf/numpy at run time, pandas for tables, matplotlib for the
  # example's plot; protobuf-compiler-grpc (above) ships grpc_python_plugin,
  # which generates its stubs (python3-grpc-tools' bundled protoc is too old
  # for proto3 `optional`); venv, setuptools and wheel for the offline
  # `pip install ./client/python` test; openssl makes the TLS test's
  # certificates.
  python3-grpcio python3-protobuf python3-numpy python3-pandas
  python3-matplotlib python3-venv python3-setuptools python3-wheel openssl
  # deploy/check-deploy.sh (run by ctest): promtool checks the Prometheus
  # config, the alert rules and a live scrape of both binaries; yamllint the
  # YAML under deploy/; curl scrapes /metrics. Debian ships promtool only in
  # the prometheus package, whose Prometheus daemon saetrack does not need: on
  # a host booted with systemd installing it also enables and starts
  # prometheus.service (port 9090; `systemctl disable --now prometheus` stops
  # it), in a container or chroot without systemd nothing starts.
  prometheus yamllint curl
  # saetrack-web (web/): cpp-httplib for HTTP, and Debian's Chromium for the
  # browser test (web/test, driven by playwright-core from npm; never a
  # downloaded browser).
  libcpp-httplib-dev chromium
)
# The front end (web/frontend) is built with npm (Vite, TypeScript). Debian's
# nodejs and npm only where no node is installed already (a newer Node from
# elsewhere is kept).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
