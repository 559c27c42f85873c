"""Continuing a run from a checkpoint with the config it is resumed with.

A checkpoint holds the config it was trained with (config.yaml). On resume the new config is
compared with it key by key (dotted keys, e.g. `rl.optim.lr`):

* budget keys (`BUDGET_KEYS`: `rl.steps`, `sft.epochs`) may change: the run continues to the
  new total. What a changed budget means for the schedules:
    - the learning-rate schedule of the running phase (warm-up, then constant/linear/cosine
      decay over the phase's optimizer steps) is computed for the NEW total from the next
      optimizer step on; the steps already taken keep the rates they had. With the default
      constant schedule an extended run is therefore identical to a straight run of the longer
      budget; with a decaying one it is not (the first part decayed towards the old end);
    - the prefix schedule has its own horizon (`rollout.prefix_schedule.total_steps`), not
      derived from `rl.steps`, so a longer budget does not change it (changing that key is a
      config change like any other);
    - a finished run (phase done) is reopened: a raised `rl.steps` continues the RL phase with
      its optimizer state; a raised `sft.epochs` continues the SFT phase only while no RL step
      has been taken (SFT runs before RL and cannot come back after it);
    - a lowered budget ends the phase at the checkpoint's step if that is already past it.
* bookkeeping keys (`FREE_KEYS`: `log_every`, `save_every`, `keep_last`) only change how often
  a line is printed or a checkpoint written and how many are kept: allowed, recorded.
* any other difference is refused with one `UserError` listing every differing key
  (old -> new) unless the caller allows it (`prefix-rft train --allow-config-change`).

Every accepted difference is recorded: one JSON line per resume in `<run dir>/config_changes.jsonl`
(`CHANGES_FILE`) with the checkpoint, its step and each key's old and new value and kind
(budget, free, allowed), and printed as a log line.

On resume the run directory's `metrics.jsonl` is cut back to the checkpoint
(`truncate_metrics`): rows of steps after it were written by the interrupted process and will be
written again by this one, so a step never appears twice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from prefix_rft.core.dicts import flatten
from prefix_rft.errors import UserError

log = logging.getLogger(__name__)

BUDGET_KEYS = ("rl.steps", "sft.epochs")
FREE_KEYS = ("log_every", "save_every", "keep_last")
CHANGES_FILE = "config_changes.jsonl"
_ABSENT = "<absent>"


def checkpoint_config(ckpt: str | Path, cls) -> dict[str, Any]:
    """The flattened config a checkpoint was trained with (its config.yaml resolved as `cls`,
    so keys added to the code since then take their defaults; the raw file if it no longer
    resolves)."""
    from prefix_rft.core.config import resolve

    path = Path(ckpt) / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"checkpoint {ckpt}: no config.yaml (cannot compare configs)") from None
    try:
        return flatten(resolve(data, cls=cls).to_dict())
    except UserError:
        return flatten(data)


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} of every key whose value differs (absent on one side counts)."""
    return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(set(old) | set(new))
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


def _kind(key: str) -> str:
    return "budget" if key in BUDGET_KEYS else "free" if key in FREE_KEYS else "config"


def check_resume_config(ckpt: str | Path, cfg, state: dict, *, allow: bool) -> dict[str, dict]:
    """Compare `cfg` (the config a run resumes with) with the checkpoint's; returns
    {key: {"old", "new", "kind"}} of the accepted differences, or raises one `UserError` listing
    every refused key. `state`: the checkpoint's state.json (phase, global_step, sft_step)."""
    diff = config_diff(checkpoint_config(ckpt, type(cfg)), flatten(cfg.to_dict()))
    refused = {k: v for k, v in diff.items() if _kind(k) == "config"}
    why = ""
    if "sft.epochs" in diff and (state.get("global_step", 0) > 0 or state.get("phase") == "rl"):
        refused["sft.epochs"] = diff["sft.epochs"]  # the SFT phase cannot come back after RL
        why = (f" (sft.epochs: the checkpoint is past the SFT phase, at RL step "
               f"{state.get('global_step', 0)}; SFT runs before RL)")
    if refused and not allow:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise UserError(f"--resume {ckpt}: the config differs from the checkpoint's in "
                        f"{len(refused)} key(s): {listed}{why}. Resume with the checkpoint's "
                        "values, or pass --allow-config-change to continue with the new ones "
                        f"(recorded in {CHANGES_FILE}); only {', '.join(BUDGET_KEYS)} and "
                        f"{', '.join(FREE_KEYS)} may change without it")
    return {k: {"old": old, "new": new, "kind": "allowed" if k in refused else _kind(k)}
            for k, (old, new) in diff.items()}


def record_changes(run_dir: str | Path, ckpt: str | Path, state: dict,
                   changes: dict[str, dict]) -> None:
    """Append one line for this resume to run_dir/config_changes.jsonl and log every change
    (nothing when the configs are equal)."""
    if not changes:
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(ckpt),
             "phase": state.get("phase"), "step": state.get("global_step", 0),
             "sft_step": state.get("sft_step", 0), "keys": sorted(changes),
             "old": {k: c["old"] for k, c in changes.items()},
             "new": {k: c["new"] for k, c in changes.items()},
             "kind": {k: c["kind"] for k, c in changes.items()}}
    with open(Path(run_dir) / CHANGES_FILE, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    for k, c in changes.items():
        log.info("resume: config change %s: %r -> %r (%s)", k, c["old"], c["new"], c["kind"])


def truncate_metrics(path: str | Path, *, sft_step: int, global_step: int) -> int:
    """Drop the rows of `metrics.jsonl` after a checkpoint at (`sft_step`, `global_step`):
    SFT rows count SFT steps, RL and evaluation rows count RL steps. Rewritten atomically;
    returns how many rows were dropped (0 and untouched when none)."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        limit = sft_step if row.get("phase") == "sft" else global_step
        if isinstance(row.get("step"), int) and row["step"] > limit:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write("".join(x + "\n" for x in keep))
        os.replace(tmp, path)
        log.info("resume: dropped %d row(s) of %s after the checkpoint (sft step %d, step %d); "
                 "those steps run again", dropped, path, sft_step, global_step)
    return dropped
