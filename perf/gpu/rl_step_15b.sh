#!/usr/bin/env bash
# The whole-RL-step benchmark at 1.5B on one H100/H200: every row of perf/rl_step.py in its own
# python3 process (vLLM keeps its GPU memory until its process exits), then one merged table.
#
#   bash perf/gpu/rl_step_15b.sh MODEL_DIR OUTDIR
#
# MODEL_DIR: a local HF directory of Qwen2.5-Coder-1.5B-Instruct (bf16). vllm, trl, datasets
# and math-verify must be importable by python3 (e.g. the wheels of perf/gpu/fetch_vllm_wheels.sh
# and perf/gpu/fetch_trl_wheels.sh installed with `pip install --no-index --no-deps --target
# /tmp/site`; /tmp/site is put on PYTHONPATH when it exists).
# Workload, the same for every row: the first 64 MATH-500 problems (so every step of every row
# sees the same 64 prompts, in its own order) x 8 samples, at most 1024 new tokens, T 1.0,
# top_p 1.0, bf16, sdpa, Math-Verify reward, 1 warm-up step. Rows, in this order:
#   vllm_generate        standalone vLLM on the requests of rft's and prefix_rft's first timed step
#   vllm_generate_lp     the same, returning log-probs (as our rollouts do)
#   vllm_generate_inproc the same with log-probs and the engine core in process (as colocated)
#   rft/prefix_rft_vllm  our trainer with rollout.engine=vllm, 3 timed steps
#   rft/prefix_rft_hf    our trainer with rollout.engine=hf, 1 timed step (HF generation at 1024
#                        tokens is slow)
#   trl_grpo_vllm        TRL GRPOTrainer, vLLM colocated (0.3 of the GPU, sleep mode on), 3 steps
# Each row has a timeout (below; capped by what is left of TOTAL_S, 540 s by default) and the
# script goes on when a row fails or times out (exit codes in OUTDIR/rc.txt); a row killed
# mid-way keeps the steps it finished (rl_step.py rewrites its JSON after every step).
# Results: OUTDIR/<row>.json, OUTDIR/merged.json, OUTDIR/table.md; logs in OUTDIR/logs/.
# Knobs (environment): MICRO (micro-batch of ours and TRL's, 32), TOTAL_S, the per-row budgets
# B_CEIL B_OURS_VLLM B_OURS_HF B_TRL (seconds for EACH row of that kind, one process each; the
# defaults 150 180 150 260 hold a fresh machine's first vLLM start, whose compile has no cache
# yet: 60-100 s of the budget; measured 2026-12-06 on an H100: TRL's row 249 s for 1 + 2 steps,
# a ceiling row with 1 + 2 steps over 100 s), VLLM_SET (extra rl_step.py arguments
# for our vLLM rows, e.g. "--set rollout.logprob_gap=on --set rollout.vllm.gpu_memory_utilization=0.3
# --set rollout.vllm.sleep_level=1"), STEPS_VLLM, STEPS_HF, STEPS_TRL, STEPS_CEIL, CEIL_PRESETS,
# CEIL_MEM (gpu_memory_utilization of the ceiling rows, 0.85), HF_SET (extra arguments of the hf rows).
set -uo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 MODEL_DIR OUTDIR" >&2; exit 2; fi
MODEL=$1 OUTDIR=$2
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
mkdir -p "$OUTDIR/logs"
: > "$OUTDIR/rc.txt"
export VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -d /tmp/site ] && PYTHONPATH=/tmp/site:$PYTHONPATH
export PYTHONPATH
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-540}
COMMON=(--model "$MODEL" --workload math500 --problems 64 --prompts 64 --group 8
        --max-new-tokens 1024 --temperature 1.0 --warmup 1 --dtype bfloat16 --attn sdpa
        --micro-batch-size "${MICRO:-32}")

left() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }

gpu_idle() {  # wait (at most 30 s) until no process holds the GPU: the last row's vLLM workers
  for _ in $(seq 30); do
    [ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null)" ] && return
    sleep 1
  done
  echo "  GPU still held after 30 s: $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | tr '\n' ' ')"
}

row() {  # row NAME BUDGET_S ARGS...: one rl_step.py process, its rc logged, never fatal
  local name=$1 budget=$2 t rc start
  shift 2
  t=$(left)
  if [ "$t" -lt 30 ]; then echo "$name skipped (only ${t} s left)" | tee -a "$OUTDIR/rc.txt"; return; fi
  [ "$budget" -gt "$t" ] && budget=$t
  start=$(date +%s)
  timeout -k 15 "$budget" python3 perf/rl_step.py "${COMMON[@]}" "$@" --out "$OUTDIR/$name.json" \
    > "$OUTDIR/logs/$name.log" 2>&1
  rc=$?
  echo "$name rc $rc ($(( $(date +%s) - start )) s, budget $budget s$([ $rc -eq 124 ] && echo ', timed out'))" \
    | tee -a "$OUTDIR/rc.txt"
  [ $rc -ne 0 ] && tail -3 "$OUTDIR/logs/$name.log"
  gpu_idle
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUTDIR/gpu.txt" 2>&1
ROWS=${ROWS:-vllm_generate rft_vllm prefix_rft_vllm rft_hf prefix_rft_hf trl_grpo_vllm}
for name in $ROWS; do
  case $name in
    vllm_generate) row vllm_generate "${B_CEIL:-150}" --vllm-ceiling --presets "${CEIL_PRESETS:-rft,prefix_rft}" --steps "${STEPS_CEIL:-1}" --vllm-mem "${CEIL_MEM:-0.85}" ;;
    # the ceiling as the colocated engine runs: log-probs returned, at CEIL_MEM of the card
    vllm_generate_lp) row vllm_generate_lp "${B_CEIL:-150}" --vllm-ceiling --presets "${CEIL_PRESETS:-rft,prefix_rft}" --steps "${STEPS_CEIL:-1}" --vllm-mem "${CEIL_MEM:-0.85}" --ceiling-logprobs ;;
    # ... and with vLLM's engine core in this process, as colocated (no separate engine process)
    vllm_generate_inproc) VLLM_ENABLE_V1_MULTIPROCESSING=0 row vllm_generate_inproc "${B_CEIL:-150}" --vllm-ceiling --presets "${CEIL_PRESETS:-rft,prefix_rft}" --steps "${STEPS_CEIL:-1}" --vllm-mem "${CEIL_MEM:-0.85}" --ceiling-logprobs ;;
    # shellcheck disable=SC2086  # VLLM_SET is a list of arguments
    rft_vllm|prefix_rft_vllm) row "$name" "${B_OURS_VLLM:-180}" --presets "${name%_vllm}" --engine vllm --steps "${STEPS_VLLM:-3}" ${VLLM_SET:-} ;;
    # shellcheck disable=SC2086  # HF_SET is a list of arguments
    rft_hf|prefix_rft_hf) row "$name" "${B_OURS_HF:-150}" --presets "${name%_hf}" --engine hf --steps "${STEPS_HF:-1}" ${HF_SET:-} ;;
    trl_grpo_vllm) row trl_grpo_vllm "${B_TRL:-260}" --trl-vllm --trl-vllm-mem 0.3 --trl-vllm-sleep 1 --steps "${STEPS_TRL:-3}" ;;
    *) echo "unknown row $name" | tee -a "$OUTDIR/rc.txt" ;;
  esac
done

files=()
for n in vllm_generate vllm_generate_lp vllm_generate_inproc rft_vllm prefix_rft_vllm rft_hf prefix_rft_hf trl_grpo_vllm; do
  [ -s "$OUTDIR/$n.json" ] && files+=("$OUTDIR/$n.json")
done
if [ ${#files[@]} -gt 0 ]; then
  python3 perf/rl_step.py --merge "${files[@]}" --out "$OUTDIR/merged.json" > "$OUTDIR/table.md" 2> "$OUTDIR/logs/merge.log"
  echo "merge rc $?" | tee -a "$OUTDIR/rc.txt"
  cat "$OUTDIR/table.md"
else
  echo "no row wrote results" | tee -a "$OUTDIR/rc.txt"
fi
echo "total $(( $(date +%s) - T0 )) s"
