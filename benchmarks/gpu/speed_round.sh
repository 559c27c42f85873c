#!/usr/bin/env bash
# The speed issue's GPU measurements on one H100, in two consecutive calls (the SmolLM2 GGUF is
# ~98 MB: its halves travel in .device/a and .device/b, one per call; /tmp stays while the
# machine is held):
#   run(command="bash benchmarks/gpu/speed_round.sh 1", kind="nvidia-h100-x1", carry=[".device/a", ".whl-trl"])
#   run(command="bash benchmarks/gpu/speed_round.sh 2", carry=[".device/b"])
# Part 1: wheels + first half; training throughput of the 1.5B architecture at 4k-token rows.
# Part 2: second half -> GGUF -> HF dir; a whole RL step (rft) next to TRL's GRPOTrainer; the
#         generation benchmark (model.generate vs the engine's plain and fast paths).
set -uo pipefail
OUT=${OUT:-/tmp/out}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/m
if [ "$1" = 1 ]; then
  cp .device/a/gguf_part_aa /tmp/m/
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-trl/c*/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
  python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" > "$OUT/versions.txt"
  i=0
  for v in "--micro-rows 4" "--micro-rows 8 --checkpointing" "--layout padded --micro-rows 4"; do
    i=$((i+1))
    timeout 120 python3 benchmarks/train_throughput.py $v --steps 5 --out "$OUT/train_tp_$i.json" > "$OUT/train_tp_$i.log" 2>&1
    echo "variant $i ($v): rc $?"; tail -4 "$OUT/train_tp_$i.log"
  done
else
  cat /tmp/m/gguf_part_aa .device/b/gguf_part_ab > /tmp/m/smol.gguf && rm /tmp/m/gguf_part_aa
  timeout 300 python3 benchmarks/rl_step.py --model /tmp/m/smol.gguf --presets rft --trl --warmup 1 --steps 3 \
    --out "$OUT/rl_step_rft_trl.json" > "$OUT/rl_step.log" 2>&1
  echo "rl_step rc $?"; tail -25 "$OUT/rl_step.log"
  timeout 240 python3 benchmarks/generation_speed.py --model /tmp/m/smol-hf --dtype bfloat16 \
    --shapes 64x256,256x256 --repeats 3 --out "$OUT/gen_speed.json" > "$OUT/gen_speed.log" 2>&1
  echo "generation_speed rc $?"; tail -25 "$OUT/gen_speed.log"
fi
