"""Checkpoints: everything needed to continue a run exactly where it stopped.

Layout of a checkpoint directory:
    model/              HF `save_pretrained` weights + tokenizer (loadable by any HF tool)
    trainer_state.pt    optimizer(s), LR scheduler(s), TrainState (phase, steps, data position,
                        ReLIFT buffer), RNG states (python, torch CPU/CUDA); a finished run's
                        model-only checkpoint (`Trainer.fit(final_model_only=True)`) has no
                        optimizer or scheduler state: two thirds less to write for a float32
                        model trained with AdamW, and nothing to continue training from
    config.yaml         the resolved config
    state.json          human-readable summary (step, phase, config hash)
    MANIFEST.json       sha256 + size of every file (`prefix_rft.io.store`) - written last
A checkpoint is written into a temporary sibling directory and renamed into place, so an
interrupted save never leaves a directory that looks complete; the next save into the same
directory (and `prefix-rft train --resume`) removes such leftovers, naming each in a log line. Weights and optimizer states are
the full (unsharded) ones, optimizer states keyed by parameter name: under torchrun every rank
takes part in gathering them and rank 0 writes, so a checkpoint made on N GPUs is an ordinary HF
directory and resumes on any number of GPUs. The manifest makes the directory
a committed checkpoint of `prefix_rft.io.store` (which also puts checkpoints on S3).

This module is the file format only: it writes a model, its tokenizer, a config and the plain
dict of everything else a run needs (`Trainer.state_dict()`), and reads them back, knowing
nothing of the trainer. Which checkpoints to write and keep is the caller's policy
(`Trainer.fit(on_checkpoint=...)`; `prune_checkpoints` for a local directory).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prefix_rft.errors import UserError
from prefix_rft.io.store import remove_stale_staging, write_manifest
from prefix_rft.train import distributed as D

if TYPE_CHECKING:
    from prefix_rft.core.config import Config

STATE_FILE = "state.json"
TRAINER_STATE_FILE = "trainer_state.pt"


def save_checkpoint(path: str | Path, *, model, tokenizer, trainer_state: dict,
                    config: Config) -> Path:
    """Write the checkpoint directory `path`: `model`'s weights and `tokenizer` under model/,
    `trainer_state` (a plain dict: its "state" entry holds phase, global_step, sft_step and
    optimizer_steps, which the summary repeats) as trainer_state.pt, and `config`.
    Every rank must call it (gathering sharded weights is collective); rank 0 writes."""
    path = Path(path)
    weights = None
    if D.world()[1] > 1:  # tied head: one tensor in the file, as save_pretrained writes it
        weights = {k: v for k, v in D.full_model_state(model).items() if not _is_tied(model, k)}
    if not D.is_main():
        D.barrier()
        return path
    try:
        _write(path, model, tokenizer, trainer_state, config, weights)
    finally:
        D.barrier()
    return path


def _write(path: Path, model, tokenizer, trainer_state: dict, config: Config, weights) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path.parent)  # left by an interrupted save of this run
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.save_pretrained(tmp / "model", state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        (tmp / "config.yaml").write_text(config.to_yaml())
        st = trainer_state["state"]
        summary = {
            "phase": st["phase"], "global_step": st["global_step"], "sft_step": st["sft_step"],
            "optimizer_steps": st["optimizer_steps"], "method": config.method,
            "config_hash": config.config_hash(),
            "model_only": bool(trainer_state.get("model_only")),
        }
        (tmp / STATE_FILE).write_text(json.dumps(summary, indent=1))
        write_manifest(tmp, step=st["global_step"], epoch=None, config_hash=summary["config_hash"],
                       meta={k: summary[k] for k in ("phase", "sft_step", "optimizer_steps", "method")})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune_checkpoints(root: str | Path, keep_last: int, keep: str | Path) -> None:
    """Delete all but the newest `keep_last` checkpoints `step-*` under `root`, never `keep`
    (keep_last <= 0 keeps everything)."""
    if keep_last <= 0:
        return
    keep = Path(keep)
    ckpts = sorted(p for p in Path(root).glob("step-*") if (p / STATE_FILE).exists())
    for old in ckpts[:-keep_last]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / STATE_FILE).is_file() and (p / TRAINER_STATE_FILE).is_file()


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = sorted(p for p in Path(root).glob("step-*") if is_checkpoint(p))
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, model) -> dict:
    """Load the checkpoint's weights into `model` (sharded or not) and return its trainer state
    dict (what `save_checkpoint` was given). The weights are freed before the optimizer states
    are read, so the two are never in memory together."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_checkpoint(path):
        raise UserError(f"{path}: not a checkpoint (expected {STATE_FILE} and {TRAINER_STATE_FILE})")
    shards = sorted((path / "model").glob("*.safetensors"))
    weights = {}
    for s in shards:
        weights.update(load_file(str(s)))
    if D.world()[1] > 1:  # every rank read the full weights; each keeps its shard
        missing, unexpected = D.load_full_model_state(model, weights)
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    del weights  # copied into the model: free it before the optimizer state arrives (peak memory)
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise UserError(f"{path}/model: weights do not match the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return torch.load(path / TRAINER_STATE_FILE, weights_only=False)


def _is_tied(model, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.endswith("lm_head.weight")


def load_optimizer_state(model, opt, state: dict) -> None:
    """Load an optimizer state saved by a trainer: name-keyed (any number of GPUs) or
    index-keyed (`opt.state_dict()`)."""
    if all(isinstance(k, int) for k in state.get("state", {})) and state.get("state"):
        opt.load_state_dict(state)
    else:
        D.load_full_optimizer_state(model, opt, state)


def rng_states() -> dict:
    """The python, torch CPU and CUDA random states, to continue a run's draws exactly."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_states(rng: dict) -> None:
    """Set the random states `rng_states` returned."""
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
