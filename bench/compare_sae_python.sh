#!/usr/bin/env bash
# C++ SAE training step (sae_train_bench) vs the same step as a plain
# PyTorch-in-Python loop (bench/reference_sae.py), side by side (DESIGN §9).
#   bench/compare_sae_python.sh [path/to/sae_train_bench]
# Threads: SAETRACK_BENCH_THREADS (default 2) for both.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bench="${1:-}"
if [[ -z "$bench" ]]; then
  for candidate in "$root/build-bench/bin/sae_train_bench" \
                   "$root/build/bin/sae_train_bench"; do
    if [[ -x "$candidate" ]]; then bench="$candidate"; break; fi
  done
fi
if [[ -z "$bench" || ! -x "$bench" ]]; then
  echo "compare_sae_python: sae_train_bench not built (cmake --build <dir> --target sae_train_bench)" >&2
  exit 1
fi
# Debian's python3-torch lives under /usr/bin/python3, which a pyenv or venv
# python3 earlier on PATH would hide; PYTHON overrides both.
python="${PYTHON:-python3}"
if ! "$python" -c 'import torch' 2>/dev/null && [[ -z "${PYTHON:-}" ]] &&
   /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  python=/usr/bin/python3
fi
if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "compare_sae_python: PyTorch for Python missing; apt-get install python3-torch is needed"
  exit 0
fi
export SAETRACK_BENCH_THREADS="${SAETRACK_BENCH_THREADS:-2}"

cpp_json="$("$bench" --benchmark_filter='BM_SaeTrainStep' --benchmark_format=json 2>/dev/null)"
py_json="$("$python" "$here/reference_sae.py" | tail -n 1)"

CPP_JSON="$cpp_json" PY_JSON="$py_json" "$python" - <<'PY'
import json, os
cpp = json.loads(os.environ["CPP_JSON"])
row = next(b for b in cpp["benchmarks"] if b["name"].startswith("BM_SaeTrainStep"))
py = json.loads(os.environ["PY_JSON"])
c, p = row["items_per_second"], py["tokens_per_second"]
print(f"threads           {os.environ['SAETRACK_BENCH_THREADS']}")
print(f"C++ tokens/s      {c:.0f}  (roofline {row['roofline']:.2f})")
print(f"Python tokens/s   {p:.0f}  (torch {py['torch']})")
print(f"C++ / Python      {c / p:.2f}")
PY
