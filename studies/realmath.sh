#!/usr/bin/env bash
# Run one real-math config (configs/realmath/) + seed through the real flow on the lent GPU
# machine. The flow trains, then scores the final checkpoint in ONE eval task (one vLLM start):
# the held-out part (greedy) and AIME24, AIME25, AMC (avg@32) and MATH-500 (avg@1) with the
# paper protocol at 1,024 tokens, every benchmark an evaluation child run of the MLflow run.
#
#   bash studies/realmath.sh stage                 # with .whl-flow/cNN carried (once per chunk)
#   bash studies/realmath.sh METHOD[:SEED] ...     # e.g. prefix_rft:2 (sft rft sft_then_rft luffy prefix_rft)
#   bash studies/realmath.sh continue              # the next call, same machine: a stopped flow
#
# A run does not fit one 600 s call on one H100 (2026-12-07: training alone took 333 s on one
# machine and 417 s on another; the eval task needs ~360 s), so it is cut where the time runs
# out and continued by the next call on the same (still warm) machine: the flow runs until
# REALMATH_DEADLINE_S minus 30 s, and it is stopped earlier when its eval task starts with
# fewer than REALMATH_EVAL_NEEDS_S (400) seconds left, rather than spending them on a task that
# cannot finish. Its finished tasks (the trained checkpoint included) stay, the run goes into
# $STUDY_DIR/pending/, and `continue` runs Metaflow's `resume` of it: the finished tasks are
# cloned, the rest runs, into the same MLflow run. A fresh machine has nothing pending (its
# files are gone): `continue` says so (exit 3), and the run must start again.
# After a finished flow, studies/realmath_samples.py copies each benchmark's per-problem samples
# out of MLflow into $STUDY_DIR/samples/NAME/ (for realmath_table.py's paired differences).
#
# Needs, on the machine: the vLLM stage (perf/gpu/stage.sh + unstage.sh: /tmp/stage/env.sh, the
# wheels in /tmp/site, the converted model in /tmp/cache) and the flow wheels: either in the same
# stage (`stage.sh --with-flow`, the usual way: nothing more to do) or
# perf/gpu/fetch_flow_wheels.sh's .whl-flow/c01..c03, installed by `stage` into /tmp/site-flow,
# a folder of its own so the stage's versions stay first on PYTHONPATH.
# Runs studies/study.sh with STUDY_NO_INSTALL=1 and one Metaflow worker (every eval task takes
# 0.85 of the GPU for vLLM), MLflow in sqlite:///$STUDY_DIR/mlflow.db; results in $OUT:
# summary.json (one row per run, its scores included), mlflow.db, logs.tgz, mlartifacts.tgz,
# samples.tgz (the per-problem samples). At most 5 files.
#
# Env knobs: STUDY_DIR (/tmp/realmath), REALMATH_SET (extra flow --set overrides),
# REALMATH_NO_STAGE=1 (use the current environment: CPU rehearsal), STUDY_DEADLINE_S (600) and
# STUDY_EST_S (0): study.sh starts a run only if this fits before the deadline; one run a call
# is the plan (configs/realmath/README.md), so by default every named run starts.
# REALMATH_DEADLINE_S (570 s from this script's start): flows are stopped by then, so that the
# device call's 600 s limit never takes their results. REALMATH_EVAL_NEEDS_S (400): above.
# Exit status: 0 when every flow finished; 1 when one failed; 4 when nothing failed but a flow
# waits for `continue`; 2: a usage error; 3: the machine is not staged, or `continue` found
# nothing pending.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T_START=$(date +%s)
DEADLINE=${REALMATH_DEADLINE_S:-570}
export STUDY_DIR=${STUDY_DIR:-/tmp/realmath}
export OUT=${OUT:-$STUDY_DIR/out}
PY=${STUDY_PY:-python3}
mkdir -p "$OUT" "$STUDY_DIR/samples"

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
# the store study.sh logs to (set there for its own processes; realmath_samples.py needs it here)
export MLFLOW_TRACKING_URI="sqlite:///$STUDY_DIR/mlflow.db" GIT_PYTHON_REFRESH=quiet
EVAL_NEEDS=${REALMATH_EVAL_NEEDS_S:-400}  # the flow's eval task + join_eval + end (README, "Sizing")
FAILED=0    # exit 1: a flow failed
PENDING=0   # exit 4 (when nothing failed): a stopped flow waits for `continue`

# shellcheck source=studies/collect.sh
source "$ROOT/studies/collect.sh"
pack() {  # collect (study.sh's: rows, mlflow.db, logs, MLflow artifacts) + the samples
  collect
  tar czf "$OUT/samples.tgz" -C "$STUDY_DIR" samples 2>/dev/null
  true
}

left() { echo $(( DEADLINE - ($(date +%s) - T_START) - 30 )); }  # 30 s for logging and packing

# after_flow NAME ARG STATUS: what a flow (or its resume) left, read from its row (STATUS:
# study.sh's exit status). A flow stopped for time is written to pending/ for `continue`
# (Metaflow's resume of that run); a finished one's samples are copied out of MLflow.
after_flow() {
  local name=$1 arg=$2 status=$3 row run_id mf rc
  row="$STUDY_DIR/rows/$name.json"
  [ -f "$row" ] || { echo "=== $name: no summary row (study.sh exit status $status)"; FAILED=1; return; }
  read -r rc run_id mf < <("$PY" -c "import json,sys; r = json.load(open(sys.argv[1]))
print(r['rc'], r['mlflow_run_id'] or '-', r['metaflow_run_id'] or '-')" "$row")
  [ "$run_id" = - ] && run_id=""
  [ "$mf" = - ] && mf=""
  if [ "$rc" = 124 ] && [ -n "$mf" ]; then
    # stopped for time: its finished tasks (and the checkpoints they committed: study.sh keeps
    # them) stay for resume
    mkdir -p "$STUDY_DIR/pending"
    printf 'ARG=%q\nORIGIN=%q\n' "$arg" "$mf" > "$STUDY_DIR/pending/$name"
    echo "=== $name: flow stopped for time (Metaflow run $mf): run \`bash studies/realmath.sh continue\` as the next call on this machine"
    PENDING=1
    return
  fi
  [ "$rc" = 0 ] || FAILED=1
  if [ -n "$run_id" ]; then
    echo "=== $name: per-problem samples -> $STUDY_DIR/samples/$name"
    "$PY" studies/realmath_samples.py "$run_id" "$STUDY_DIR/samples/$name" || FAILED=1
  fi
}

flow() {  # flow ARG [ORIGIN]: study.sh's run of one config (or the resume of ORIGIN), bounded
  local arg=$1 origin=${2:-}
  STUDY_NO_INSTALL=1 STUDY_MAX_WORKERS=1 \
    STUDY_DEADLINE_S=${STUDY_DEADLINE_S:-600} STUDY_EST_S=${STUDY_EST_S:-0} \
    STUDY_FLOW_UNTIL=$(( T_START + DEADLINE - 30 )) STUDY_STEP_NEEDS="eval_task=$EVAL_NEEDS" \
    STUDY_RESUME="$origin" \
    STUDY_SET="${REALMATH_SET:-}" bash studies/study.sh "$arg"
}

if [ "$1" = continue ]; then   # the flows an earlier call of this machine stopped for time
  shopt -s nullglob
  pending=("$STUDY_DIR"/pending/*)
  [ ${#pending[@]} -gt 0 ] || { echo "nothing pending in $STUDY_DIR/pending: a fresh machine has nothing (run the flow again)" >&2; exit 3; }
  for f in "${pending[@]}"; do
    name=$(basename "$f")
    ARG="" ORIGIN=""
    # shellcheck disable=SC1090  # ARG and ORIGIN, written by after_flow
    source "$f"
    if [ "$(left)" -lt "$EVAL_NEEDS" ]; then
      echo "=== $name: resume still pending: $(left) s left"; PENDING=1; continue
    fi
    rm -f "$f"
    flow "$ARG" "$ORIGIN"
    after_flow "$name" "$ARG" $?
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
