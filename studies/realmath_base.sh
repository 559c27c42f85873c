#!/usr/bin/env bash
# The untrained model's baseline table (issue 20 item 1): `prefix-rft eval` with the vLLM engine
# on the six benchmarks with the `default` protocol (avg@32, T 0.6, top_p 0.95) and the `paper`
# protocol (avg@32 on AIME24/25 and AMC, avg@1 at T 0.6 elsewhere), both at 4,096 new tokens,
# plus the real-math training and held-out parts (the policy's own success rate on them) and the
# paper protocol at 1,024 tokens (the protocol of the per-run evaluations: epoch 0 of the study).
# One call of at most ~540 s each, on a machine staged as for studies/realmath.sh:
#
#   bash studies/realmath_base.sh b1    # default: aime24, aime25, amc (avg@32)
#                                       # + paper @4096: math500, minerva, olympiadbench, train, heldout (avg@1)
#   bash studies/realmath_base.sh b2    # default: math500, first half (250 problems, avg@32)
#   bash studies/realmath_base.sh b3    # default: minerva (avg@32) + paper @1024: aime24, aime25, amc, math500
#                                       # + greedy @1024: heldout (the flow's held-out cell at epoch 0)
#   bash studies/realmath_base.sh b4    # default: olympiadbench, first quarter (169 problems, avg@32)
#   bash studies/realmath_base.sh b5    # default: olympiadbench, second quarter (169 problems)
#   bash studies/realmath_base.sh b6    # paper @1024: amc, math500 (b3's part that did not fit)
#   bash studies/realmath_base.sh b7    # default: amc + paper @4096: math500, minerva, olympiadbench,
#                                       # train, heldout (b1's rest: its call had 250 s, 2026-12-07)
#   bash studies/realmath_base.sh b8    # default: math500, second half (250 problems)
#   bash studies/realmath_base.sh b9    # default: olympiadbench, third quarter (169 problems)
#   bash studies/realmath_base.sh b10   # default: olympiadbench, fourth quarter (168 problems)
#
# b3 on a lent H100 (2026-12-07) spent 510 s on Minerva alone (46 grading timeouts), so its two
# later parts were run by hand the same day: greedy @1024 on heldout in full, paper @1024 only on
# aime24 and aime25 (docs/results/realmath_base/). b6 scores the rest. b1 ran in a session's last
# 250 s (2026-12-07): its default AIME24 and AIME25 finished; b7 is the rest of it.
# AIME24/25 and AMC of the paper protocol at 4,096 are the default protocol's samples (same n,
# temperature, top_p, seed and limit), so b1 does not repeat them. b7 (2026-12-08) generated
# 19k tokens/s at avg@32 and 4,096 tokens, mean lengths 709 (MATH-500) and 1,001 (OlympiadBench):
# the whole MATH-500 (16,000 samples, ~570 s of generation) or half of OlympiadBench (~540 s) does
# not fit a call with its ~60-85 s of imports and vLLM start, so the default protocol's MATH-500
# runs in halves (b2, b8) and OlympiadBench in quarters (b4, b5, b9, b10; ~270 s of generation
# each). The parts are problems files (ids kept, the loader's gold answer) whose samples.parquet
# files together are the avg@32 of the whole benchmark (studies/realmath_table.py joins them).
# Each part writes $OUT/<call>_<part>.tgz (summary.json + samples.parquet; only when at least
# one benchmark finished) and $OUT/<call>.log. Exit status: 0 when every part finished, 1 when a
# part failed, was stopped at the deadline or skipped, 2 for an unknown call.
# Env knobs: REALMATH_MODEL (qwen2.5-coder-1.5b-instruct), REALMATH_EVAL_ARGS (extra eval
# arguments; CPU rehearsal: "--engine hf --max-problems 2 --n 1 --max-new-tokens 16"),
# REALMATH_NO_STAGE=1 (use the current environment), REALMATH_DEADLINE_S (570: seconds from the
# script's start by which every part has ended, so that a part still running is stopped and its
# output packed before the device call's 600 s limit; the eval rewrites summary.json after every
# benchmark, so the finished benchmarks of a stopped part are kept, marked "complete": false; a
# part with less than 30 s left is skipped).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T_START=$(date +%s)
DEADLINE=${REALMATH_DEADLINE_S:-570}
PY=${STUDY_PY:-python3}
OUT=${OUT:-/tmp/realmath-base/out}
WORK=${STUDY_DIR:-/tmp/realmath-base}
MODEL=${REALMATH_MODEL:-qwen2.5-coder-1.5b-instruct}
CALL=${1:-}
case $CALL in
  b[1-9]|b10) ;;
  *) echo "usage: $0 b1|b2|b3|b4|b5|b6|b7|b8|b9|b10" >&2; exit 2 ;;
esac
mkdir -p "$OUT" "$WORK"
if [ "${REALMATH_NO_STAGE:-0}" != 1 ]; then
  [ -f /tmp/stage/env.sh ] || { echo "no /tmp/stage/env.sh: stage vLLM first (perf/gpu/unstage.sh)" >&2; exit 3; }
  # shellcheck disable=SC1091
  source /tmp/stage/env.sh
  [ -d /tmp/site-flow ] && export PYTHONPATH="$PYTHONPATH:/tmp/site-flow"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 VLLM_NO_USAGE_STATS=1

# the real-math parts, the MATH-500 halves and the OlympiadBench quarters as problems files
"$PY" - "$WORK/files" <<'PY' || exit 1
import sys
from pathlib import Path
from prefix_rft.data.problem import Problem, save_problems
from prefix_rft.data.realmath import load_realmath
from prefix_rft.eval.benchmarks import load_benchmark
d = Path(sys.argv[1])
if not (d / "olympiadbench_d.jsonl").exists():
    save_problems(load_realmath("train"), d / "realmath_train.jsonl")
    save_problems(load_realmath("heldout"), d / "realmath_heldout.jsonl")
    for name, parts in (("math500", 2), ("olympiadbench", 4)):
        ps = load_benchmark(name)
        assert all(len(p.answers) == 1 for p in ps), name
        rows = [Problem(p.id, p.problem, p.answers[0], (), name) for p in ps]
        size = -(-len(rows) // parts)  # the first parts the larger ones
        for i in range(parts):
            save_problems(rows[i * size:(i + 1) * size], d / f"{name}_{'abcd'[i]}.jsonl")
print(f"files in {d}")
PY
F=$WORK/files

part() {  # part NAME PROTOCOL MAX_NEW_TOKENS BENCHMARKS [more `prefix-rft eval` arguments]
  local name=$1 protocol=$2 tokens=$3 benches=$4 t0 rc left
  shift 4
  t0=$(date +%s)
  left=$(( DEADLINE - (t0 - T_START) - 10 ))   # 10 s for packing and the call's return
  if [ "$left" -lt 30 ]; then
    echo "=== $name: skipped, $left s left before REALMATH_DEADLINE_S=$DEADLINE"
    FAILED=1
    return
  fi
  rm -rf "${WORK:?}/$name"
  echo "=== $name: $protocol protocol, $tokens new tokens: $benches (at most $left s)"
  # shellcheck disable=SC2086  # REALMATH_EVAL_ARGS is a list of arguments
  timeout --kill-after=10 "$left" "$PY" -m prefix_rft.cli eval --model "$MODEL" \
    --benchmarks "$benches" --protocol "$protocol" --max-new-tokens "$tokens" --engine vllm \
    --workers 8 "$@" ${REALMATH_EVAL_ARGS:-} --output "$WORK/$name" 2>&1 | grep -v WARN
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || FAILED=1
  [ "$rc" = 124 ] && echo "=== $name: stopped at the deadline; the finished benchmarks are kept"
  if [ -f "$WORK/$name/summary.json" ]; then
    tar czf "$OUT/$name.tgz" -C "$WORK" "$name"
  else
    echo "=== $name: no benchmark finished, nothing to pack"
  fi
  echo "=== $name: rc $rc, $(( $(date +%s) - t0 )) s"
}

FAILED=0   # set by part(); the call's exit status is 1 when a part failed or was stopped
{
  case $CALL in
    b1) part b1_default default 4096 aime24,aime25,amc
        part b1_paper paper 4096 "math500,minerva,olympiadbench,$F/realmath_train.jsonl,$F/realmath_heldout.jsonl" ;;
    b2) part b2_default default 4096 "$F/math500_a.jsonl" ;;
    b3) part b3_default default 4096 minerva
        part b3_paper1024 paper 1024 aime24,aime25,amc,math500
        part b3_greedy1024 default 1024 "$F/realmath_heldout.jsonl" --n 1 --temperature 0 ;;
    b4) part b4_default default 4096 "$F/olympiadbench_a.jsonl" ;;
    b5) part b5_default default 4096 "$F/olympiadbench_b.jsonl" ;;
    b6) part b6_paper1024 paper 1024 amc,math500 ;;
    b7) part b7_default default 4096 amc
        part b7_paper paper 4096 "math500,minerva,olympiadbench,$F/realmath_train.jsonl,$F/realmath_heldout.jsonl" ;;
    b8) part b8_default default 4096 "$F/math500_b.jsonl" ;;
    b9) part b9_default default 4096 "$F/olympiadbench_c.jsonl" ;;
    b10) part b10_default default 4096 "$F/olympiadbench_d.jsonl" ;;
  esac
  exit "$FAILED"
} 2>&1 | tee "$OUT/$CALL.log"
