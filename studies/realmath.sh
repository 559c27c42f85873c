#!/usr/bin/env bash
# Run one real-math config (configs/realmath/) + seed through the real flow on the lent GPU
# machine, then score its final checkpoint on AIME24, AIME25, AMC (avg@32) and MATH-500 (avg@1)
# with the paper protocol in ONE `prefix-rft eval` process and log those scores into the run.
#
#   bash studies/realmath.sh stage                 # with .whl-flow/cNN carried (once per chunk)
#   bash studies/realmath.sh METHOD[:SEED] ...     # e.g. prefix_rft:2 (sft rft sft_then_rft luffy prefix_rft)
#   bash studies/realmath.sh continue              # the next call, same machine: what was left pending
#
# A run does not fit one 600 s call on one H100 (2026-12-07: the flow alone took 472 s on one
# machine and over 585 s on another; the post-flow eval needs ~360 s), so it is cut where the
# time runs out and continued by the next call on the same (still warm) machine:
# - the flow runs until REALMATH_DEADLINE_S minus 30 s; it is stopped earlier when its
#   eval_task starts with fewer than REALMATH_EVAL_NEEDS_S (180) seconds left, rather than
#   spending them on a task that cannot finish. Its finished tasks (the trained checkpoint
#   included) stay, the run goes into $STUDY_DIR/pending/, and `continue` runs Metaflow's
#   `resume` of it: the finished tasks are cloned, the rest runs, into the same MLflow run;
# - a finished flow's post-flow eval runs when REALMATH_POST_MIN_S (380) seconds are left;
#   otherwise its final checkpoint is kept and the eval waits in pending/ for `continue`.
# A fresh machine has nothing pending (its files are gone): `continue` says so (exit 3), and the
# run must start again.
#
# Needs, on the machine: the vLLM stage (perf/gpu/stage.sh + unstage.sh: /tmp/stage/env.sh, the
# wheels in /tmp/site, the converted model in /tmp/cache) and the flow wheels: either in the same
# stage (`stage.sh --with-flow`, the usual way: nothing more to do) or
# perf/gpu/fetch_flow_wheels.sh's .whl-flow/c01..c03, installed by `stage` into /tmp/site-flow,
# a folder of its own so the stage's versions stay first on PYTHONPATH.
# Runs studies/study.sh with STUDY_NO_INSTALL=1 and one Metaflow worker (every eval task takes
# 0.85 of the GPU for vLLM), MLflow in sqlite:///$STUDY_DIR/mlflow.db; results in $OUT:
# summary.json (one row per run, the post-flow scores included), mlflow.db, logs.tgz,
# mlartifacts.tgz, post_eval.tgz (the eval outputs). At most 5 files.
#
# Env knobs: STUDY_DIR (/tmp/realmath), REALMATH_POST ("aime24,aime25,amc,math500"; "" = none),
# REALMATH_SET (extra flow --set overrides), REALMATH_EVAL_ARGS (extra `prefix-rft eval`
# arguments; CPU rehearsal: "--engine hf --max-problems 2 --n 1 --max-new-tokens 16"),
# REALMATH_NO_STAGE=1 (use the current environment: CPU rehearsal), STUDY_DEADLINE_S (600) and
# STUDY_EST_S (0): study.sh starts a run only if this fits before the deadline; one run a call
# is the plan (configs/realmath/README.md), so by default every named run starts.
# REALMATH_DEADLINE_S (570 s from this script's start): flows and post-flow evals are stopped
# by then, so that the device call's 600 s limit never takes their results; what they finished
# is kept (a post-flow eval's finished benchmarks are logged into the run: summary.json
# "complete": false). REALMATH_EVAL_NEEDS_S (180) and REALMATH_POST_MIN_S (380): above.
# Exit status: 0 when every flow and post-flow eval finished; 1 when a flow failed or a post-flow
# eval failed or was stopped; 4 when nothing failed but something waits for `continue`;
# 2: a usage error; 3: the machine is not staged, or `continue` found nothing pending.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T_START=$(date +%s)
DEADLINE=${REALMATH_DEADLINE_S:-570}
export STUDY_DIR=${STUDY_DIR:-/tmp/realmath}
export OUT=${OUT:-$STUDY_DIR/out}
PY=${STUDY_PY:-python3}
mkdir -p "$OUT" "$STUDY_DIR/post"

if [ "${1:-}" = stage ]; then
  STUDY_SITE=/tmp/site-flow exec bash studies/study.sh
fi
[ $# -gt 0 ] || { echo "usage: $0 stage | continue | METHOD[:SEED] ..." >&2; exit 2; }

if [ "${REALMATH_NO_STAGE:-0}" != 1 ]; then
  [ -f /tmp/stage/env.sh ] || { echo "no /tmp/stage/env.sh: stage vLLM first (perf/gpu/unstage.sh)" >&2; exit 3; }
  # shellcheck disable=SC1091
  source /tmp/stage/env.sh   # PYTHONPATH=/tmp/site:ROOT, PREFIX_RFT_CACHE=/tmp/cache, vLLM env
  # the flow's wheels: in /tmp/site already when the stage was made with `stage.sh --with-flow`,
  # else in /tmp/site-flow from `realmath.sh stage` with each .whl-flow/cNN
  if PYTHONPATH=/tmp/site "$PY" -c "import metaflow, mlflow, datasets" 2>/dev/null; then
    export PYTHONPATH="/tmp/site:$ROOT"
  elif [ -f /tmp/site-flow/.prefix-rft-flow-installed ]; then
    export PYTHONPATH="/tmp/site:/tmp/site-flow:$ROOT"
  else
    echo "flow wheels not installed: stage with perf/gpu/stage.sh --with-flow, or run bash studies/realmath.sh stage with each .whl-flow/cNN" >&2; exit 3
  fi
  # study.sh points PREFIX_RFT_CACHE at $STUDY_DIR/cache: the converted model goes there too
  mkdir -p "$STUDY_DIR/cache"
  for d in /tmp/cache/*/; do [ -d "$d" ] && ln -sfn "${d%/}" "$STUDY_DIR/cache/$(basename "$d")"; done
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 VLLM_NO_USAGE_STATS=1
# the store study.sh logs to (set there for its own processes; realmath_log.py needs it here)
export MLFLOW_TRACKING_URI="sqlite:///$STUDY_DIR/mlflow.db" GIT_PYTHON_REFRESH=quiet
POST=${REALMATH_POST-aime24,aime25,amc,math500}
POST_MIN=${REALMATH_POST_MIN_S:-380}  # the post-flow eval needs about this long (README, "Sizing")
EVAL_NEEDS=${REALMATH_EVAL_NEEDS_S:-180}  # the flow's eval_task + join_eval + end (README, "Sizing")
FAILED=0    # exit 1: a flow failed, or a post-flow eval failed or was stopped
PENDING=0   # exit 4 (when nothing failed): a resume or a post-flow eval waits for `continue`

# shellcheck source=studies/collect.sh
source "$ROOT/studies/collect.sh"
pack() {  # collect (study.sh's: rows, mlflow.db, logs, MLflow artifacts with the post-flow
  # child runs' samples) + the post-flow eval outputs
  collect
  tar czf "$OUT/post_eval.tgz" -C "$STUDY_DIR" post 2>/dev/null
  true
}

left() { echo $(( DEADLINE - ($(date +%s) - T_START) - 30 )); }  # 30 s for logging and packing

post_eval() {  # NAME CKPT RUN_ID ROW: score the final checkpoint, log into the run, drop it
  local name=$1 ckpt=$2 run_id=$3 row=$4 t prc
  t=$(left)
  echo "=== $name: post-flow eval of $ckpt on $POST (at most $t s)"
  rm -rf "${STUDY_DIR:?}/post/$name"
  # shellcheck disable=SC2086  # REALMATH_EVAL_ARGS is a list of arguments
  timeout --kill-after=10 "$t" "$PY" -m prefix_rft.cli eval --model "$ckpt" \
    --benchmarks "$POST" --protocol paper --max-new-tokens 1024 --engine vllm --workers 8 \
    ${REALMATH_EVAL_ARGS:-} --output "$STUDY_DIR/post/$name" 2>&1 \
    | tee "$STUDY_DIR/logs/$name-post.log" | grep -v WARN
  prc=${PIPESTATUS[0]}
  [ "$prc" = 0 ] || FAILED=1
  [ "$prc" = 124 ] && echo "=== $name: post-flow eval stopped at the deadline"
  if [ -f "$STUDY_DIR/post/$name/summary.json" ]; then
    "$PY" studies/realmath_log.py "$STUDY_DIR/post/$name/summary.json" "$run_id" "$row"
  else
    echo "=== $name: no post-flow benchmark finished: nothing logged"
  fi
  rm -rf "${STUDY_DIR:?}/checkpoints/$name" "$STUDY_DIR/pending/$name"
}

# after_flow NAME ARG STATUS: what a flow (or its resume) left, read from its row (STATUS:
# study.sh's exit status); a flow stopped for time is written to pending/ for `continue`
# (Metaflow's resume of that run); a finished one gets its post-flow eval now, or in `continue`
# when too little time is left.
after_flow() {
  local name=$1 arg=$2 status=$3 row ckpt run_id mf rc
  row="$STUDY_DIR/rows/$name.json"
  [ -f "$row" ] || { echo "=== $name: no summary row (study.sh exit status $status)"; FAILED=1; return; }
  read -r rc run_id mf < <("$PY" -c "import json,sys; r = json.load(open(sys.argv[1]))
print(r['rc'], r['mlflow_run_id'] or '-', r['metaflow_run_id'] or '-')" "$row")
  [ "$run_id" = - ] && run_id=""
  [ "$mf" = - ] && mf=""
  if [ "$rc" = 124 ] && [ -n "$mf" ]; then
    # stopped for time: its finished tasks (and the checkpoints they committed) stay for resume
    mkdir -p "$STUDY_DIR/pending"
    printf 'KIND=resume\nARG=%q\nORIGIN=%q\nRUN_ID=%q\nROW=%q\n' "$arg" "$mf" "$run_id" "$row" \
      > "$STUDY_DIR/pending/$name"
    echo "=== $name: flow stopped for time (Metaflow run $mf): run \`bash studies/realmath.sh continue\` as the next call on this machine"
    PENDING=1
    return
  fi
  [ "$rc" = 0 ] || FAILED=1
  ckpt=$(find "$STUDY_DIR/checkpoints/$name" -name MANIFEST.json -printf '%T@ %h\n' 2>/dev/null \
         | sort -n | tail -1 | cut -d' ' -f2)
  if [ -z "$POST" ] || [ "$rc" != 0 ]; then
    rm -rf "${STUDY_DIR:?}/checkpoints/$name"
  elif [ -z "$ckpt" ] || [ -z "$run_id" ]; then
    echo "=== $name: no final checkpoint or MLflow run: post-flow eval skipped"; FAILED=1
    rm -rf "${STUDY_DIR:?}/checkpoints/$name"
  elif [ "$(left)" -lt "$POST_MIN" ]; then
    # too little time before the deadline: keep the checkpoint for the next call on this machine
    mkdir -p "$STUDY_DIR/pending"
    printf 'KIND=post\nCKPT=%q\nRUN_ID=%q\nROW=%q\n' "$ckpt" "$run_id" "$row" > "$STUDY_DIR/pending/$name"
    echo "=== $name: post-flow eval deferred ($(left) s left, it needs REALMATH_POST_MIN_S=$POST_MIN): run \`bash studies/realmath.sh continue\` as the next call on this machine"
    PENDING=1
  else
    post_eval "$name" "$ckpt" "$run_id" "$row"
  fi
}

flow() {  # flow ARG [ORIGIN RUN_ID]: study.sh's run of one config (or the resume of ORIGIN), bounded
  local arg=$1 origin=${2:-} run_id=${3:-}
  STUDY_NO_INSTALL=1 STUDY_MAX_WORKERS=1 STUDY_KEEP_CHECKPOINTS=1 \
    STUDY_DEADLINE_S=${STUDY_DEADLINE_S:-600} STUDY_EST_S=${STUDY_EST_S:-0} \
    STUDY_FLOW_UNTIL=$(( T_START + DEADLINE - 30 )) STUDY_STEP_NEEDS="eval_task=$EVAL_NEEDS" \
    STUDY_RESUME="$origin" STUDY_MLFLOW_RUN_ID="$run_id" \
    STUDY_SET="${REALMATH_SET:-}" bash studies/study.sh "$arg"
}

if [ "$1" = continue ]; then   # what an earlier call of this machine left pending
  shopt -s nullglob
  pending=("$STUDY_DIR"/pending/*)
  [ ${#pending[@]} -gt 0 ] || { echo "nothing pending in $STUDY_DIR/pending: a fresh machine has nothing (run the flow again)" >&2; exit 3; }
  for f in "${pending[@]}"; do
    name=$(basename "$f")
    KIND=post CKPT="" ARG="" ORIGIN=""
    # shellcheck disable=SC1090  # KIND, ARG, ORIGIN, CKPT, RUN_ID, ROW, written by after_flow
    source "$f"
    if [ "$KIND" = resume ]; then
      if [ "$(left)" -lt "$EVAL_NEEDS" ]; then
        echo "=== $name: resume still pending: $(left) s left"; PENDING=1; continue
      fi
      rm -f "$f"
      flow "$ARG" "$ORIGIN" "$RUN_ID"
      after_flow "$name" "$ARG" $?
      pack
      continue
    fi
    if [ ! -d "$CKPT" ] || [ ! -f "$ROW" ]; then
      echo "=== $name: $CKPT or $ROW is gone: post-flow eval not run"; FAILED=1; rm -f "$f"; continue
    fi
    if [ "$(left)" -lt "$POST_MIN" ]; then
      echo "=== $name: post-flow eval still deferred: $(left) s left, it needs REALMATH_POST_MIN_S=$POST_MIN"
      PENDING=1; continue
    fi
    post_eval "$name" "$CKPT" "$RUN_ID" "$ROW"
    pack
  done
  pack   # also when everything stayed pending: the call returns the MLflow file
else
  for arg in "$@"; do
    m=${arg%%:*}; seed=""; [ "$m" != "$arg" ] && seed=${arg#*:}
    cfg=configs/realmath/$m.yaml
    [ -f "$cfg" ] || { echo "no such config: $cfg" >&2; exit 2; }
    rm -f "$STUDY_DIR/rows/$m${seed:+-seed$seed}.json"   # a row read below is this run's
    flow "$cfg${seed:+:$seed}"
    after_flow "$m${seed:+-seed$seed}" "$cfg${seed:+:$seed}" $?
    pack
  done
fi
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
[ "$FAILED" = 1 ] && exit 1
[ "$PENDING" = 1 ] && exit 4
exit 0
