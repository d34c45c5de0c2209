#!/usr/bin/env bash
# The feature page of a 150-checkpoint job in headless Chromium: seeds a
# coordinator database with a synthetic analysed job (query_load_bench
# --dir: 150 checkpoints, every point with 25 top contexts), serves it with
# saetrack-coordinator + saetrack-web and loads the feature page cold
# (feature_page_bench.mjs). Prints p50/p90 of first contentful paint, the
# feature data fetch and the rendered page.
#   web/bench/feature_page_bench.sh [--bin build/bin] [--features 16384]
#       [--checkpoints 150] [--loads 10] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=build/bin
features=16384
checkpoints=150
node_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=${2:?}; shift ;;
    --features) features=${2:?}; shift ;;
    --checkpoints) checkpoints=${2:?}; shift ;;
    --loads) node_args+=(--loads "${2:?}"); shift ;;
    --json) node_args+=(--json) ;;
    *) echo "feature_page_bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$dir"
}
trap cleanup EXIT
"$bin/query_load_bench" --dir "$dir" --checkpoints "$checkpoints" \
  --features "$features" --clients 1 --seconds 0.1 >"$dir/seed.log" 2>&1 || true
# Only its fill is wanted: its exit status also reports its own p99 target,
# which a 0.1 s load phase on a busy machine may miss.
grep -q "filled in" "$dir/seed.log" ||
  { echo "feature_page_bench: query_load_bench failed:" >&2; cat "$dir/seed.log" >&2; exit 1; }
"$bin/saetrack-coordinator" --data_dir "$dir/data" --listen 127.0.0.1:0 \
  --metrics_listen "" --port_file "$dir/ports" 2>"$dir/coordinator.log" &
pids+=($!)
# A large database takes a while to open.
for _ in $(seq 1200); do grep -q grpc= "$dir/ports" 2>/dev/null && break; sleep 0.1; done
grpc=$(sed -n 's/^grpc=//p' "$dir/ports" 2>/dev/null)
[ -n "$grpc" ] || { echo "feature_page_bench: no coordinator:" >&2; cat "$dir/coordinator.log" >&2; exit 1; }
"$bin/saetrack-web" --coordinator "127.0.0.1:$grpc" --listen 127.0.0.1:0 \
  --port_file "$dir/web-ports" 2>"$dir/web.log" &
pids+=($!)
for _ in $(seq 300); do grep -q http= "$dir/web-ports" 2>/dev/null && break; sleep 0.1; done
http=$(sed -n 's/^http=//p' "$dir/web-ports" 2>/dev/null)
[ -n "$http" ] || { echo "feature_page_bench: no saetrack-web:" >&2; cat "$dir/web.log" >&2; exit 1; }
node web/bench/feature_page_bench.mjs --base "http://127.0.0.1:$http" \
  --job job-000001 --layer 0 --features "$features" "${node_args[@]}"
