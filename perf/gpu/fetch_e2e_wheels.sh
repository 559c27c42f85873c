#!/usr/bin/env bash
# Download the pipeline ("flow") wheels that the GPU machine needs ON TOP OF the vLLM set
# (perf/gpu/fetch_vllm_wheels.sh) for the end-to-end run perf/gpu/e2e_flow.sh, resolved by pip
# as ONE consistent set, into the git-ignored folder .whl-e2e/all (plain wheels, no chunks:
# perf/gpu/stage.sh packs them with the vLLM set and the model, `STAGE_FLOW_DIR=.whl-e2e/all`).
#
#   bash perf/gpu/fetch_e2e_wheels.sh          # from the repo root, on a machine with PyPI
#
# What it resolves (Python 3.12, manylinux x86_64, binary wheels only): Metaflow, MLflow (the
# server too: Flask, gunicorn, SQLAlchemy/alembic), moto's S3 server (moto[s3] + Flask +
# flask-cors: what `moto_server` needs to serve S3, which is all infra/local/servers.py uses),
# boto3, s3fs/fsspec/aiobotocore, datasets, math-verify and gguf, at constraints.txt's pins,
# against a constraints file that also holds
#   * the GPU machine's known versions (torch 2.11.0, transformers 5.17.0, huggingface-hub 1.33.0,
#     tokenizers, safetensors, accelerate, numpy, ...: never downloaded), and
#   * the vLLM set's exact versions (pydantic, fastapi, starlette, ...: not downloaded again),
#     except cachetools: mlflow-skinny needs < 8, the vLLM set holds 8.0.2 and vLLM takes any,
#     so this set brings cachetools 7.x and stage.py lets it replace the vLLM set's copy.
# pip resolves with `install --dry-run --report` (metadata only, nothing big is fetched), then
# downloads exactly the resolved versions that are neither on the machine nor in the vLLM set.
# Packages the machine has in an UNKNOWN version are left out, except SHIP_ANYWAY (below): those
# a requirement of this set pins tighter than we can trust the image to satisfy.
# The end lists every requirement of the set on a machine package of unknown version that has
# a version specifier, so a reader can judge the remaining risk.
# Env knobs: PIP=... (default the project venv's pip), PY=... (a python with `packaging`),
# STAGE_VLLM_DIR (default /work/main/.whl-vllm/all).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${PIP:-}" ]; then
  if [ -x /work/main/.venv/bin/pip ]; then PIP=/work/main/.venv/bin/pip; else PIP=pip; fi
fi
if [ -z "${PY:-}" ]; then
  if [ -x /work/main/.venv/bin/python ]; then PY=/work/main/.venv/bin/python; else PY=python3; fi
fi
VLLM_DIR=${STAGE_VLLM_DIR:-/work/main/.whl-vllm/all}
OUT="$ROOT/.whl-e2e"
ALL="$OUT/all"
WORK="$OUT/resolve"
PLAT=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
TAGS=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none "${PLAT[@]}")

# What the flow imports or runs (versions from constraints.txt where it pins them).
REQS=(metaflow mlflow "moto[s3]" flask flask-cors boto3 s3fs datasets math-verify gguf)
# The GPU machine's versions that are known (KINDS.md "pip list" row): pinned, never shipped.
DEVICE_PINNED=(torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 triton==3.6.0 transformers==5.17.0
  tokenizers==0.23.2 safetensors==0.8.0 huggingface-hub==1.33.0 accelerate==1.15.0 numpy==2.5.2
  sentencepiece==0.2.2 tiktoken==0.14.0)
# On the machine in an unknown version, shipped anyway (each replaces the image's copy for the
# staged processes, /tmp/site being first on PYTHONPATH):
#   fsspec: s3fs pins it exactly (2026.9.*); pyarrow: datasets 5 needs >= 24 (mlflow < 26);
#   werkzeug: Flask 3.1 needs >= 3.1; aiohttp: aiobotocore 3.10 needs >= 3.14.
SHIP_ANYWAY=(fsspec pyarrow werkzeug aiohttp)
# The image's packages (KINDS.md, image 'cuda', read 2026-11-17).
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp"

ls "$VLLM_DIR"/vllm-*.whl > /dev/null || { echo "no vLLM set in $VLLM_DIR (perf/gpu/fetch_vllm_wheels.sh)" >&2; exit 1; }
rm -rf "$WORK" "$ALL"
mkdir -p "$WORK" "$ALL"

# constraints: ours (minus what the machine pins), the machine's pins, the vLLM set's pins
"$PY" - "$ROOT/constraints.txt" "$VLLM_DIR" "$WORK/constraints.txt" "${DEVICE_PINNED[@]}" <<'PY'
import re, sys, pathlib
ours, vllm_dir, out, device = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
pinned = {norm(d.split("==")[0]): d for d in device}
for w in sorted(vllm_dir.glob("*.whl")):
    name, version = w.name.split("-")[:2]
    if norm(name) in ("vllm", "cachetools"):  # vllm: not resolved here; cachetools: see header
        continue
    pinned.setdefault(norm(name), f"{norm(name)}=={version}")
lines = []
for line in pathlib.Path(ours).read_text().splitlines():
    line = line.split("#")[0].strip()
    if line and norm(re.split(r"[=<>!~\[ ]", line)[0]) not in pinned:
        lines.append(line)
pathlib.Path(out).write_text("\n".join(lines + sorted(pinned.values())) + "\n")
PY

"$PIP" install -q --dry-run --ignore-installed --report "$WORK/report.json" --target "$WORK/t" \
  "${TAGS[@]}" -c "$WORK/constraints.txt" "${REQS[@]}"

# resolved -> to download: not on the machine (unless SHIP_ANYWAY), not in the vLLM set
"$PY" - "$WORK/report.json" "$VLLM_DIR" "$WORK/download.txt" "$DEVICE_HAS" "${SHIP_ANYWAY[*]}" <<'PY'
import json, re, sys, pathlib
report, vllm_dir, out, has, ship = sys.argv[1:6]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
has, ship = {norm(x) for x in has.split()}, {norm(x) for x in ship.split()}
in_vllm = {(norm(w.name.split("-")[0]), w.name.split("-")[1]) for w in pathlib.Path(vllm_dir).glob("*.whl")}
want, skipped = [], []
for item in json.load(open(report))["install"]:
    name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
    if (name, version) in in_vllm or (name in has and name not in ship):
        skipped.append(f"{name}=={version}")
    else:
        want.append(f"{name}=={version}")
pathlib.Path(out).write_text("\n".join(sorted(want)) + "\n")
print(f"resolved {len(want) + len(skipped)}: download {len(want)}, on the machine or in the vLLM set "
      f"{len(skipped)} ({' '.join(sorted(skipped))})")
PY

mapfile -t DOWNLOAD < "$WORK/download.txt"
"$PIP" download -q --no-deps "${TAGS[@]}" -d "$ALL" "${DOWNLOAD[@]}"

# Every Requires-Dist of set + vLLM set must be in the sets or on the machine; list those that
# rest on a machine package of unknown version with a version specifier.
"$PY" - "$ALL" "$VLLM_DIR" "$DEVICE_HAS" "${DEVICE_PINNED[@]}" <<'PY'
import re, sys, zipfile, pathlib
from packaging.requirements import Requirement
from packaging.version import Version
alld, vllm_dir, has, pins = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
known = {norm(p.split("==")[0]): p.split("==")[1] for p in pins}
ours = sorted(alld.glob("*.whl"))
sets = {norm(w.name.split("-")[0]): w.name.split("-")[1] for w in sorted(vllm_dir.glob("*.whl"))}
sets |= {norm(w.name.split("-")[0]): w.name.split("-")[1] for w in ours}  # ours replace vLLM's
has = {norm(x) for x in has.split()}
bad, unknown = [], []
for w in ours:
    z = zipfile.ZipFile(w)
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    me = norm(w.name.split("-")[0])
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = norm(req.name)
        version = sets.get(name) or known.get(name)
        if version is not None:
            if not req.specifier.contains(Version(version), prereleases=True):
                bad.append(f"{me} needs {req}, the set has {version}")
        elif name in has:
            if str(req.specifier):
                unknown.append(f"{me} needs {req}")
        else:
            bad.append(f"{me} needs {req}: neither in the sets nor on the machine")
if bad:
    sys.exit("inconsistent:\n  " + "\n  ".join(bad))
total = sum(w.stat().st_size for w in ours)
print(f"{len(ours)} wheels, {total} bytes ({total / 2**20:.1f} MiB); every requirement is in this set, "
      "the vLLM set or on the machine")
print("requirements on machine packages of unknown version (not checkable here):\n  "
      + "\n  ".join(sorted(set(unknown))))
PY
rm -rf "$WORK/t"
echo "flow wheels in $ALL; stage them with: STAGE_FLOW_DIR=$ALL bash perf/gpu/stage.sh"
