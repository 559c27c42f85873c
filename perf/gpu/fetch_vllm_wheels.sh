#!/usr/bin/env bash
# Rebuild the offline wheel set that runs vLLM 0.25.1 on the lent GPU machine.
#
# Why this exists:
#   * The GPU machine (H100, x86_64, Python 3.12, CUDA 13 image) has NO internet.
#     It already has torch 2.11.0 / torchvision / torchaudio / triton / transformers
#     5.17 / numpy / tokenizers / safetensors / httpx / anyio / aiohttp / ... installed,
#     but not vLLM or vLLM's other import-time dependencies.
#   * Files reach it only as part of the repo working tree carried by one `run`
#     call, at most 64 MiB per call. Files it writes under /tmp survive between
#     consecutive calls while the machine stays warm.
#   So we download the smallest set of wheels that `from vllm import LLM` +
#   `LLM(model=..., dtype="bfloat16")` + `llm.generate(...)` needs (found by reading
#   vLLM's imports and checking them on a CPU emulation of that environment), split
#   the 250 MB vLLM wheel into 50 MiB parts, and pack everything into chunk folders
#   .whl-vllm/cNN (each at most 55 MiB, so repo + chunk stays under the 64 MiB carry limit).
#   One `run` call per chunk copies it to /tmp/whl; the last call reassembles and
#   installs with `pip install --no-index --no-deps --target /tmp/site`.
#   See .whl-vllm/MANIFEST.txt (written by this script) for the exact per-call steps.
#
# Deliberately NOT shipped (see MANIFEST.txt for details): flashinfer-* (~470 MB plus
# nvidia-cutlass-dsl; needs VLLM_USE_FLASHINFER_SAMPLER=0 at run time instead), tilelang,
# quack-kernels, nvidia-cutlass-dsl, tokenspeed-mla, humming-kernels, torchcodec,
# PyNvVideoCodec, fastsafetensors, nvtx, numba==0.65.0, compressed-tensors, depyf,
# mistral_common, outlines_core, lm-format-enforcer, diskcache, lark, blake3,
# setproctitle, watchfiles, uvicorn/fastapi[standard] extras, anthropic, mcp,
# opentelemetry-*, model-hosting-container-standards, prometheus-fastapi-instrumentator,
# ijson, python-json-logger. None of them is imported on the offline LLM.generate path
# for an unquantized Llama-type model on Hopper (FlashAttention 3 backend).
#
# Usage (from the repo root, on a machine with PyPI access):
#   bash perf/gpu/fetch_vllm_wheels.sh
# Env knobs:
#   PIP=...                pip to use for downloads (default: /work/venv/bin/pip, else pip)
#   VLLM_WHEEL=path        reuse an already downloaded vllm-0.25.1 wheel instead of downloading it
#   PINNED_XGRAMMAR=1      use xgrammar 0.2.3 + apache-tvm-ffi 0.1.9 (exactly vLLM's
#                          apache-tvm-ffi==0.1.9 pin; +43 MiB, one more chunk) instead of
#                          xgrammar 0.2.8 + apache-tvm-ffi 0.1.15.post2
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/.whl-vllm"
ALL="$OUT/all"
if [ -z "${PIP:-}" ]; then
  if [ -x /work/venv/bin/pip ]; then PIP=/work/venv/bin/pip; else PIP=pip; fi
fi
PART_SIZE=50M            # split size for wheels > 55 MiB
CHUNK_LIMIT=$((55 * 1024 * 1024))   # bytes per chunk folder (< 60 MiB, leaves room for the repo)
BIG_LIMIT=$((55 * 1024 * 1024))     # wheels larger than this are split

# Exact versions (cp312 / abi3 / py3-none, manylinux x86_64).
WHEELS=(
  cbor2==6.3.0                 # vllm/utils/hashing.py:12 (import at vllm.config import)
  msgspec==0.22.0              # vllm/sampling_params.py:13, engine IPC
  pyzmq==27.3.0                # vllm/v1/serial_utils.py, engine core client
  cachetools==8.0.2            # vllm/utils/cache.py:8
  pybase64==1.5.1              # vllm/multimodal/media/*.py (top level)
  partial-json-parser==0.2.1.1.post7   # vllm/tool_parsers/utils.py:12 (via entrypoints/llm.py)
  openai==2.54.0               # vllm/entrypoints/mcp/tool.py:8 etc. (last 2.x: uses httpx, not httpx2)
  jiter==0.19.0                # dep of openai
  distro==1.9.0                # dep of openai
  sniffio==1.3.1               # dep of openai
  openai-harmony==0.0.8        # vllm/entrypoints/mcp/tool_server.py:7 (via vllm.reasoning)
  fastapi==0.136.3             # vllm/entrypoints/pooling/factories.py:6 (via entrypoints/llm.py)
  starlette==1.10.0            # dep of fastapi; vllm requires >=1.0.1
  pydantic==2.14.4             # everywhere (vllm.config); requires typing-extensions>=4.16
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0    # shipped because pre-installed version is unknown and pydantic needs >=4.16
  llguidance==1.7.6            # vllm/v1/structured_output/backend_guidance.py:139 (class annotation at import)
)
if [ "${PINNED_XGRAMMAR:-0}" = 1 ]; then
  WHEELS+=(xgrammar==0.2.3 apache-tvm-ffi==0.1.9)
else
  # vllm/v1/structured_output/backend_xgrammar.py:145 (class annotation at import).
  # xgrammar>=0.2.6 needs apache-tvm-ffi>=0.1.10, i.e. ignores vllm's ==0.1.9 pin, which only
  # matters for flashinfer / FA4-CuTeDSL (not shipped / not used on Hopper).
  WHEELS+=(xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2)
fi

mkdir -p "$ALL"
# keep the wheel folder out of git
if [ -d "$ROOT/.git/info" ] && ! grep -qx '/.whl-vllm/' "$ROOT/.git/info/exclude" 2>/dev/null; then
  echo /.whl-vllm/ >> "$ROOT/.git/info/exclude"
fi

PLAT=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d "$ALL" "${WHEELS[@]}"

VLLM_FILE=vllm-0.25.1-cp38-abi3-manylinux_2_28_x86_64.whl
if [ ! -f "$ALL/$VLLM_FILE" ]; then
  if [ -n "${VLLM_WHEEL:-}" ] && [ -f "$VLLM_WHEEL" ]; then
    cp "$VLLM_WHEEL" "$ALL/$VLLM_FILE"
  else
    "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLAT[@]}" -d "$ALL" vllm==0.25.1
  fi
fi

# drop wheels not in the current list (e.g. after switching PINNED_XGRAMMAR)
python3 - "$ALL" "${WHEELS[@]}" vllm==0.25.1 <<'PY'
import os, re, sys
d, specs = sys.argv[1], sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
want = {(norm(s.split("==")[0]), s.split("==")[1]) for s in specs}
for f in os.listdir(d):
    if not f.endswith(".whl"):
        continue
    name, ver = f.split("-")[:2]
    if (norm(name), ver) not in want:
        print("removing stale", f); os.remove(os.path.join(d, f))
PY

# ---- chunking -------------------------------------------------------------
rm -rf "$OUT"/c[0-9][0-9] "$OUT/parts"
mkdir -p "$OUT/parts"
( cd "$ALL" && sha256sum *.whl > "$OUT/SHA256SUMS" )
for w in "$ALL"/*.whl; do
  if [ "$(stat -c %s "$w")" -gt "$BIG_LIMIT" ]; then
    split -b "$PART_SIZE" -d "$w" "$OUT/parts/$(basename "$w").part"
  fi
done

python3 - "$OUT" "$CHUNK_LIMIT" "$BIG_LIMIT" <<'PY'
import os, shutil, sys
out, limit, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
alld, partsd = os.path.join(out, "all"), os.path.join(out, "parts")
parts = sorted(os.listdir(partsd))
small = sorted((f for f in os.listdir(alld) if os.path.getsize(os.path.join(alld, f)) <= big),
               key=lambda f: -os.path.getsize(os.path.join(alld, f)))
chunks = [[(os.path.join(partsd, p), os.path.getsize(os.path.join(partsd, p)))] for p in parts]
chunks.append([])  # optional extra chunk for leftovers
# SHA256SUMS goes with the last part (needed only for the final check)
sums = os.path.join(out, "SHA256SUMS")
target = len(parts) - 1 if parts else 0
chunks[target].append((sums, os.path.getsize(sums)))
for f in small:                      # first-fit decreasing
    p = os.path.join(alld, f); s = os.path.getsize(p)
    for c in chunks:
        if sum(x[1] for x in c) + s <= limit:
            c.append((p, s)); break
    else:
        chunks.append([(p, s)])
chunks = [c for c in chunks if c]
lines = []
for i, c in enumerate(chunks, 1):
    cd = os.path.join(out, f"c{i:02d}")
    os.makedirs(cd)
    tot = 0
    lines.append(f"c{i:02d}:")
    for p, s in c:
        dst = os.path.join(cd, os.path.basename(p))
        if p.startswith(partsd): os.replace(p, dst)
        else: shutil.copy2(p, dst)
        tot += s
        lines.append(f"  {s:>11d}  {s/2**20:7.2f} MiB  {os.path.basename(p)}")
    lines.append(f"  total {tot} bytes = {tot/2**20:.2f} MiB")
    assert tot < 60 * 2**20
open(os.path.join(out, "chunks.txt"), "w").write("\n".join(lines) + "\n")
print(f"{len(chunks)} chunks")
PY
rmdir "$OUT/parts"

# ---- verify the reassembly locally ---------------------------------------
TMPV="$(mktemp -d)"
cp "$OUT"/c[0-9][0-9]/* "$TMPV"/
( cd "$TMPV" && for w in $(ls *.part00 | sed 's/.part00$//'); do cat "$w".part* > "$w"; rm "$w".part*; done \
  && sha256sum -c --quiet SHA256SUMS && echo "reassembly OK: sha256 of all $(grep -c . SHA256SUMS) wheels match" )
rm -rf "$TMPV"

NCHUNK=$(ls -d "$OUT"/c[0-9][0-9] | wc -l)
TOTAL=$(cat "$OUT"/c[0-9][0-9]/* | wc -c)
LAST=$(printf 'c%02d' "$NCHUNK")

# ---- MANIFEST -------------------------------------------------------------
{
cat <<EOM
vLLM 0.25.1 offline wheel set for the GPU machine (H100, Python 3.12, CUDA 13, torch 2.11.0)
Generated by perf/gpu/fetch_vllm_wheels.sh  -- $NCHUNK chunks, $TOTAL bytes ($((TOTAL / 1048576)) MiB) in all.
.whl-vllm/ is git-ignored (.git/info/exclude), so every chunk folder must be named in run's carry.

Whole wheels (sha256, the same list travels as SHA256SUMS in $LAST):
EOM
sed 's/^/  /' "$OUT/SHA256SUMS"
echo
echo "Chunk folders (each < 60 MiB; vllm wheel split with 'split -b $PART_SIZE -d' into <wheel>.partNN):"
cat "$OUT/chunks.txt"
cat <<'EOM'

On the GPU machine -- one run call per chunk, in any order, while the machine stays warm
(/tmp persists between consecutive calls; a fresh machine means starting over):
  run(carry=[".whl-vllm/cNN"], command="mkdir -p /tmp/whl && cp .whl-vllm/cNN/* /tmp/whl/ && ls -la /tmp/whl | tail -n +2 | wc -l")

After the last chunk (can be appended to the last chunk's call):
  cd /tmp/whl && for w in $(ls *.part00 | sed 's/.part00$//'); do cat "$w".part* > "$w"; rm "$w".part*; done
  cd /tmp/whl && sha256sum -c --quiet SHA256SUMS && echo wheels-ok
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/whl/*.whl
  export PYTHONPATH=/tmp/site

Environment needed when running vLLM from this set (set before LLM(...) so the EngineCore
child process inherits it):
  export PYTHONPATH=/tmp/site
  export VLLM_USE_FLASHINFER_SAMPLER=0   # REQUIRED: flashinfer is not shipped; without this,
                                         # TopKTopPSampler.__init__ imports vllm.v1.attention.backends.flashinfer
                                         # (vllm/v1/sample/ops/topk_topp_sampler.py:44) -> ModuleNotFoundError
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # no internet; load from a local model dir
  export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1      # skip the usage-stats reporter thread

Smoke test:
  python3 -c "import vllm, vllm.vllm_flash_attn; from vllm import LLM, SamplingParams; from vllm.inputs import TokensPrompt; print(vllm.__version__)"
EOM
} > "$OUT/MANIFEST.txt"

echo "chunks: $NCHUNK, total carried: $TOTAL bytes ($((TOTAL / 1048576)) MiB)"
echo "manifest: $OUT/MANIFEST.txt (chunk list in $OUT/chunks.txt)"
