#!/usr/bin/env bash
# The whole pipeline end to end on one machine, as issue 18's acceptance asks: the paper config
# configs/paper/qwen2.5-math-1.5b.yaml with only paths, step counts and the model changed (--set),
# a real MLflow server and a real S3 server (moto, infra/local/servers.py), the training data as
# raw OpenR1 parquet on that S3 server (filter_data runs LUFFY's filter through `datasets`),
# Metaflow's S3 datastore on it, 2 short epochs, evaluation on the six math benchmarks, then the
# registered best model loaded by its models:/...@best URI and asked one question.
#
#   source /tmp/stage/env.sh && bash perf/gpu/e2e_flow.sh            # GPU machine (after unstage)
#   source /tmp/stage/env.sh && bash perf/gpu/e2e_flow.sh continue   # only if the first call ran out
#   E2E_PROFILE=cpu bash perf/gpu/e2e_flow.sh                        # the CPU rehearsal
#
# Profiles (E2E_PROFILE): gpu (default) = the built-in qwen2.5-coder-1.5b-instruct (converted by
# unstage.sh into $PREFIX_RFT_CACHE), rollout and evaluation engine vllm, bf16; cpu =
# smollm2-135m-instruct, engine hf everywhere, float32, even fewer steps and tokens. Everything
# else (servers, S3 data, datastore, MLflow lineage, registered-model load) is the same code.
# Phases, each with its elapsed time and a timeout: preflight, servers, data, flow, load,
# summary. TOTAL_S (default 570) bounds the whole script: the flow gets what is left after
# LOAD_S (default 120) is reserved for the load.
# The servers and the flow run in their own process sessions (setsid), which the device machine
# keeps running between calls while it is held. So when the flow needs longer than one call
# (a cold machine's imports, model conversion and vLLM starts can do that at 1.5B), the call ends with status 3
# and "still running"; the next call, `bash perf/gpu/e2e_flow.sh continue`, waits for the same
# flow (E2E_FLOW_MAX_S, default 1500, is its own hard limit), then loads and summarises. The
# servers are stopped only once the flow is over (finished, failed or killed).
# Output ($OUT, default $E2E_WORK/out; at most 4 files): summary.json, summary.md (phases,
# MLflow run, eval metrics, LoggedModels, registered version, the answer), load.json, logs.tgz
# (flow log, server logs, the Metaflow/MLflow env). Exit status: that of the first failed phase.
# Knobs: E2E_WORK (/tmp/e2e-$E2E_PROFILE: servers' state, checkpoints, caches), E2E_CKPT_ROOT
# (default $E2E_WORK/checkpoints; s3://prefix-rft/checkpoints puts them on the moto server too,
# much slower at 1.5B: about 9 GB per epoch with the optimizer state), E2E_EVAL_EPOCHS (last),
# E2E_MAX_WORKERS (gpu 1: each vLLM evaluation takes 85% of the card; cpu 2), E2E_PYFUNC (also
# load through mlflow.pyfunc; cpu 1, gpu 0), E2E_SET (more --set pairs, appended last).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODE=${1:-run}
[ "$MODE" = run ] || [ "$MODE" = continue ] || { echo "usage: e2e_flow.sh [run|continue]" >&2; exit 2; }
PROFILE=${E2E_PROFILE:-gpu}
WORK=${E2E_WORK:-/tmp/e2e-$PROFILE}
OUT=${OUT:-$WORK/out}
TOTAL_S=${TOTAL_S:-570}
PY=${PY:-python3}
T0=$(date +%s)
PHASES="$WORK/phases.json"
if [ "$MODE" = run ]; then
  rm -rf "$WORK/logs" "$WORK/flow.rc" "$WORK/out"
  mkdir -p "$WORK" "$OUT" "$WORK/logs"
  echo "[]" > "$PHASES"
else
  mkdir -p "$OUT"
  [ -f "$WORK/flow.pid" ] || { echo "e2e: nothing to continue in $WORK (no flow.pid)" >&2; exit 2; }
fi
RC=0
STILL_RUNNING=3

case "$PROFILE" in
  gpu) MODEL=qwen2.5-coder-1.5b-instruct; LOAD_S=${LOAD_S:-120}; WORKERS=${E2E_MAX_WORKERS:-1}
       PYFUNC=${E2E_PYFUNC:-0}
       # rollouts and evaluation: vLLM eager (no compile / graph capture: each start is tens of
       # seconds shorter, and these generate few tokens); one eval task scores all six benchmarks
       # with one engine (pipeline.eval_task_per=checkpoint: one vLLM start, not six)
       PROFILE_SET="model.dtype=bfloat16 rollout.engine=vllm pipeline.eval_engine=vllm
         rollout.vllm.enforce_eager=true rollout.vllm.max_model_len=1024
         rollout.num_prompts=4 rollout.group_size=4 rollout.max_response_len=256
         rollout.max_batch_size=64 rl.micro_batch_size=4 rl.steps=4 pipeline.steps_per_epoch=2
         rollout.prefix_schedule.total_steps=4 reward.num_workers=4
         pipeline.eval_n=1 pipeline.eval_max_problems=4 pipeline.eval_max_new_tokens=256
         pipeline.eval_vllm_eager=true pipeline.eval_task_per=checkpoint
         pipeline.train.gpus=1 pipeline.eval.gpus=1" ;;
  cpu) MODEL=smollm2-135m-instruct; LOAD_S=${LOAD_S:-120}; WORKERS=${E2E_MAX_WORKERS:-2}
       PYFUNC=${E2E_PYFUNC:-1}
       PROFILE_SET="model.dtype=float32 rollout.engine=hf pipeline.eval_engine=hf
         rollout.num_prompts=2 rollout.group_size=2 rollout.max_response_len=48
         rollout.max_batch_size=8 rl.micro_batch_size=4 rl.steps=2 pipeline.steps_per_epoch=1
         rollout.prefix_schedule.total_steps=2 reward.num_workers=1
         pipeline.eval_n=1 pipeline.eval_max_problems=1 pipeline.eval_max_new_tokens=8
         pipeline.train.gpus=0 pipeline.eval.gpus=0 tracking.system_metrics=false" ;;
  *) echo "e2e: E2E_PROFILE must be gpu or cpu, got '$PROFILE'" >&2; exit 2 ;;
esac
BUCKET=prefix-rft
DATA_URL=s3://$BUCKET/e2e/openr1_raw.parquet
CKPT=${E2E_CKPT_ROOT:-$WORK/checkpoints}
# Only paths, step counts and the model differ from the paper config (plus the engines and the
# sizes that make a run of minutes); pipeline.epochs stays 2 = the issue's "2 short epochs".
SET="model.name_or_path=$MODEL data.train=$DATA_URL data.schema=openr1
  pipeline.epochs=2 pipeline.checkpoint_root=$CKPT pipeline.eval_base=false
  pipeline.eval_epochs=${E2E_EVAL_EPOCHS:-last} pipeline.eval_shards=1
  pipeline.train_retries=0 pipeline.eval_retries=0 rl.num_minibatches=1
  $PROFILE_SET ${E2E_SET:-}"
SET=$(echo $SET)  # one line, single spaces

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( TOTAL_S - $(elapsed) )); }
# phase NAME TIMEOUT_S CMD...: run CMD under a timeout, record its seconds and status
phase() {
  local name=$1 limit=$2 t rc; shift 2
  [ "$RC" = 0 ] || { echo "== $name: skipped (an earlier phase failed)"; return; }
  [ "$limit" -gt 0 ] || { echo "== $name: no time left (TOTAL_S=$TOTAL_S)"; RC=124; return; }
  echo "== $name (limit ${limit} s, at $(elapsed) s)"
  t=$(date +%s)
  # timeout signals the whole process group (Metaflow's workers too); the servers run in their
  # own sessions and are stopped on exit
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@"; rc=$?
  t=$(( $(date +%s) - t ))
  echo "== $name: rc=$rc in ${t} s"
  "$PY" - "$PHASES" "$name" "$t" "$rc" <<'EOF'
import json, sys
path, name, seconds, rc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
phases = json.load(open(path))
phases.append({"name": name, "seconds": seconds, "status": "ok" if rc == 0 else f"rc={rc}"})
json.dump(phases, open(path, "w"), indent=1)
EOF
  [ "$rc" = 0 ] || RC=$rc
}

preflight() {
  local mods="metaflow mlflow moto boto3 s3fs datasets math_verify prefix_rft"
  [ "$PROFILE" = gpu ] && mods="$mods vllm"
  "$PY" - $mods <<'EOF' || return 1
import importlib, sys
bad = []
for m in sys.argv[1:]:
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '')}")
    except Exception as e:
        bad.append(f"{m}: {type(e).__name__}: {e}")
if bad:
    sys.exit("e2e: missing packages (stage with perf/gpu/stage.sh --with-flow, then unstage):\n  "
             + "\n  ".join(bad))
import datasets
if int(datasets.__version__.split(".")[0]) < 5:
    sys.exit(f"e2e: datasets {datasets.__version__} is older than the project's pin (5.x)")
EOF
  for b in mlflow moto_server; do
    command -v "$b" > /dev/null || { echo "e2e: '$b' is not on PATH ($PATH)" >&2; return 1; }
  done
  PYTHONPATH="$ROOT:${PYTHONPATH:-}" "$PY" -c "
from prefix_rft.models import resolve_model_path
print('  model:', resolve_model_path('$MODEL'))" || { echo "e2e: model $MODEL is not converted" \
    "under PREFIX_RFT_CACHE=${PREFIX_RFT_CACHE:-unset} (unstage.sh finish converts it)" >&2; return 1; }
}

start_servers() {
  "$PY" infra/local/servers.py stop --root "$WORK/infra" 2>/dev/null
  "$PY" - "$WORK/infra" "$BUCKET" <<'EOF' || return 1
import sys
sys.path.insert(0, "infra/local")
import servers
s = servers.start(sys.argv[1], bucket=sys.argv[2], timeout=120)
print(f"  MLflow {s.mlflow_uri}  S3 {s.s3_endpoint}  bucket s3://{s.bucket}")
EOF
}

run_flow() {
  # --max-workers: evaluation tasks one at a time on one GPU (vLLM holds 85% of the card).
  # Own session: it survives the end of this call; flow.rc appears when it is over.
  setsid bash -c 'timeout --kill-after=20 "$1" "$PY" flows/prefix_rft_flow.py --config config \
      configs/paper/qwen2.5-math-1.5b.yaml --datastore s3 run --max-workers "$WORKERS" \
      --set "$SET" > "$WORK/logs/flow.log" 2>&1; echo $? > "$WORK/flow.rc"' _ \
    "${E2E_FLOW_MAX_S:-1500}" < /dev/null > /dev/null 2>&1 &
  echo $! > "$WORK/flow.pid"
}

# wait_flow LIMIT_S: follow the flow's log until it is over (its status) or LIMIT_S passed (3)
wait_flow() {
  local limit=$1 t=0 shown=0 n
  while [ ! -f "$WORK/flow.rc" ] && [ "$t" -lt "$limit" ]; do
    sleep 5; t=$((t + 5))
    n=$(wc -l < "$WORK/logs/flow.log" 2>/dev/null || echo 0)
    [ "$n" -gt "$shown" ] && sed -n "$((shown + 1)),${n}p" "$WORK/logs/flow.log" | cut -c1-400
    shown=$n
  done
  [ -f "$WORK/flow.rc" ] || { echo "e2e: the flow is still running (pid $(cat "$WORK/flow.pid")):" \
    "call 'bash perf/gpu/e2e_flow.sh continue' next"; return "$STILL_RUNNING"; }
  sed -n "$((shown + 1)),\$p" "$WORK/logs/flow.log" | cut -c1-400
  return "$(cat "$WORK/flow.rc")"
}

load_model() {
  local uri
  uri=$(grep -o 'models:/[^ ]*@best' "$WORK/logs/flow.log" | tail -n 1)
  [ -n "$uri" ] || { echo "e2e: the flow log names no models:/...@best" >&2; return 1; }
  "$PY" perf/gpu/e2e_flow.py load "$uri" --out "$OUT/load.json" $([ "$PYFUNC" = 1 ] && echo --pyfunc)
}

cleanup() {  # the servers stay up while the flow still runs (a `continue` call needs them)
  if [ "$RC" != "$STILL_RUNNING" ]; then
    "$PY" infra/local/servers.py stop --root "$WORK/infra" 2>/dev/null || true
  fi
}
trap cleanup EXIT
export -f preflight start_servers run_flow wait_flow load_model
export ROOT PROFILE WORK OUT PY MODEL WORKERS PYFUNC BUCKET SET STILL_RUNNING

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="${STAGE_SITE:-/tmp/site}/bin:$(dirname "$(command -v "$PY")"):$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_CACHE="$WORK/hf_datasets"
echo "e2e: profile $PROFILE, model $MODEL, work $WORK, out $OUT, TOTAL_S $TOTAL_S"
servers_env() {
  eval "$("$PY" infra/local/servers.py env --root "$WORK/infra")"
  # Metaflow's datastore on the S3 server; its local metadata under the work dir
  export METAFLOW_DEFAULT_DATASTORE=s3 METAFLOW_DATASTORE_SYSROOT_S3=s3://$BUCKET/metaflow \
    METAFLOW_DATATOOLS_S3ROOT=s3://$BUCKET/metaflow/data METAFLOW_DEFAULT_METADATA=local \
    METAFLOW_DATASTORE_SYSROOT_LOCAL="$WORK/metaflow"
}

if [ "$MODE" = run ]; then
  phase preflight 60 preflight
  phase servers 150 start_servers
  if [ "$RC" = 0 ]; then
    servers_env
    env | grep -E '^(MLFLOW|METAFLOW|AWS_ENDPOINT|PREFIX_RFT|HF_)' | sort > "$WORK/logs/env.txt"
  fi
  phase data 60 "$PY" perf/gpu/e2e_flow.py data "$DATA_URL"
  echo "e2e: --set $SET"
  phase flow-launch 10 run_flow
else
  servers_env
fi
WAIT=$(( $(left) - LOAD_S ))
phase flow $(( WAIT + 15 )) wait_flow "$WAIT"
phase load $(( $(left) - 10 )) load_model
"$PY" perf/gpu/e2e_flow.py summary --log "$WORK/logs/flow.log" --out "$OUT" --phases "$PHASES" \
  --load "$OUT/load.json" --profile "$PROFILE" --command "python flows/prefix_rft_flow.py --config config \
configs/paper/qwen2.5-math-1.5b.yaml --datastore s3 run --max-workers $WORKERS --set '$SET'"
[ "$RC" = "$STILL_RUNNING" ] && echo "e2e: partial summary; the flow goes on in the background"
cp "$WORK/infra"/*.log "$WORK/logs/" 2>/dev/null
tar -czf "$OUT/logs.tgz" -C "$WORK" logs phases.json
echo "e2e: done in $(elapsed) s, rc=$RC; outputs: $(ls "$OUT" | tr '\n' ' ')"
exit "$RC"
