"""Checkpoints: everything needed to continue a run exactly where it stopped.

Layout of a checkpoint directory:
    model/              HF `save_pretrained` weights + tokenizer (loadable by any HF tool)
    trainer_state.pt    optimizer(s), LR scheduler(s), TrainState (phase, steps, data position,
                        ReLIFT buffer), RNG states (python, torch CPU/CUDA)
    config.yaml         the resolved config
    state.json          human-readable summary (step, phase, config hash)
    MANIFEST.json       sha256 + size of every file (`prefix_rft.store`) - written last
A checkpoint is written into a temporary sibling directory and renamed into place, so an
interrupted save never leaves a directory that looks complete. The manifest makes the directory
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

from prefix_rft.errors import UserError
from prefix_rft.store import write_manifest

STATE_FILE = "state.json"


def save_checkpoint(trainer, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        trainer.model.save_pretrained(tmp / "model", safe_serialization=True)
        trainer.tokenizer.save_pretrained(tmp / "model")
        blob = {
            "state": asdict(trainer.state),
            "optimizer": trainer.opt.state_dict() if trainer.opt else None,
            "scheduler": trainer.sched.state_dict() if trainer.sched else None,
            "relift_optimizer": trainer.relift_opt.state_dict() if trainer.relift_opt else None,
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
    return path


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
    missing, unexpected = trainer.model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not _is_tied(trainer.model, k)]
    if missing or unexpected:
        raise UserError(f"{path}/model: weights do not match the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    blob = torch.load(path / "trainer_state.pt", weights_only=False)
    trainer.state = TrainState(**blob["state"])
    trainer.state.relift_buffer = [tuple(x) for x in trainer.state.relift_buffer]
    trainer._make_phase_optimizer()
    if blob["optimizer"] is not None:
        trainer.opt.load_state_dict(blob["optimizer"])
        trainer.sched.load_state_dict(blob["scheduler"])
    if blob["relift_optimizer"] is not None and trainer.relift_opt is not None:
        trainer.relift_opt.load_state_dict(blob["relift_optimizer"])
        trainer.relift_sched.load_state_dict(blob["relift_scheduler"])
    rng = blob["rng"]
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _is_tied(model, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.endswith("lm_head.weight")
