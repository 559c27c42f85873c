"""Seconds the checkpoint store spends hashing: a commit with `move` and an evaluation's fetch.

A synthetic checkpoint with the shape of the real-math runs' (float32 weights : AdamW state =
1 : 2, as 6.6 : 13 GB for Qwen2.5-1.5B) of --gb gigabytes in all is written, and its manifest
(as save_checkpoint does); then, each timed once:
  commit (move, caller's hashes reused)  LocalStore.commit(move=True), what train_epoch does
  commit (move, every file hashed)       the same with the reuse switched off (before 2026-12-07)
  fetch (whole checkpoint)               fetch_checkpoint verifying every file (the eval task before)
  fetch (model/ only)                    fetch_checkpoint(only="model/"), what the eval task does now
The files are in the page cache (just written), so the numbers are the hashing, not the disk.

    .venv/bin/python perf/checkpoint_io.py --gb 3 --dir /tmp/ckio
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prefix_rft.io.store as store_mod  # noqa: E402
from prefix_rft.io.store import LocalStore, fetch_checkpoint, write_manifest  # noqa: E402


def _write(path: Path, nbytes: int) -> None:
    block = os.urandom(1 << 24)
    with open(path, "wb") as f:
        for _ in range(nbytes // len(block)):
            f.write(block)


def _checkpoint(root: Path, gb: float) -> Path:
    total = int(gb * (1 << 30))
    (root / "model").mkdir(parents=True)
    _write(root / "model" / "model.safetensors", total // 3)
    (root / "model" / "config.json").write_text('{"hidden_size": 1536}')
    _write(root / "trainer_state.pt", 2 * total // 3)
    write_manifest(root, step=10, epoch=None, config_hash="h")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=3.0, help="checkpoint size in GiB (default 3)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/checkpoint_io"), help="scratch directory (removed)")
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    store = LocalStore(args.dir / "store")
    rows = []
    for label, reuse in (("commit (move, caller's hashes reused)", True),
                         ("commit (move, every file hashed)", False)):
        src = _checkpoint(args.dir / f"src-{reuse}", args.gb)
        real = store_mod._unchanged_hashes
        if not reuse:
            store_mod._unchanged_hashes = lambda d: {}
        t = time.perf_counter()
        ref = store.commit(src, f"run/step-{int(reuse)}", step=10, epoch=1, config_hash="h", move=True)
        rows.append((label, time.perf_counter() - t))
        store_mod._unchanged_hashes = real
    for label, only in (("fetch (whole checkpoint)", None), ("fetch (model/ only)", "model/")):
        t = time.perf_counter()
        fetch_checkpoint(ref, only=only)
        rows.append((label, time.perf_counter() - t))
    print(f"checkpoint of {args.gb:g} GiB (weights 1/3, optimizer state 2/3), files in the page cache")
    print("| operation | s |\n|---|---|")
    for label, s in rows:
        print(f"| {label} | {s:.2f} |")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
