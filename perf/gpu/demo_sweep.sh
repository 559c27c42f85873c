#!/usr/bin/env bash
# perf/demo_sweep.py on the lent GPU machine: many seeds of CPU-sized configs at once (the
# demo's float32 SmolLM2-135M is launch-bound on a GPU, so a dozen runs share one card).
#
#   run(carry=[".whl-flow/c01"], command="bash studies/study.sh")   # stage c01, c02, c03
#   run(command="bash perf/gpu/demo_sweep.sh --seeds 1-8 --jobs 12 --variant base= ...")
#
# The wheels are perf/gpu/fetch_flow_wheels.sh's set, staged and installed by study.sh into
# /tmp/site. Decoding runs transformers' generate (`model.decoding=generate`), the code path the
# CPU demo takes; float32 on CUDA trains padded, as on the CPU. Only the sampled tokens' floating
# point differs from a CPU run, so a variant's spread over seeds is what the CPU demo would show,
# not its per-seed numbers. Results: $OUT/sweep (summary.json, the per-run JSON files in a tgz).
# SWEEP_CODE=DIR runs another checkout's prefix_rft (e.g. an older commit, `git archive`d into an
# ignored folder and carried; SWEEP_SET= then, where that commit has no model.decoding key).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT=${OUT:-/tmp/demo-sweep-out}
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export PREFIX_RFT_CACHE=/tmp/demo-sweep-cache
[ -f /tmp/site/.prefix-rft-flow-installed ] || { echo "wheels not installed: stage .whl-flow/cNN with study.sh" >&2; exit 3; }
python3 -c "from prefix_rft.builtin_models import SMOLLM2, ensure_builtin; print(ensure_builtin(SMOLLM2))" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p "$OUT/sweep"
timeout "${SWEEP_DEADLINE_S:-540}" python3 perf/demo_sweep.py --code "${SWEEP_CODE:-$ROOT}" --out "/tmp/demo-sweep${SWEEP_TAG:-}" \
  --threads 1 --set-all "${SWEEP_SET-model.decoding=generate}" "$@"
rc=$?
[ $rc = 124 ] && { echo "deadline: the runs that finished:"; python3 perf/demo_sweep.py --summarize --out "/tmp/demo-sweep${SWEEP_TAG:-}"; }
cp "/tmp/demo-sweep${SWEEP_TAG:-}/summary.json" "$OUT/sweep/summary${SWEEP_TAG:-}.json" 2>/dev/null
tar -C "/tmp/demo-sweep${SWEEP_TAG:-}" -czf "$OUT/sweep/runs${SWEEP_TAG:-}.tgz" runs
exit $rc
