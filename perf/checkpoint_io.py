"""Seconds the checkpoint store spends hashing: a commit with `move` and an evaluation's fetch.

A synthetic checkpoint with the shape of the real-math runs' (float32 weights : AdamW state =
1 : 2, as 6.6 : 13 GB for Qwen2.5-1.5B) of --gb gigabytes in all is written, and its manifest
(as save_checkpoint does); then, each timed once:
  commit (move, caller's hashes reused)  LocalStore.commit(move=True), what train_epoch does
  commit (move, every file hashed)       the same with the reuse switched off (before 2026-12-07)
  fetch (whole checkpoint)               fetch_checkpoint verifying every file (the eval task before)
  fetch (model/ only)                    fetch_checkpoint(only="model/"), what the eval task does now
The files are in the page cache (just written), so the numbers are the hashing, not the disk.

--save: instead, a real float32 model (a random Qwen2 of --hidden/--layers, the real-math model's
vocabulary) after one AdamW step, written by save_checkpoint as the trainer writes it (the
optimizer state by name, as under torchrun) and committed with move, twice:
  full        the optimizer and scheduler states included (every checkpoint before 2026-12-07)
  model only  `Trainer.fit(final_model_only=True)` / `pipeline.final_checkpoint: model`

    .venv/bin/python perf/checkpoint_io.py --gb 3 --dir /tmp/ckio
    .venv/bin/python perf/checkpoint_io.py --save --hidden 896 --layers 24 --dir /tmp/ckio
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


def _size_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def save_timings(args) -> None:
    """save_checkpoint + commit(move) of a real model, with and without the optimizer state."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from prefix_rft import models
    from prefix_rft.core.config import resolve
    from prefix_rft.train import distributed as D
    from prefix_rft.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    heads = max(1, args.hidden // 64)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=151936, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=min(2, heads),
        tie_word_embeddings=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()  # the moments exist: two float32 tensors per parameter
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    tok = models.load_tokenizer(args.tokenizer)
    cfg = resolve({"method": "rft", "model": {"name_or_path": "unused"}, "data": {"train": "unused"}})
    n = sum(p.numel() for p in model.parameters())
    state = {"phase": "done", "global_step": 1, "sft_step": 0, "optimizer_steps": 1}
    store = LocalStore(args.dir / "store")
    print(f"Qwen2 hidden {args.hidden} x {args.layers} layers, {n / 1e6:.0f}M parameters, float32, "
          "after one AdamW step")
    print("| checkpoint | GB | save_checkpoint s | commit (move) s |\n|---|---|---|---|")
    for label, model_only in (("full", False), ("model only", True)):
        t = time.perf_counter()
        trainer_state = {"state": state, "model_only": model_only, "rng": None,
                         "optimizer": None if model_only else D.full_optimizer_state(model, opt),
                         "scheduler": None if model_only else sched.state_dict(),
                         "relift_optimizer": None, "relift_scheduler": None}
        path = save_checkpoint(args.dir / f"ck-{int(model_only)}", model=model, tokenizer=tok,
                               trainer_state=trainer_state, config=cfg)
        saved = time.perf_counter() - t
        gb = _size_gb(path)
        t = time.perf_counter()
        store.commit(path, f"run/step-{int(model_only)}", step=1, epoch=1, config_hash="h", move=True)
        print(f"| {label} | {gb:.2f} | {saved:.1f} | {time.perf_counter() - t:.2f} |")
    shutil.rmtree(args.dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=3.0, help="checkpoint size in GiB (default 3)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/checkpoint_io"), help="scratch directory (removed)")
    ap.add_argument("--save", action="store_true",
                    help="time save_checkpoint of a real model, full and model-only (above)")
    ap.add_argument("--hidden", type=int, default=896, help="--save: hidden size (896: Qwen2.5-0.5B)")
    ap.add_argument("--layers", type=int, default=24, help="--save: layers (24: Qwen2.5-0.5B)")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct",
                    help="--save: the tokenizer written with the weights (name or path)")
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    if args.save:
        save_timings(args)
        return
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
