"""Checkpoints: everything needed to continue a run exactly where it stopped.

Layout of a checkpoint directory:
    model/              HF `save_pretrained` weights + tokenizer (loadable by any HF tool)
    trainer_state.pt    optimizer(s), LR scheduler(s), TrainState (phase, steps, data position,
                        ReLIFT buffer), RNG states (python, torch CPU/CUDA)
    config.yaml         the resolved config
    state.json          human-readable summary (step, phase, config hash)
    MANIFEST.json       sha256 + size of every file (`prefix_rft.store`) - written last
A checkpoint is written into a temporary sibling directory and renamed into place, so an
interrupted save never leaves a directory that looks complete. Weights and optimizer states are
the full (unsharded) ones, optimizer states keyed by parameter name: under torchrun every rank
takes part in gathering them and rank 0 writes, so a checkpoint made on N GPUs is an ordinary HF
directory and resumes on any number of GPUs. The manifest makes the directory
a committed checkpoint of `prefix_rft.store` (which also puts checkpoints on S3).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from prefix_rft import distributed as D
from prefix_rft.errors import UserError
from prefix_rft.store import write_manifest

STATE_FILE = "state.json"


def save_checkpoint(trainer, path: str | Path) -> Path:
    """Write `path` (rank 0; every rank must call it: gathering sharded states is collective)."""
    path = Path(path)
    weights = None
    if D.world()[1] > 1:  # tied head: one tensor in the file, as save_pretrained writes it
        weights = {k: v for k, v in D.full_model_state(trainer.model).items()
                   if not _is_tied(trainer.model, k)}
    opt = D.full_optimizer_state(trainer.model, trainer.opt) if trainer.opt else None
    relift = D.full_optimizer_state(trainer.model, trainer.relift_opt) if trainer.relift_opt else None
    if not D.is_main():
        D.barrier()
        return path
    try:
        _write(trainer, path, weights, opt, relift)
    finally:
        D.barrier()
    return path


def _write(trainer, path: Path, weights, opt, relift) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        trainer.model.save_pretrained(tmp / "model", state_dict=weights, safe_serialization=True)
        trainer.tokenizer.save_pretrained(tmp / "model")
        blob = {
            "state": asdict(trainer.state),
            "optimizer": opt,
            "scheduler": trainer.sched.state_dict() if trainer.sched else None,
            "relift_optimizer": relift,
            "relift_scheduler": trainer.relift_sched.state_dict() if trainer.relift_sched else None,
            "rng": {
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }
        torch.save(blob, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(trainer.cfg.to_yaml())
        summary = {
            "phase": trainer.state.phase, "global_step": trainer.state.global_step,
            "sft_step": trainer.state.sft_step, "optimizer_steps": trainer.state.optimizer_steps,
            "method": trainer.cfg.method, "config_hash": trainer.cfg.config_hash(),
        }
        (tmp / STATE_FILE).write_text(json.dumps(summary, indent=1))
        write_manifest(tmp, step=trainer.state.global_step, epoch=None,
                       config_hash=trainer.cfg.config_hash(),
                       meta={k: summary[k] for k in ("phase", "sft_step", "optimizer_steps", "method")})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(path.parent, trainer.cfg.keep_last, keep=path)


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    if keep_last <= 0:
        return
    ckpts = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists())
    for old in ckpts[:-keep_last]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / STATE_FILE).is_file() and (p / "trainer_state.pt").is_file()


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = sorted(p for p in Path(root).glob("step-*") if is_checkpoint(p))
    return ckpts[-1] if ckpts else None


def load_checkpoint(trainer, path: str | Path) -> None:
    """Restore weights, optimizers, schedulers, state and RNG into an existing trainer."""
    from safetensors.torch import load_file

    from prefix_rft.trainer import TrainState

    path = Path(path)
    if not is_checkpoint(path):
        raise UserError(f"{path}: not a checkpoint (expected {STATE_FILE} and trainer_state.pt)")
    shards = sorted((path / "model").glob("*.safetensors"))
    weights = {}
    for s in shards:
        weights.update(load_file(str(s)))
    if D.world()[1] > 1:  # every rank read the full weights; each keeps its shard
        missing, unexpected = D.load_full_model_state(trainer.model, weights)
    else:
        missing, unexpected = trainer.model.load_state_dict(weights, strict=False)
    del weights  # copied into the model: free it before the optimizer state arrives (peak memory)
    missing = [k for k in missing if not _is_tied(trainer.model, k)]
    if missing or unexpected:
        raise UserError(f"{path}/model: weights do not match the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    blob = torch.load(path / "trainer_state.pt", weights_only=False)
    trainer.state = TrainState(**blob["state"])
    trainer.state.relift_buffer = [tuple(x) for x in trainer.state.relift_buffer]
    trainer._make_phase_optimizer()
    if blob["optimizer"] is not None:
        _load_optimizer(trainer.model, trainer.opt, blob["optimizer"])
        trainer.sched.load_state_dict(blob["scheduler"])
    if blob["relift_optimizer"] is not None and trainer.relift_opt is not None:
        _load_optimizer(trainer.model, trainer.relift_opt, blob["relift_optimizer"])
        trainer.relift_sched.load_state_dict(blob["relift_scheduler"])
    rng = blob["rng"]
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _load_optimizer(model, opt, state: dict) -> None:
    """Name-keyed states (any number of GPUs); index-keyed ones (`opt.state_dict()`) too."""
    if all(isinstance(k, int) for k in state.get("state", {})) and state.get("state"):
        opt.load_state_dict(state)
    else:
        D.load_full_optimizer_state(model, opt, state)


def _is_tied(model, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.endswith("lm_head.weight")
