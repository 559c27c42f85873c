#!/usr/bin/env bash
# Run study configs (configs/study/) through the real pipeline flow on the lent GPU machine, one
# after the other (or STUDY_JOBS at a time), every run logged to one sqlite MLflow file; the small results come back in $OUT.
#
#   bash studies/study.sh [CONFIG[:SEED] ...]
#   run(carry=[".whl-flow/c01"], command="bash studies/study.sh")       # stage chunk 1
#   run(carry=[".whl-flow/c03"], command="STUDY_JOBS=3 STUDY_MAX_WORKERS=2 bash studies/study.sh sft rft ...")
#
# CONFIG: a method name of configs/study/ (sft, rft, sft_then_rft, luffy, relift, prefix_rft,
# freeze_prefix, update_all_prefix) or a config path; SEED (optional) becomes `--seed SEED`
# (default: the file's seed, 1). Example: `study.sh sft rft:2 configs/study/luffy.yaml:3`.
#
# 1. Wheels (perf/gpu/fetch_flow_wheels.sh -> .whl-flow/cNN): every call copies the chunk
#    folders it was carried with into /tmp/whl-flow; once all parts named in SHA256SUMS are
#    there it re-joins the split wheel, verifies the sha256 sums and installs everything with
#    `pip install --no-index --no-deps --target /tmp/site` (once per machine). A call with no
#    config only stages / installs. Without the complete set a call with configs stops (exit 3).
# 2. Each config: `python3 flows/prefix_rft_flow.py --config config FILE run [--seed S]
#    --set "pipeline.checkpoint_root=$STUDY_DIR/checkpoints/NAME $STUDY_SET"` with
#    MLFLOW_TRACKING_URI=sqlite:///$STUDY_DIR/mlflow.db (artifacts beside it in mlartifacts/),
#    Metaflow's local datastore under $STUDY_DIR, the built-in model each config names (or
#    STUDY_SET's model.name_or_path) converted once into $STUDY_DIR/cache before any run.
#    After each run: its row goes into $STUDY_DIR/summary.json (config, method, seed, rc,
#    wall seconds, MLflow run id, Metaflow run id, card, date, scores per epoch and level with
#    the CI) and $OUT gets mlflow.db, summary.json, the run logs (logs.tgz) and the MLflow
#    artifacts (mlartifacts.tgz), so a call that runs out of time still returns what finished.
#    The run's checkpoints are deleted afterwards (1.6 GB each; STUDY_KEEP_CHECKPOINTS=1 keeps;
#    a flow stopped for time keeps them for its resume).
# 3. Time: a call may run 600 s. A config is started only if the time used so far plus the
#    longest run of this call (or STUDY_EST_S, default 150) fits in STUDY_DEADLINE_S (default
#    540 s); the rest are listed as "not started" (run them in the next call; exit 4).
# 4. Parallel lanes: STUDY_JOBS=N runs N flows at once on the one GPU (lane i takes every N-th
#    argument from the i-th); SmolLM2-135M's decoding is launch-bound, so the GPU has room, and
#    the flows' CPU-bound parts (process starts, imports, model loads, grading) overlap. Memory:
#    the HF engine's fast path (on by default on CUDA) holds a static KV cache of 256 rows x 512
#    tokens (6 GB in fp32) plus CUDA graphs per process: estimate ~10 GB per eval task and
#    ~10-15 GB per train task (not measured; the call prints the peak it saw, sampled with
#    nvidia-smi). STUDY_MAX_WORKERS=K (Metaflow --max-workers) caps the tasks of one flow that
#    run at once (its 6 eval cells): keep JOBS x K x 10 GB under the card's memory. Default:
#    one flow at a time, all its eval cells at once (~60 GB).
#
# Env knobs: STUDY_DIR (/tmp/study; survives between calls while the machine stays warm),
# STUDY_SET (extra --set overrides; a method-neutral smoke run: "pipeline.steps_per_epoch=1
# eval.num_problems=8"),
# STUDY_DB_IN (an mlflow.db to continue, e.g. carried from an earlier round: copied to
# $STUDY_DIR/mlflow.db if that does not exist yet), STUDY_DEADLINE_S, STUDY_EST_S,
# STUDY_KEEP_CHECKPOINTS, STUDY_JOBS, STUDY_MAX_WORKERS, STUDY_PY (python3), STUDY_NO_INSTALL=1
# (use the current environment: CPU checks on a machine that has the packages).
# Bounded flows and resumes (studies/realmath.sh uses them): STUDY_FLOW_UNTIL (epoch seconds: the
# flow is stopped then, exit status 124, the row says where: "stopped"), STUDY_STEP_NEEDS
# ("eval_task=180": a task of that step starting with fewer seconds left stops the flow at once),
# STUDY_RESUME (a Metaflow run id: `resume --origin-run-id` it instead of a new run, its output
# appended to the stopped run's log; the row of the stopped run goes on, its seconds added).
set -uo pipefail

T0=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${STUDY_PY:-python3}
STUDY_DIR=${STUDY_DIR:-/tmp/study}
DEADLINE=${STUDY_DEADLINE_S:-540}
EST=${STUDY_EST_S:-150}
OUT=${OUT:-$STUDY_DIR/out}
WHL=${STUDY_WHL_DIR:-/tmp/whl-flow}
SITE=${STUDY_SITE:-/tmp/site}
MARK=$SITE/.prefix-rft-flow-installed
mkdir -p "$STUDY_DIR/logs" "$OUT" "$WHL"

# ---------------------------------------------------------------- 1. wheels
if [ "${STUDY_NO_INSTALL:-0}" != 1 ]; then
  for c in .whl-flow/c[0-9][0-9]; do
    [ -d "$c" ] || continue
    cp -n "$c"/* "$WHL"/ && echo "staged $c ($(du -sm "$c" | cut -f1) MiB) in $WHL"
  done
  if [ ! -f "$MARK" ]; then
    if [ ! -f "$WHL/SHA256SUMS" ]; then
      echo "no wheels staged yet: carry .whl-flow/cNN (perf/gpu/fetch_flow_wheels.sh)"
      [ $# -eq 0 ] && exit 0 || exit 3
    fi
    missing=0
    while read -r sum w; do
      if [ ! -f "$WHL/$w" ]; then
        parts=$(ls "$WHL/$w".part* 2>/dev/null | wc -l)
        if [ "$parts" -eq 0 ]; then missing=$((missing + 1)); continue; fi
        # a split wheel is complete when its joined parts have the whole wheel's sha256
        cat "$WHL/$w".part* > "$WHL/$w.joined"
        if [ "$(sha256sum "$WHL/$w.joined" | cut -d' ' -f1)" = "$sum" ]; then
          mv "$WHL/$w.joined" "$WHL/$w" && rm -f "$WHL/$w".part*
        else
          rm -f "$WHL/$w.joined"; echo "incomplete: $w ($parts part(s) staged)"
          missing=$((missing + 1))
        fi
      fi
    done < "$WHL/SHA256SUMS"
    if [ "$missing" -gt 0 ]; then
      echo "wheel set incomplete: $missing of $(wc -l < "$WHL/SHA256SUMS") wheels not staged yet;" \
        "carry the other .whl-flow/cNN chunk(s) in the next call(s)"
      [ $# -eq 0 ] && exit 0 || exit 3
    fi
    (cd "$WHL" && sha256sum -c --quiet SHA256SUMS) || { echo "sha256 mismatch in $WHL" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHL"/*.whl || exit 1
    touch "$MARK"
    echo "installed $(wc -l < "$WHL/SHA256SUMS") wheels into $SITE"
  fi
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
[ $# -eq 0 ] && { echo "no configs given: wheels ready"; exit 0; }

# ---------------------------------------------------------------- 2. environment
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export GIT_PYTHON_REFRESH=quiet                      # mlflow imports GitPython; git may be absent
export PREFIX_RFT_CACHE="$STUDY_DIR/cache"
export MLFLOW_TRACKING_URI="sqlite:///$STUDY_DIR/mlflow.db"
export METAFLOW_DATASTORE_SYSROOT_LOCAL="$STUDY_DIR/metaflow"
export METAFLOW_CARD_LOCALROOT="$STUDY_DIR/metaflow/cards"
export METAFLOW_USER=${METAFLOW_USER:-study} USERNAME=${USERNAME:-study}
if [ -n "${STUDY_DB_IN:-}" ] && [ ! -f "$STUDY_DIR/mlflow.db" ]; then
  cp "$STUDY_DB_IN" "$STUDY_DIR/mlflow.db" && echo "continuing $STUDY_DB_IN"
fi
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
CARD=${CARD:-cpu}
"$PY" - "$@" <<'PY' || exit 1
import importlib, sys, time
t = time.time()
for m in ("metaflow", "mlflow", "math_verify", "gguf", "torch", "transformers"):
    mod = importlib.import_module(m)
    print(f"{m} {getattr(mod, '__version__', '?')}", end="; ")
import os, shlex, yaml
from prefix_rft.builtin_models import BUILTIN_MODELS, ensure_builtin
from prefix_rft.core.config import parse_overrides
from prefix_rft.core.dicts import deep_merge
# the configs with STUDY_SET applied as the flow applies --set (steps/start.py), and the built-in
# models they name, converted once here before lanes start flows at the same time
over = parse_overrides(shlex.split(os.environ.get("STUDY_SET", "")))
configs = []
for arg in sys.argv[1:]:
    spec = arg.split(":")[0]
    path = spec if os.path.isfile(spec) else f"configs/study/{spec}.yaml"
    if os.path.isfile(path):
        configs.append(deep_merge(yaml.safe_load(open(path)) or {}, over))
models = {(c.get("model") or {}).get("name_or_path") for c in configs}
for name in sorted(m for m in models if m in BUILTIN_MODELS):
    print(f"\n{name}: {ensure_builtin(name)} ({time.time() - t:.0f} s with the imports)", end="")
print()
# the MLflow tables and the configs' experiments
from prefix_rft.io.tracking import Tracker
tracker = Tracker(os.environ["MLFLOW_TRACKING_URI"])
for c in configs:
    tracker.experiment_id((c.get("tracking") or {}).get("experiment") or "prefix-rft")
print(f"MLflow: {tracker.uri}")
PY

# ---------------------------------------------------------------- 3. the runs
mkdir -p "$STUDY_DIR/rows"
# collect: the small results into $OUT after every run (summary.json, mlflow.db, logs.tgz,
# mlartifacts.tgz); shared with realmath.sh
# shellcheck source=studies/collect.sh
source "$ROOT/studies/collect.sh"

# bounded_flow: the flow in a process group of its own, stopped for time (STUDY_FLOW_UNTIL,
# STUDY_STEP_NEEDS); shared with tests
# shellcheck source=studies/bounded.sh
source "$ROOT/studies/bounded.sh"

run_one() {  # run_one CONFIG[:SEED] -> the flow, its summary row, collect
  local arg=$1 spec seed cfg name log rc t1 wall ckpt
  spec=${arg%%:*}
  seed=""; [ "$spec" != "$arg" ] && seed=${arg#*:}
  cfg=$spec; [ -f "$cfg" ] || cfg="configs/study/$spec.yaml"
  name=$(basename "$cfg" .yaml)${seed:+-seed$seed}
  log="$STUDY_DIR/logs/$name.log"
  ckpt="$STUDY_DIR/checkpoints/$name"
  echo "=== $name: $cfg ${seed:+seed $seed} (t=$(( $(date +%s) - T0 ))s, card $CARD)"
  t1=$(date +%s)
  if [ -n "${STUDY_RESUME:-}" ]; then  # Metaflow's resume: the origin's config, its finished tasks cloned
    echo "=== $name: resuming Metaflow run $STUDY_RESUME" | tee -a "$log"
    bounded_flow "$log" flows/prefix_rft_flow.py --no-pylint resume --origin-run-id "$STUDY_RESUME" \
      ${STUDY_MAX_WORKERS:+--max-workers "$STUDY_MAX_WORKERS"}
  else
    : > "$log"
    bounded_flow "$log" flows/prefix_rft_flow.py --no-pylint --config config "$cfg" run \
      ${STUDY_MAX_WORKERS:+--max-workers "$STUDY_MAX_WORKERS"} ${seed:+--seed "$seed"} \
      --set "pipeline.checkpoint_root=$ckpt ${STUDY_SET:-}"
  fi
  rc=$?
  wall=$(( $(date +%s) - t1 ))
  echo "$wall" > "$STUDY_DIR/.wall-$name"
  grep -E "MLflow run|\| epoch|\| [0-9]+ \||failed|Error|error:" "$log" | tail -20
  echo "=== $name: rc=$rc, ${wall}s"
  "$PY" - "$cfg" "${seed}" "$rc" "$wall" "$CARD" "$log" "$STUDY_DIR/rows/$name.json" <<'PY'
import datetime, json, os, re, sys
cfg, seed, rc, wall, card, log, out = sys.argv[1:]
text = open(log, errors="replace").read()
m = re.search(r"MLflow run:? (\w+)( at|\s+\(experiment)", text)  # start's line, or end's
mf = re.findall(r"Workflow starting \(run-id (\w+)\)", text)  # a resumed run's log has two
row = {"config": cfg, "seed": int(seed) if seed else None, "rc": int(rc), "wall_s": int(wall),
       "card": card, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "jobs": int(os.environ.get("STUDY_JOBS") or 1), "set": os.environ.get("STUDY_SET", ""),
       "mlflow_run_id": m.group(1) if m else None,
       "metaflow_run_id": mf[-1] if mf else None}
stops = re.findall(r"^=== flow stopped at (.*?);", text, re.M)
if int(rc) == 124 and stops:
    row["stopped"] = stops[-1]
if os.environ.get("STUDY_RESUME"):  # the row of the stopped call goes on: its seconds count too
    row["resumed_from"] = os.environ["STUDY_RESUME"]
    if os.path.exists(out):
        before = json.load(open(out))
        row["wall_s"] += before.get("wall_s", 0)
        row["mlflow_run_id"] = row["mlflow_run_id"] or before.get("mlflow_run_id")
        row["calls"] = before.get("calls", 1) + 1
        row["set"] = before.get("set", row["set"])
# seconds per Metaflow step (the longest task of each; eval_task: its cells ran in parallel)
starts, tasks = {}, {}
for m in re.finditer(r"^(\S+ \S+) \[\d+/(\w+)/(\d+) \(pid \d+\)\] Task (is starting|finished successfully|failed)",
                     text, re.M):
    ts = datetime.datetime.fromisoformat(m.group(1)).timestamp()
    key = (m.group(2), m.group(3))
    if m.group(4) == "is starting":
        starts.setdefault(key, ts)
    elif key in starts:
        tasks[m.group(2)] = max(tasks.get(m.group(2), 0), round(ts - starts[key], 1))
row["task_s"] = tasks
if row["mlflow_run_id"]:
    try:
        from mlflow import MlflowClient
        c = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        run = c.get_run(row["mlflow_run_id"])
        row["method"] = run.data.params.get("method")
        row["seed"] = int(run.data.params.get("seed", row["seed"] or 0))
        row["status"] = run.info.status
        scores = {}
        for key in run.data.metrics:
            k = re.fullmatch(r"eval/([^/]+)/avg_at_(\d+)", key)
            if not k:
                continue
            bench = k.group(1)
            lo = {p.step: p.value for p in c.get_metric_history(run.info.run_id, f"eval/{bench}/ci_low")}
            hi = {p.step: p.value for p in c.get_metric_history(run.info.run_id, f"eval/{bench}/ci_high")}
            for p in c.get_metric_history(run.info.run_id, key):
                scores.setdefault(bench, {})[str(p.step)] = {
                    "metric": f"avg_at_{k.group(2)}", "value": p.value,
                    "ci": [lo.get(p.step), hi.get(p.step)]}
        row["scores"] = scores
        for key in ("time/step", "time/generation", "time/update"):
            hist = [p.value for p in c.get_metric_history(run.info.run_id, key)]
            if hist:
                row[key.replace("/", "_") + "_median"] = sorted(hist)[len(hist) // 2]
                row["train_steps_logged"] = len(hist)
    except Exception as e:  # the row still records the run
        row["summary_error"] = f"{type(e).__name__}: {e}"
json.dump(row, open(out, "w"), indent=1)
print(json.dumps({k: row.get(k) for k in ("method", "seed", "rc", "wall_s", "mlflow_run_id",
                                           "time_step_median", "task_s")}))
for b, by_epoch in sorted(row.get("scores", {}).items()):
    print(f"  {b}: " + ", ".join(f"epoch {e} {v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
                                   for e, v in sorted(by_epoch.items())))
PY
  # a flow stopped for time (rc 124) keeps them: its resume clones the tasks that wrote them
  if [ "${STUDY_KEEP_CHECKPOINTS:-0}" != 1 ] && [ "$rc" != 124 ]; then rm -rf "$ckpt"; fi
  collect
}

lane() {  # lane I: every JOBS-th argument from the I-th, one after the other, within the deadline
  local i=$1 j=0 arg longest=0 now need w name spec cfg
  shift
  for arg in "$@"; do
    j=$((j + 1))
    [ $(( (j - 1) % JOBS )) -eq "$i" ] || continue
    spec=${arg%%:*}; cfg=$spec; [ -f "$cfg" ] || cfg="configs/study/$spec.yaml"
    if [ ! -f "$cfg" ]; then echo "not started: $arg (no such config)"; continue; fi
    now=$(( $(date +%s) - T0 ))
    need=$(( longest > EST ? longest : EST ))
    if [ $(( now + need )) -gt "$DEADLINE" ]; then echo "not started: $arg (time)"; continue; fi
    run_one "$arg"
    name=$(basename "$cfg" .yaml); [ "$spec" != "$arg" ] && name="$name-seed${arg#*:}"
    w=$(cat "$STUDY_DIR/.wall-$name" 2>/dev/null || echo 0)
    [ "$w" -gt "$longest" ] && longest=$w
  done
}

# STUDY_JOBS lanes run at once on the one GPU (default 1: one config after the other)
JOBS=${STUDY_JOBS:-1}
export STUDY_JOBS=$JOBS
rm -f "$STUDY_DIR"/logs/lane*.out
MEMLOG="$STUDY_DIR/logs/gpu_mem_$(date +%s).csv"  # used GPU memory (MiB) every 2 s, for sizing
SAMPLER=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -l 2 > "$MEMLOG" 2>/dev/null &
  SAMPLER=$!
fi
LANES=()
for ((i = 0; i < JOBS; i++)); do
  if [ "$JOBS" = 1 ]; then
    lane "$i" "$@" 2>&1 | tee "$STUDY_DIR/logs/lane$i.out"
  else
    lane "$i" "$@" 2>&1 | sed -u "s/^/[lane $i] /" | tee "$STUDY_DIR/logs/lane$i.out" &
    LANES+=($!)
    sleep 1
  fi
done
# the lanes only: a bare `wait` would also wait for the memory sampler, which never ends (the
# call then ran into its time limit after the last run, without the final summary)
[ ${#LANES[@]} -gt 0 ] && wait "${LANES[@]}"
if [ -n "$SAMPLER" ]; then
  kill "$SAMPLER" 2>/dev/null
  echo "peak GPU memory used during this call: $(sort -n "$MEMLOG" | tail -1) MiB ($MEMLOG)"
fi
collect
echo "done in $(( $(date +%s) - T0 ))s; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
if grep -q "not started" "$STUDY_DIR"/logs/lane*.out; then
  echo "some configs were not started (listed above): run them in the next call"
  exit 4
fi
