#!/usr/bin/env bash
# Multi-GPU check on a 2-GPU machine (device kind nvidia-h100-x2): the data-parallel trainer on 1 and on 2
# GPUs (torchrun + FSDP2 + NCCL), compared; the 2-GPU checkpoint loaded by the evaluation engine.
# Carried: .whl/ (math-verify and its parsers), .device/tok (SmolLM2's tokenizer files).
#   run(command="bash perf/gpu/multi_gpu.sh", kind="nvidia-h100-x2", carry=[".whl", ".device"])
set -euo pipefail
OUT=${OUT:-/tmp/out}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never multicast
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
TOK=$PWD/.device/tok
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"
run() {  # $1 = processes, $2 = name, rest = options
  local n=$1 name=$2; shift 2
  python3 -m torch.distributed.run --standalone --nproc_per_node "$n" perf/multi_gpu.py run \
    --out "$OUT/$name" --tokenizer "$TOK" "$@" > "$OUT/$name.log" 2>&1 || { tail -40 "$OUT/$name.log"; exit 1; }
  tail -1 "$OUT/$name.log"
}
# 1. the same update: fp32 (no TF32), 1 optimizer step, a 24-layer 1024-wide model
EQ=(--hidden 1024 --layers 24 --heads 16 --dtype float32 --prompts 8 --max-response-len 128 --steps 1 --lr 1e-5 --micro-batch-size 8)
run 1 eq1 "${EQ[@]}"
run 2 eq2 "${EQ[@]}"
python3 perf/multi_gpu.py compare "$OUT/eq1" "$OUT/eq2" --hidden 1024 --layers 24 --heads 16 --out "$OUT/compare_fp32.json" | head -30
# 2. bf16 (weights and optimizer in bf16: the bf16 tolerance) on the same model
BF=(--hidden 1024 --layers 24 --heads 16 --dtype bfloat16 --prompts 8 --max-response-len 128 --steps 1 --lr 1e-5 --micro-batch-size 8)
run 1 bf1 "${BF[@]}"
run 2 bf2 "${BF[@]}"
python3 perf/multi_gpu.py compare "$OUT/bf1" "$OUT/bf2" --hidden 1024 --layers 24 --heads 16 --out "$OUT/compare_bf16.json" | grep -E "max_|tokens_per_s\"|scaling" || true
# 3. throughput: a Qwen2.5-1.5B-sized model (1536 wide, 28 layers), bf16, 16 prompts x 8, 512 tokens
TP=(--hidden 1536 --layers 28 --heads 12 --dtype bfloat16 --prompts 16 --max-response-len 512 --steps 3 --lr 1e-6 --micro-batch-size 16)
run 1 tp1 "${TP[@]}"
run 2 tp2 "${TP[@]}"
python3 perf/multi_gpu.py compare "$OUT/tp1" "$OUT/tp2" --hidden 1536 --layers 28 --heads 12 --skip 1 --out "$OUT/compare_throughput.json" | grep -E "tokens_per_s|scaling|peak" -A3 || true
# 4. the sharded run's export through the evaluation engine
python3 perf/multi_gpu.py load "$OUT/eq2/checkpoint" | tail -1 | tee "$OUT/load.json"
rm -rf "$OUT"/*/checkpoint  # weights stay on the machine
