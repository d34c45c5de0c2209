#!/usr/bin/env bash
# The README's demo command. On a fresh Debian machine, with nothing
# downloaded: installs the dependencies, builds saetrack, learns a BPE
# vocabulary on the bundled Tiny Shakespeare, trains a small GPT-NeoX on it
# (4 layers, d_model 128; cached in <data>/lm), starts a
# coordinator and a worker on loopback, submits the demo job, waits for it
# with a progress line and prints what the chain of SAEs found. The processes
# it started are stopped at the end; the data directory stays so the results
# can still be queried; with --serve the coordinator keeps running behind
# saetrack-web, the feature browser, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() {
  cat <<'TXT'
Usage: deploy/demo.sh [--quick] [--seeds N] [--bin DIR] [--data DIR]
                      [--serve] [--web_listen HOST:PORT]

Learns a 4,096-token BPE vocabulary on Tiny Shakespeare, trains a small
GPT-NeoX on it (4 layers, d_model 128, Pythia's schedule shape), tracks its
features with a chain of SAEs over its checkpoints and prints the report.

  --quick     the shortened demo (LM checkpoints up to step 64, smaller SAEs,
              fewer tokens: deploy/jobs/demo-job-quick.json); about a minute
  --seeds N   run the job N times with SAE seeds 1, 11, 21, ... (default 1) and
              report each finding with its median and range over the seeds
              (saetrack findings); N times the SAE training time
  --bin DIR   use the saetrack binaries already built in DIR; skips
              installing and building
  --data DIR  data directory (default: demo-data, demo-data-quick with
              --quick); the LM cached there is reused when it matches
  --serve     afterwards keep the coordinator running, start saetrack-web
              (the feature browser) on it, print its URL and serve until
              Ctrl-C
  --web_listen HOST:PORT  where saetrack-web listens with --serve (default
              127.0.0.1:8080)
TXT
}

job_file=deploy/jobs/demo-job.json
quick=
seeds=1
bin=
data=
serve=
web_listen=127.0.0.1:8080
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) job_file=deploy/jobs/demo-job-quick.json quick=1 ;;
    --seeds)
      seeds=${2:?--seeds needs a number}
      case "$seeds" in
        ''|*[!0-9]*|0) echo "demo.sh: --seeds '$seeds' is not a positive number" >&2; exit 2 ;;
      esac
      shift ;;
    --bin) bin=$(cd "${2:?--bin needs a directory}" && pwd); shift ;;
    --data) mkdir -p "${2:?--data needs a directory}"; data=$(cd "$2" && pwd); shift ;;
    --serve) serve=1 ;;
    --web_listen) web_listen=${2:?--web_listen needs HOST:PORT}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$data" ]; then
  data="$root/demo-data${quick:+-quick}"
fi
threads=$(nproc)

step() { printf '\n== %s\n' "$*"; }

if [ -z "$bin" ]; then
  step "Installing dependencies (quiet when present)"
  deploy/install-deps.sh

  step "Building (Release, build/)"
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j"$threads" --target saetrack-coordinator \
    saetrack-worker saetrack saetrack-tinylm saetrack-tokenize \
    ${serve:+saetrack-web} 2>&1 |
    grep -E "error|warning: unused|Linking" || true
  bin="$root/build/bin"
fi

# The job, with its paths pointing into this data directory; the LM is
# trained with exactly the checkpoints the job names.
mkdir -p "$data"
sed "s#\.\./\.\./demo-data/#$data/#g" "$job_file" >"$data/job.json"
lm_steps=$(grep -o '"step": *[0-9]*' "$job_file" | grep -o '[0-9]*$' | paste -sd,)

step "Learning a BPE vocabulary on Tiny Shakespeare"
"$bin/saetrack-tokenize" --learn_bpe --vocab_size 4096 \
  --in deploy/demo/tinyshakespeare.txt --out "$data/bpe-4096.json"

step "Training the small GPT-NeoX on Tiny Shakespeare (cached)"
echo "(held-out loss: mean cross-entropy per token on the last 10% of the"
echo " corpus, which the model never trains on; ln 4096 = 8.32 at random)"
"$bin/saetrack-tinylm" --corpus deploy/demo/tinyshakespeare.txt \
  --tokenizer "$data/bpe-4096.json" --out "$data/lm" --steps "$lm_steps" \
  --d_model 128 --layers 4 --heads 4 --ctx 64 --batch 16 --lr 3e-3 --seed 1 \
  --threads "$threads"

step "Starting a coordinator and a worker"
rm -rf "$data/coordinator" "$data/ports"
"$bin/saetrack-coordinator" --data_dir "$data/coordinator" \
  --data_roots "$data" \
  --listen 127.0.0.1:0 --metrics_listen 127.0.0.1:0 \
  --port_file "$data/ports" 2>"$data/coordinator.log" &
coordinator_pid=$!
worker_pid=
cleanup() {
  [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  kill "$coordinator_pid" 2>/dev/null && wait "$coordinator_pid" 2>/dev/null
  true
}
trap cleanup EXIT
for _ in $(seq 300); do
  grep -q metrics= "$data/ports" 2>/dev/null && break
  kill -0 "$coordinator_pid" 2>/dev/null || { cat "$data/coordinator.log"; exit 1; }
  sleep 0.1
done
port=$(sed -n 's/^grpc=//p' "$data/ports")
metrics_port=$(sed -n 's/^metrics=//p' "$data/ports")
addr="127.0.0.1:$port"
"$bin/saetrack-worker" --coordinator "$addr" --threads "$threads" \
  --metrics_listen 127.0.0.1:0 2>"$data/worker.log" &
worker_pid=$!
echo "coordinator on $addr (metrics: http://127.0.0.1:$metrics_port/metrics), worker pid $worker_pid"
echo "pids: coordinator $coordinator_pid worker $worker_pid"

cli=("$bin/saetrack" --coordinator "$addr")
# One job per SAE seed, the same everything else; the report's sections are
# the first seed's, the findings at the end are over all of them.
jobs=()
for k in $(seq "$seeds"); do
  # Seeds 1, 11, 21, ...: a job's independent reference SAEs use seed + 1,
  # which must not be another job's chain.
  seed=$((1 + 10 * (k - 1)))
  step "Submitting $job_file (SAE seed $seed) and waiting"
  sed "s/\"seed\": *1\b/\"seed\": $seed/" "$data/job.json" >"$data/job-seed$seed.json"
  "${cli[@]}" submit "$data/job-seed$seed.json" --wait
  jobs+=("$("${cli[@]}" list --json | sed -n 's/.*"job_id": "\(job-[0-9]*\)".*/\1/p' | tail -1)")
done
job=${jobs[0]}

# Every hooked layer of the job (an early and a middle one): the worker ran
# the LM once per checkpoint for both.
layers=$(grep -o '"layer": *[0-9]*' "$job_file" | grep -o '[0-9]*$' | paste -sd' ')
first_layer=${layers%% *}
# The reading notes under a section, once (after the first layer's).
explain() {
  if [ "$layer" = "$first_layer" ]; then cat; else cat >/dev/null; fi
}
for layer in $layers; do
step "Per-checkpoint SAE metrics ($job, layer $layer)"
"${cli[@]}" metrics "$job" --layer "$layer"
explain <<TXT

Reading it: chain 0 is the SAE trained from scratch on step 0; every later SAE
starts from the previous one (recurrent initialisation) and trains on far fewer
tokens. "init FVU" is the FVU of that starting point on the new checkpoint's
activations, "FVU" the FVU after training; "cos prev" is the median cosine
between a feature's decoder direction and its direction one checkpoint earlier.
TXT

step "Trust checks ($job, layer $layer)"
"${cli[@]}" quality "$job" --layer "$layer"
explain <<TXT

Reading it: at three checkpoints (the first, the middle and the last) an
independent SAE was trained from scratch beside the chain's, with another
seed ("seed N" rows). "matched cos" is the median cosine of the two
dictionaries' decoder rows matched one to one, with two random
dictionaries' in brackets: at the first checkpoint it says how far features
are reproducible at all, the level below which no drift means anything;
"cos init" is how far training moved each SAE from where it started.
The speed-up table is the paper's convergence claim measured fairly at the
later two: the previous checkpoint's SAE trained with exactly the independent
SAE's schedule and batches ("same lr") and with a tenth of its learning rate
("lr/10"), and the tokens each needed to come within 2% of the independent
SAE's final loss ("scratch": the tokens the independent SAE itself needed).
TXT

step "Decoder drift and phases ($job, layer $layer)"
"${cli[@]}" drift "$job" --layer "$layer"
explain <<TXT

Reading it: "final" is cos(d_i(t), d_i(T)) between a feature's decoder
direction at a checkpoint and at the final one, as quantiles over the live
features; the phase fit splits the median curve (against log(step + 1)) into one to
three straight segments, as many as BIC selects. "formed" counts features whose progress measure has
reached half its final value (token-level and concept-level counts below).
TXT
done

for layer in $layers; do
step "Findings over ${#jobs[@]} SAE seed(s) (layer $layer)"
"${cli[@]}" findings "${jobs[@]}" --layer "$layer"
explain <<TXT

Reading it: one column per seed's job, then the median and the range over
them. "two SAEs of step t" is what two SAEs trained on the same checkpoint
share (seed stability at the first, chain vs independent later): a feature's
drift to its final direction counts as signal only where its cos to final is
clearly below that level ("drift vs noise"). Where a verdict differs between
seeds, the finding does not hold up.
TXT
done

step "Most frequent token-level and concept-level features (layer $first_layer)"
"${cli[@]}" features "$job" --layer $first_layer --kind token --order frequency --limit 5
"${cli[@]}" features "$job" --layer $first_layer --kind concept --order frequency --limit 5

# Three example features: the most frequent token-level one, the most
# frequent concept-level one, and the concept-level one that drifted most.
pick() {
  "${cli[@]}" features "$job" --layer $first_layer "$@" --limit 1 --json |
    sed -n 's/.*"feature_id": \([0-9]*\).*/\1/p' | head -1
}
for id in $(pick --kind token --order frequency) \
          $(pick --kind concept --order frequency) \
          $(pick --kind concept --order drift); do
  step "Feature $id across the checkpoints"
  "${cli[@]}" feature "$job" --layer $first_layer --feature "$id" --contexts
done

if [ -n "$serve" ]; then
  # The worker is done; the coordinator stays, behind the feature browser.
  kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  worker_pid=
  step "Serving the feature browser (Ctrl-C stops it and the coordinator)"
  "$bin/saetrack-web" --coordinator "$addr" --listen "$web_listen" \
    --port_file "$data/web-ports" 2>"$data/web.log" &
  web_pid=$!
  cleanup_web() {
    kill "$web_pid" 2>/dev/null && wait "$web_pid" 2>/dev/null
    cleanup
  }
  trap cleanup_web EXIT
  trap 'exit 0' INT TERM
  for _ in $(seq 100); do
    grep -q http= "$data/web-ports" 2>/dev/null && break
    kill -0 "$web_pid" 2>/dev/null || { cat "$data/web.log"; exit 1; }
    sleep 0.1
  done
  web_port=$(sed -n 's/^http=//p' "$data/web-ports")
  web_host=${web_listen%:*}
  url="http://$web_host:$web_port/jobs/$job"
  echo "Open $url"
  echo "  drift:    $url/layers/$first_layer/drift"
  echo "  features: $url/layers/$first_layer/features?kind=concept_level&order=drift"
  wait "$web_pid"
  exit 0
fi

cleanup
trap - EXIT
step "Done"
cat <<TXT
The results stay in $data/coordinator. To query them again:
  $bin/saetrack-coordinator --data_dir $data/coordinator --data_roots $data --listen 127.0.0.1:7070 &
  $bin/saetrack status $job
  $bin/saetrack metrics $job --layer $first_layer
  $bin/saetrack drift $job --layer $first_layer
  $bin/saetrack features $job --layer $first_layer --kind concept --order formation
  $bin/saetrack feature $job --layer $first_layer --feature 5 --contexts --json
  $bin/saetrack quality $job --layer $first_layer
and in a browser (deploy/demo.sh --serve does this for you):
  $bin/saetrack-web --coordinator 127.0.0.1:7070 --listen 127.0.0.1:8080 &
  open http://127.0.0.1:8080/jobs/$job
TXT
