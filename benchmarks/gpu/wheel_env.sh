# Sourced by the fetch_*_wheels.sh scripts: the repo root, the pip/python to download with, the
# carry chunk limits and the GPU machine's platform tags (Python 3.12, manylinux x86_64).
# Env knobs: PIP=... (default /work/venv/bin/pip, else pip), PY=... (a python with `packaging`).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${PIP:-}" ]; then
  if [ -x /work/venv/bin/pip ]; then PIP=/work/venv/bin/pip; else PIP=pip; fi
fi
if [ -z "${PY:-}" ]; then
  if [ -x /work/venv/bin/python ]; then PY=/work/venv/bin/python; else PY=python3; fi
fi
CHUNK_LIMIT=$((55 * 1024 * 1024))  # a device call carries at most 64 MiB, repo included
PART_SIZE=50M
PLAT=(--platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
