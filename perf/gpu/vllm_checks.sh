#!/usr/bin/env bash
# The vLLM checks of the rollout engine on the lent GPU machine, after perf/gpu/unstage.sh finish
# (which installed vLLM, TRL and Math-Verify into /tmp/site and converted Qwen2.5-Coder-1.5B):
#
#   bash perf/gpu/vllm_checks.sh contract|stale|math500 [more ...]
#
#   contract  tests/test_vllm_engine.py -k contract: the generation contract of the evaluation engine
#   stale     tests/test_vllm_engine.py -k stale: vLLM colocated in a trainer, weights pushed after an
#             optimizer step with lr 1e-3 are never stale (prints the step's log-prob gap)
#   math500   the conversion check: MATH-500 greedy, 2048 new tokens, all 500 problems, through
#             prefix-rft's evaluation path with the vLLM engine (perf/eval_throughput.py)
# Each check runs in its own python3 process under a timeout (vLLM keeps the GPU and its process
# group for the life of a process); a failing check does not stop the next. Logs and results go to
# $OUT (or /tmp/checks): <check>.log, math500_greedy.jsonl, and the exit codes in checks_rc.txt.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
# shellcheck disable=SC1091
source /tmp/stage/env.sh || { echo "run perf/gpu/unstage.sh finish first" >&2; exit 2; }
DEST=${OUT:-/tmp/checks}
mkdir -p "$DEST"
MODEL=$PREFIX_RFT_CACHE/qwen2.5-coder-1.5b-instruct
export PREFIX_RFT_VLLM_TEST_MODEL=$MODEL PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1

check() {  # check NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout -k 15 "$limit" "$@" > "$DEST/$name.log" 2>&1
  rc=$?
  echo "$name rc $rc ($(( $(date +%s) - start )) s)" | tee -a "$DEST/checks_rc.txt"
  tail -n "${TAIL:-6}" "$DEST/$name.log"
}

for what in "$@"; do
  case $what in
    contract) check contract 200 python3 -m pytest -q -p no:cacheprovider -rs tests/test_vllm_engine.py -k contract ;;
    stale) TAIL=12 check stale 280 python3 -m pytest -q -s -p no:cacheprovider -rs tests/test_vllm_engine.py -k stale ;;
    math500) check math500 300 python3 perf/eval_throughput.py --model "$MODEL" --engine vllm \
      --benchmark math500 --problems 500 --n 1 --temperature 0 --max-new-tokens 2048 \
      --gpu-memory-utilization 0.85 --workers 8 --out "$DEST/math500_greedy.jsonl" ;;
    *) echo "unknown check $what" >&2 ;;
  esac
done
