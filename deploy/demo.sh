#!/usr/bin/env bash
# The README's demo command. On a fresh Debian machine, with nothing
# downloaded: installs the dependencies, builds saetrack, learns a BPE
# vocabulary on the bundled Tiny Shakespeare, trains a small GPT-NeoX on it
# (4 layers, d_model 128; cached in <data>/lm), starts a
# coordinator and a worker on loopback, submits the demo job, waits for it
# with a progress line and prints what the chain of SAEs found. The processes
# it started are stopped at the end; the data directory stays so the results
# can still be queried; with --serve the coordinator keeps running behind
# saetrack-web, the feature browser, until Ctrl-C. With --live the job
# follows the LM's checkpoint directory while the LM trains beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() {
  cat <<'TXT'
Usage: deploy/demo.sh [--quick] [--seeds N | --live [--pace_s X]]
                      [--bin DIR] [--data DIR] [--serve]
                      [--web_listen HOST:PORT]

Learns a 4,096-token BPE vocabulary on Tiny Shakespeare, trains a small
GPT-NeoX on it (4 layers, d_model 128, Pythia's schedule shape), tracks its
features with a chain of SAEs over its checkpoints and prints the report.

  --quick     the shortened demo (LM checkpoints up to step 64, smaller SAEs,
              fewer tokens: deploy/jobs/demo-job-quick.json); about a minute
  --seeds N   run the job N times with SAE seeds 1, 11, 21, ... (default 1) and
              report each finding with its median and range over the seeds
              (saetrack findings); N times the SAE training time
  --live      follow a training run live: train the LM into a fresh
              <data>/live-lm in the background and submit a job that follows
              its checkpoint directory (deploy/jobs/demo-job-live.json, or
              demo-job-live-quick.json with --quick); each checkpoint is
              taken as it appears and its SAEs trained while the LM goes on.
              A progress line shows both; the report ends with each
              checkpoint's lag from its last write to its SAEs stored. Not
              with --seeds
  --pace_s X  with --live: the LM writes its checkpoints at least X seconds
              apart, as a slower real run would (default 30; 20 with
              --quick: more than the SAEs of one checkpoint take on 2
              cores, so the job keeps up and provisional analysis rounds
              show)
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

quick=
seeds=1
seeds_given=
live=
pace_s=
bin=
data=
serve=
web_listen=127.0.0.1:8080
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --seeds)
      seeds=${2:?--seeds needs a number} seeds_given=1
      case "$seeds" in
        ''|*[!0-9]*|0) echo "demo.sh: --seeds '$seeds' is not a positive number" >&2; exit 2 ;;
      esac
      shift ;;
    --live) live=1 ;;
    --pace_s)
      pace_s=${2:?--pace_s needs a number of seconds}
      if ! [[ "$pace_s" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
        echo "demo.sh: --pace_s '$pace_s' is not a number of seconds" >&2; exit 2
      fi
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
if [ -n "$live" ] && [ -n "$seeds_given" ]; then
  echo "demo.sh: --seeds does not go with --live: a live run is followed once" \
    "(run the demo without --live for findings over several SAE seeds)" >&2
  exit 2
fi
if [ -n "$pace_s" ] && [ -z "$live" ]; then
  echo "demo.sh: --pace_s only applies with --live" >&2
  exit 2
fi
# The LM's checkpoints: those of the fixed-list job, which the live job's
# until_step ends on.
lm_job_file=deploy/jobs/demo-job${quick:+-quick}.json
job_file=$lm_job_file
if [ -n "$live" ]; then
  job_file=deploy/jobs/demo-job-live${quick:+-quick}.json
  : "${pace_s:=${quick:+20}}"
  : "${pace_s:=30}"
fi
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
# trained with exactly the checkpoints the fixed-list job names.
mkdir -p "$data"
sed "s#\.\./\.\./demo-data/#$data/#g" "$job_file" >"$data/job.json"
lm_steps=$(grep -o '"step": *[0-9]*' "$lm_job_file" | grep -o '[0-9]*$' | paste -sd,)
lm_flags=(--corpus deploy/demo/tinyshakespeare.txt
  --tokenizer "$data/bpe-4096.json" --steps "$lm_steps"
  --d_model 128 --layers 4 --heads 4 --ctx 64 --batch 16 --lr 3e-3 --seed 1)

step "Learning a BPE vocabulary on Tiny Shakespeare"
"$bin/saetrack-tokenize" --learn_bpe --vocab_size 4096 \
  --in deploy/demo/tinyshakespeare.txt --out "$data/bpe-4096.json"

loss_note() {
  echo "(held-out loss: mean cross-entropy per token on the last 10% of the"
  echo " corpus, which the model never trains on; ln 4096 = 8.32 at random)"
}
# With --live the LM trains later, beside the job that follows it.
if [ -z "$live" ]; then
  step "Training the small GPT-NeoX on Tiny Shakespeare (cached)"
  loss_note
  "$bin/saetrack-tinylm" "${lm_flags[@]}" --out "$data/lm" --threads "$threads"
fi

step "Starting a coordinator and a worker"
rm -rf "$data/coordinator" "$data/ports"
"$bin/saetrack-coordinator" --data_dir "$data/coordinator" \
  --data_roots "$data" \
  --listen 127.0.0.1:0 --metrics_listen 127.0.0.1:0 \
  --port_file "$data/ports" 2>"$data/coordinator.log" &
coordinator_pid=$!
worker_pid=
trainer_pid=
cleanup() {
  # A process ended by the signal (the trainer) waits with status 143, not
  # an error here.
  if [ -n "$trainer_pid" ] && kill "$trainer_pid" 2>/dev/null; then
    wait "$trainer_pid" 2>/dev/null || true
  fi
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

# --live: the LM trains into a fresh directory while a job follows it.
# Status JSON (saetrack status --json, proto field names; int64 fields are
# strings) to one tab-separated line: state, progress text, error.
read -r -d '' status_line_py <<'PY' || true
import json, sys
job = json.load(sys.stdin)
state = job.get("state", "").replace("JOB_STATE_", "")
progress = job.get("progress", {})
text = "%s %s, SAEs %d/%d" % (job.get("job_id", ""), state,
                              progress.get("tasks_done", 0),
                              progress.get("tasks_total", 0))
follow = job.get("follow")
if follow:
    last = int(follow.get("last_step", "-1"))
    text += ", following %s, last step taken %s, %d taken, %d refused" % (
        follow.get("state", "").replace("FOLLOW_STATE_", ""),
        last if last >= 0 else "-", len(follow.get("checkpoints", [])),
        len(follow.get("refused", [])))
error = " ".join(job.get("error", "").split())
print("\t".join([state, text, error]))
PY

follow_live_run() {
  step "Following a live training run ($job_file; the LM writes a checkpoint every ${pace_s} s or slower)"
  # A fresh run: the follower sees every checkpoint appear.
  rm -rf "$data/live-lm"
  # Half of the cores: the worker trains SAEs beside the LM.
  "$bin/saetrack-tinylm" "${lm_flags[@]}" --out "$data/live-lm" \
    --pace_s "$pace_s" --threads "$(( threads > 1 ? threads / 2 : 1 ))" \
    >"$data/trainer.log" 2>&1 &
  trainer_pid=$!
  echo "saetrack-tinylm pid $trainer_pid, writing $data/live-lm (log: $data/trainer.log)"
  # The job names the LM's token file and tokenizer, which submission
  # checks; the trainer writes them (atomically) before its first step.
  while ! [ -f "$data/live-lm/tokenizer.json" ]; do
    kill -0 "$trainer_pid" 2>/dev/null || {
      cat "$data/trainer.log" >&2
      echo "demo.sh: saetrack-tinylm exited before writing its tokens" >&2
      exit 1
    }
    sleep 0.2
  done
  local submitted
  submitted=$("${cli[@]}" submit "$data/job.json" --json) || {
    echo "demo.sh: the coordinator refused $job_file (above)" >&2
    exit 1
  }
  job=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["job"]["job_id"])' \
    <<<"$submitted")
  echo "submitted $job, following $data/live-lm/checkpoints"

  local tty='' line='' state='' text='' error='' trainer='' tick=0 rc
  [ -t 1 ] && tty=1
  while :; do
    if [ -n "$trainer_pid" ] && ! kill -0 "$trainer_pid" 2>/dev/null; then
      rc=0
      wait "$trainer_pid" || rc=$?
      trainer_pid=
      if [ "$rc" != 0 ]; then
        [ -n "$tty" ] && echo
        tail -20 "$data/trainer.log" >&2
        echo "demo.sh: saetrack-tinylm failed (exit status $rc; log: $data/trainer.log)" >&2
        exit 1
      fi
    fi
    for name in coordinator worker; do
      pid_var=${name}_pid
      kill -0 "${!pid_var}" 2>/dev/null || {
        [ -n "$tty" ] && echo
        tail -20 "$data/$name.log" >&2
        echo "demo.sh: the $name exited" >&2
        exit 1
      }
    done
    # A failed status call (a busy coordinator) shows the previous line.
    state=
    IFS=$'\t' read -r state text error < <("${cli[@]}" status "$job" --json |
      python3 -c "$status_line_py") || true
    trainer=$(sed -n 's/^step \([0-9]*\) held-out loss \([0-9.]*\).*/LM step \1, loss \2/p' \
      "$data/trainer.log" | tail -1)
    line="${trainer:-LM starting}${trainer_pid:+ (training)} | $text"
    case "$state" in
      SUCCEEDED) break ;;
      FAILED|CANCELLED)
        [ -n "$tty" ] && echo
        echo "demo.sh: $job ended $state: ${error:-no reason given}" >&2
        exit 1 ;;
    esac
    if [ -n "$tty" ]; then
      printf '\r%s\033[K' "$line"
    elif [ $((tick % 5)) = 0 ]; then
      echo "$line"
    fi
    tick=$((tick + 1))
    sleep 1
  done
  [ -n "$tty" ] && echo
  echo "$line"
  # The job ends once the last checkpoint's SAEs are analysed; the trainer
  # wrote it before, and is finishing or done.
  if [ -n "$trainer_pid" ]; then
    rc=0
    wait "$trainer_pid" || rc=$?
    trainer_pid=
    [ "$rc" = 0 ] || { tail -20 "$data/trainer.log" >&2; echo "demo.sh: saetrack-tinylm failed (exit status $rc)" >&2; exit 1; }
  fi
  echo
  echo "The LM's checkpoints, as saetrack-tinylm wrote them:"
  loss_note
  grep '^step ' "$data/trainer.log"
  echo
  echo "$job succeeded"
  "${cli[@]}" status "$job"
}

# Per followed checkpoint the lag from its last write to its SAEs stored,
# and the refused checkpoints with their reasons.
read -r -d '' live_report_py <<'PY' || true
import json, statistics, sys
job = json.load(sys.stdin)
follow = job.get("follow") or {}
checkpoints = follow.get("checkpoints", [])
print("following %s (%s): %d checkpoints followed, %d analysis rounds" % (
    follow.get("state", "").replace("FOLLOW_STATE_", "").lower(),
    follow.get("close_reason", "") or "not closed", len(checkpoints),
    follow.get("analysis_round", 0)))
print("%8s  %10s  %10s  %10s" % ("step", "seen", "taken", "lag"))
lags = []
for c in checkpoints:
    write = int(c.get("last_write_ms", "0"))
    def after(field):
        ms = int(c.get(field, "0"))
        return (ms - write) / 1000 if ms > 0 else None
    seen, taken, lag = after("seen_ms"), after("taken_ms"), after("stored_ms")
    if lag is not None:
        lags.append(lag)
    cell = lambda s: "-" if s is None else "%.1f s" % s
    print("%8s  %10s  %10s  %10s" % (c.get("step", "0"), cell(seen),
                                     cell(taken), cell(lag)))
if lags:
    print("lag from a checkpoint's last write to its SAEs stored: median %.1f s,"
          " max %.1f s over %d checkpoints" % (statistics.median(lags),
                                                max(lags), len(lags)))
else:
    print("lag from a checkpoint's last write to its SAEs stored: no SAEs stored")
refused = follow.get("refused", [])
print("refused checkpoints: %d" % len(refused))
for r in refused:
    print("  step %s (%s): %s" % (r.get("step", "?"), r.get("path", ""),
                                 r.get("reason", "")))
PY

live_following_report() {
  step "Live following ($job)"
  "${cli[@]}" status "$job" --json | python3 -c "$live_report_py"
  cat <<TXT

Reading it: "seen", "taken" and "lag" are seconds after a checkpoint's
newest file was last written: when the coordinator's scan first saw its
directory, when it joined the chain (complete: files unchanged between two
scans), and when the SAEs of every hooked layer at that step were stored.
The LM wrote a checkpoint every $pace_s s or slower; where SAE training is
slower than that, checkpoints queue and the lag grows along the run.
TXT
}

cli=("$bin/saetrack" --coordinator "$addr")
jobs=()
if [ -n "$live" ]; then
  follow_live_run
  jobs=("$job")
else
  # One job per SAE seed, the same everything else; the report's sections
  # are the first seed's, the findings at the end are over all of them.
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
fi

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

if [ -n "$live" ]; then live_following_report; fi

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
