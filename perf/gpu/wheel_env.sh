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

# Split wheels over CHUNK_LIMIT into PART_SIZE parts, pack everything into chunk folders
# $OUT/cNN (first-fit decreasing; every chunk also carries SHA256SUMS of the whole wheels) and
# check that the chunks reassemble to the wheels. Needs OUT, ALL (the downloaded wheels) and PY.
chunk_wheels() {
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
sums = os.path.join(out, "SHA256SUMS")
limit -= os.path.getsize(sums)  # every chunk carries SHA256SUMS
items = [(os.path.join(partsd, p), os.path.getsize(os.path.join(partsd, p))) for p in sorted(os.listdir(partsd))]
items += sorted(((os.path.join(alld, f), os.path.getsize(os.path.join(alld, f))) for f in os.listdir(alld)
                 if os.path.getsize(os.path.join(alld, f)) <= limit), key=lambda x: -x[1])
chunks: list[list] = []
for p, s in items:
    for c in chunks:
        if sum(x[1] for x in c) + s <= limit:
            c.append((p, s)); break
    else:
        chunks.append([(p, s)])
lines = []
for i, c in enumerate(chunks, 1):
    cd = os.path.join(out, f"c{i:02d}")
    os.makedirs(cd)
    shutil.copy2(sums, os.path.join(cd, "SHA256SUMS"))
    total = sum(s for _, s in c) + os.path.getsize(sums)
    lines.append(f"c{i:02d}: {total / 2**20:.2f} MiB, {len(c)} files")
    for p, s in c:
        (os.replace if p.startswith(partsd) else shutil.copy2)(p, os.path.join(cd, os.path.basename(p)))
        lines.append(f"  {s:>10d}  {os.path.basename(p)}")
open(os.path.join(out, "chunks.txt"), "w").write("\n".join(lines) + "\n")
PY
  rmdir "$OUT/parts"
  check=$(tmp=$(mktemp -d) && for c in "$OUT"/c[0-9][0-9]; do cp "$c"/* "$tmp"/; done && cd "$tmp" \
    && for w in $(ls ./*.part00 2>/dev/null | sed 's/.part00$//'); do cat "$w".part* > "$w"; rm "$w".part*; done \
    && sha256sum -c --quiet SHA256SUMS && [ "$(ls ./*.whl | wc -l)" = "$(wc -l < SHA256SUMS)" ] && echo ok; rm -rf "$tmp")
  [ "$check" = ok ] || { echo "chunk reassembly check failed" >&2; exit 1; }
}
