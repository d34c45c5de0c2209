#!/usr/bin/env bash
# Checks what deploy/ ships for running a fleet:
#   - the Prometheus config and alert rules (promtool check config / check
#     rules / test rules), and the PromQL of the Grafana dashboard;
#   - every YAML file under deploy/ (yamllint -s, with the repository's
#     .yamllint), the dashboard JSON, the Slurm script's shell syntax;
#   - a live scrape: starts the coordinator and a worker of BIN_DIR on loopback,
#     runs both /metrics bodies through `promtool check metrics`, and checks
#     that every saetrack_* metric the alerts and the dashboard use exists.
#
#   deploy/check-deploy.sh BIN_DIR      (e.g. build/bin; ctest runs it)
#
# Needs promtool (Debian package prometheus), yamllint, curl and python3:
# deploy/install-deps.sh installs them.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -ne 1 ]; then
  echo "usage: deploy/check-deploy.sh BIN_DIR (the directory of saetrack-coordinator and saetrack-worker)" >&2
  exit 2
fi
bin="$(cd "$1" && pwd)"
cd "$root"

failures=0
ok() { echo "check-deploy: ok: $*"; }
fail() {
  echo "check-deploy: FAILED: $*" >&2
  failures=$((failures + 1))
}

missing=()
for tool in promtool yamllint curl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-deploy: missing ${missing[*]}: run deploy/install-deps.sh" \
    "(promtool is in the Debian package prometheus)" >&2
  exit 1
fi
for b in saetrack-coordinator saetrack-worker; do
  if [ ! -x "$bin/$b" ]; then
    echo "check-deploy: no $b in $bin (build it first)" >&2
    exit 1
  fi
done

tmp="$(mktemp -d)"
coordinator_pid=""
worker_pid=""
cleanup() {
  for pid in $worker_pid $coordinator_pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $worker_pid $coordinator_pid; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
# A signal (ctest's timeout, ^C) exits through the EXIT trap too.
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command, shows its output indented, records a failure if it fails.
check() {
  local what="$1"
  shift
  if "$@" >"$tmp/out" 2>&1; then
    ok "$what"
  else
    fail "$what"
    sed 's/^/    /' "$tmp/out" >&2
  fi
}

# --- Prometheus config, rules, dashboard PromQL ------------------------------
check "promtool check config deploy/prometheus/prometheus.yml" \
  promtool check config deploy/prometheus/prometheus.yml
check "promtool check rules deploy/prometheus/alerts.yml" \
  promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules deploy/prometheus/alerts_test.yml" \
  promtool test rules deploy/prometheus/alerts_test.yml

# --- YAML, JSON, shell -------------------------------------------------------
check "yamllint -s deploy/ .yamllint" yamllint -s -c .yamllint deploy .yamllint
check "python3 -m json.tool deploy/grafana/saetrack.json" \
  python3 -m json.tool deploy/grafana/saetrack.json

# Every query of the dashboard, as a recording rule, through promtool's PromQL
# parser (Grafana's $__rate_interval and $worker replaced by plain values).
if python3 - deploy/grafana/saetrack.json "$tmp/dashboard-rules.yml" <<'EOF'; then
import json, sys
dashboard = json.load(open(sys.argv[1]))
rules = []
def walk(panels):
    for panel in panels:
        walk(panel.get("panels", []))
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$worker", ".*")
            rules.append({"record": "dashboard:panel_%d:%s" % (panel["id"], t["refId"]),
                          "expr": expr})
walk(dashboard["panels"])
if not rules:
    sys.exit("no queries in the dashboard")
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
EOF
  check "PromQL of the dashboard's queries (promtool check rules)" \
    promtool check rules "$tmp/dashboard-rules.yml"
else
  fail "reading the dashboard's queries"
fi

check "bash -n deploy/slurm/saetrack-workers.sbatch" bash -n deploy/slurm/saetrack-workers.sbatch
# Every way of deploying passes the token and TLS files (README "Securing a
# fleet"): a coordinator beyond loopback refuses to start without them.
security_flags() {
  local file="$1"
  shift
  for flag in "$@"; do
    grep -q -- "$flag" "$file" || { echo "$file lacks $flag"; return 1; }
  done
}
deployment_security() {
  security_flags deploy/systemd/saetrack-coordinator.service \
    --token_file= --tls_cert= --tls_key= LoadCredential= &&
    security_flags 'deploy/systemd/saetrack-worker@.service' \
      --token_file= --tls_ca= LoadCredential= &&
    security_flags deploy/kubernetes/coordinator.yaml \
      --token_file= --tls_cert= --tls_key= secretName: &&
    security_flags deploy/kubernetes/worker.yaml \
      --token_file= --tls_ca= secretName: &&
    security_flags deploy/slurm/saetrack-workers.sbatch \
      --token_file= --tls_ca= --tls_cert= --tls_key= &&
    security_flags deploy/docker/Dockerfile --token_file= --tls_cert= --tls_key=
}
check "deployment files pass --token_file and the TLS flags" deployment_security

# --- Live scrape of both binaries --------------------------------------------
# Polls until "$@" succeeds, for up to $1 seconds.
wait_for() {
  local seconds="$1"
  shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
has_ports() { grep -q '^metrics=' "$tmp/ports" 2>/dev/null; }
worker_port() { sed -n 's/.*metrics on port \([0-9][0-9]*\).*/\1/p' "$tmp/worker.log" | head -n 1; }
has_worker_port() { [ -n "$(worker_port)" ]; }
scrape() { curl -fsS --max-time 10 "http://127.0.0.1:$1/metrics"; }
worker_registered() {
  scrape "$coordinator_metrics" 2>/dev/null | grep -Eq '^saetrack_workers_registered [1-9]'
}

"$bin/saetrack-coordinator" --data_dir="$tmp/data" --listen=127.0.0.1:0 \
  --metrics_listen=127.0.0.1:0 --port_file="$tmp/ports" >"$tmp/coordinator.log" 2>&1 &
coordinator_pid=$!
if ! wait_for 60 has_ports; then
  fail "the coordinator wrote no --port_file within 60 s; its log:"
  sed 's/^/    /' "$tmp/coordinator.log" >&2
  exit 1
fi
coordinator_grpc="$(sed -n 's/^grpc=//p' "$tmp/ports")"
coordinator_metrics="$(sed -n 's/^metrics=//p' "$tmp/ports")"

"$bin/saetrack-worker" --coordinator="127.0.0.1:$coordinator_grpc" \
  --metrics_listen=127.0.0.1:0 --threads=1 --name=check-deploy >"$tmp/worker.log" 2>&1 &
worker_pid=$!
if ! wait_for 60 has_worker_port; then
  fail "the worker did not report its metrics port within 60 s; its log:"
  sed 's/^/    /' "$tmp/worker.log" >&2
  exit 1
fi
# Once the worker has registered, the coordinator's RPC series exist too.
if ! wait_for 60 worker_registered; then
  fail "the worker did not register with the coordinator within 60 s; its log:"
  sed 's/^/    /' "$tmp/worker.log" >&2
  exit 1
fi

# A job following a (not yet started) training run: the saetrack_follow_*
# gauges exist per following job. Its token file is all that must exist.
mkdir -p "$tmp/run"
python3 -c 'import sys; open(sys.argv[1], "wb").write(bytes(2 * 4096))' "$tmp/tokens.u16"
cat >"$tmp/follow-job.json" <<JOB
{"name": "check-deploy", "model": {"follow": {"dir": "$tmp/run"}},
 "data": {"tokens_path": "$tmp/tokens.u16", "context_length": 32},
 "hooks": [{"layer": 0}]}
JOB
check "a following job is accepted without any checkpoint" \
  "$bin/saetrack" --coordinator="127.0.0.1:$coordinator_grpc" submit "$tmp/follow-job.json"

for target in "coordinator:$coordinator_metrics" "worker:$(worker_port)"; do
  name="${target%%:*}"
  port="${target#*:}"
  if ! scrape "$port" >"$tmp/$name.metrics"; then
    fail "scraping the $name's /metrics (127.0.0.1:$port)"
    continue
  fi
  # shellcheck disable=SC2016  # $1 is sh's, not ours
  check "promtool check metrics < the $name's /metrics" \
    sh -c 'promtool check metrics <"$1"' sh "$tmp/$name.metrics"
done

# Every saetrack_* name the alerts and the dashboard use must be a metric one of
# the binaries exports (histogram names count with _bucket/_sum/_count).
cat "$tmp/coordinator.metrics" "$tmp/worker.metrics" 2>/dev/null |
  sed -n -e 's/^\(saetrack_[a-zA-Z0-9_:]*\).*/\1/p' \
    -e 's/^# TYPE \(saetrack_[a-zA-Z0-9_:]*\) .*/\1/p' | sort -u >"$tmp/exported"
grep -ohE 'saetrack_[a-z0-9_]+' deploy/prometheus/alerts.yml deploy/grafana/saetrack.json |
  sort -u >"$tmp/used"
unknown="$(comm -23 "$tmp/used" "$tmp/exported")"
if [ -z "$unknown" ]; then
  ok "the $(wc -l <"$tmp/used") saetrack_* metrics of the alerts and the dashboard are exported"
else
  fail "the alerts or the dashboard use metrics that neither binary exports:" \
    "$(echo "$unknown" | tr '\n' ' ')"
fi

if [ "$failures" -gt 0 ]; then
  echo "check-deploy: $failures check(s) failed" >&2
  exit 1
fi
echo "check-deploy: all checks passed"
