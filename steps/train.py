"""train_epoch: train one pipeline epoch, committing checkpoints to the lineage's store.

Where an epoch starts (first match wins):
  1. the newest committed checkpoint *of this epoch* that started from the same state as this
     task - what a retried task (`@retry`) or a resumed run (`resume`) left behind when it failed;
  2. the previous epoch's final checkpoint;
  3. the warm-start checkpoint's weights (fresh optimizer and schedule; a new lineage);
  4. the base model of the config.
"The same state" is the manifest hash of the epoch's starting checkpoint (or "base"/the warm-start
hash), so a `resume train_epoch` that re-trains earlier epochs never picks up checkpoints made on
top of the old ones. `Trainer.fit` decides when a checkpoint is written (every `save_every`
training steps and at the end of the epoch, as for `prefix-rft train`); its hook here commits each
to the store. In-epoch checkpoints beyond `keep_last` are pruned, epoch-end ones are kept for
evaluation. Training metrics go to the MLflow parent run live, with `step` = training step.

Several GPUs (`pipeline.train_processes`, default one per GPU of `pipeline.train.gpus`): the task
launches itself under torchrun on its node (`python -m torch.distributed.run --standalone`, the
single-node launcher Metaflow's own torchrun extension wraps) and waits. Every rank builds the
trainer (FSDP2-sharded policy) and trains its share of each batch; rank 0 alone logs to MLflow,
commits checkpoints (full HF weights) and writes the step's result, which the task returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from prefix_rft.io import run_layout
from prefix_rft.io.store import CheckpointRef, open_store
from prefix_rft.train import distributed as D
from steps.common import (
    RunContext,
    config_from_dict,
    fetch_into,
    injected_failure,
    log,
    tracker_for,
    use_cpus,
)
from steps.data import read_data
from steps.flow_config import FlowConfig

REPO = Path(__file__).resolve().parents[1]


def _start_id(start_ref: dict | None, warm_start: dict | None) -> str:
    if start_ref:
        return start_ref["manifest_sha256"]
    if warm_start:
        return "warm:" + warm_start["manifest_sha256"]
    return "base"


def build_trainer(cfg: FlowConfig, train, test, *, weights_from: Path | None, output_dir: Path,
                  progress: bool):
    """A `Trainer` on the config's model, or on the weights of a checkpoint's model/ dir."""
    from prefix_rft import models
    from prefix_rft.train.trainer import Trainer

    model = tokenizer = None
    if weights_from is not None:
        tokenizer = models.load_tokenizer(str(weights_from))
        model = models.load_policy(str(weights_from), dtype=cfg.model.dtype,
                                   attn_implementation=cfg.model.attn_implementation)
    return Trainer(cfg, model=model, tokenizer=tokenizer, train=train, test=test,
                   output_dir=output_dir, progress=progress)


def train_epoch(cfg: FlowConfig, *, epoch: int, plan: dict, data_ref: dict, start_ref: dict | None,
                warm_start: dict | None, lineage_prefix: str, ctx: RunContext, tracker=None,
                tracking: dict | None = None, progress: bool = True) -> dict:
    nproc = cfg.pipeline.processes()
    if nproc > 1 and D.world()[1] == 1:
        return _launch(nproc, cfg, epoch=epoch, plan=plan, data_ref=data_ref, start_ref=start_ref,
                       warm_start=warm_start, lineage_prefix=lineage_prefix, ctx=ctx,
                       tracking=tracking, progress=progress)
    use_cpus(cfg.pipeline.train.cpus, D.world()[1])
    main = D.is_main()
    tracker = tracker if main else None
    store = open_store(lineage_prefix)
    start_id = _start_id(start_ref, warm_start)
    target = min(epoch * plan["steps_per_epoch"], plan["total_steps"])

    def same_epoch(r: CheckpointRef) -> bool:
        return (r.meta.get("kind") == "checkpoint" and r.epoch == epoch
                and r.meta.get("start_id") == start_id)

    previous = store.latest(where=same_epoch)
    if previous is not None and previous.meta.get("end_of_epoch"):
        log.info("epoch %d: already complete in %s (committed by a failed task)", epoch, previous.uri)
        return {"epoch": epoch, "checkpoint": previous.to_dict(), "resumed_from": previous.uri,
                "steps": [previous.step, previous.step]}

    train, test = read_data(data_ref)
    run_id = tracking["run_id"] if tracking else None
    scratch = Path(tempfile.mkdtemp(prefix=f"prefix-rft-epoch{epoch}-"))
    try:
        weights_from = None
        if start_ref is None and warm_start is not None:
            weights_from = fetch_into(warm_start, scratch) / "model"
        trainer = build_trainer(cfg, train, test, weights_from=weights_from,
                                output_dir=scratch / "trainer", progress=progress)
        resume_from = previous or (CheckpointRef.from_dict(start_ref) if start_ref else None)
        if resume_from is not None:
            trainer.load(fetch_into(resume_from, scratch))
            if previous is not None:
                log.info("epoch %d: resuming from %s (step %d)", epoch, previous.uri, previous.step)
        first = trainer.train_steps
        if tracker is not None:
            trainer.listeners.append(
                lambda m: tracker.log_metrics(
                    run_id, {k: v for k, v in m.items() if k != "step"}, step=trainer.train_steps))
            if previous is not None:
                tracker.set_tags(run_id, {run_layout.resumed_from_tag(epoch): previous.uri})

        committed: list[CheckpointRef] = []
        commit = _commit_hook(cfg, store, trainer, ctx, epoch=epoch, start_id=start_id, main=main,
                              committed=committed, tracker=tracker, tracking=tracking)

        monitor = (tracker.system_metrics(run_id, cfg.tracking.system_metrics) if tracker
                   else contextlib.nullcontext())
        with monitor, contextlib.closing(trainer):  # closing: stop the grader processes
            trainer.fit(max_steps=max(0, target - trainer.train_steps), on_checkpoint=commit)
        if not main:
            return {"epoch": epoch, "rank": D.world()[0]}
        ref = committed[-1]
        last = trainer.history[-1] if trainer.history else {}
        if tracker is not None:
            tracker.set_tags(run_id, {run_layout.checkpoint_tag(epoch): ref.uri,
                                      run_layout.CHECKPOINT_LATEST_TAG: ref.uri})
        return {"epoch": epoch, "checkpoint": ref.to_dict(),
                "resumed_from": previous.uri if previous else None,
                "steps": [first, trainer.train_steps],
                "last_metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))}}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _commit_hook(cfg: FlowConfig, store, trainer, ctx: RunContext, *, epoch: int, start_id: str,
                 main: bool, committed: list[CheckpointRef], tracker=None,
                 tracking: dict | None = None):
    """The flow's `on_checkpoint`: rank 0 commits each checkpoint the trainer writes to the
    store (appending its ref to `committed`), makes it an MLflow LoggedModel pointing at its
    URI (with a tracker), removes the local copy and prunes older in-epoch ones; every rank
    then passes the test failure-injection point."""

    def commit(local: Path, end_of_epoch: bool) -> None:
        if main:
            ref = store.commit(local, f"{ctx.run_id}/{local.name}", step=trainer.train_steps,
                               epoch=epoch, config_hash=cfg.config_hash(), meta={
                                   "kind": "checkpoint", "end_of_epoch": end_of_epoch,
                                   "start_id": start_id, "run_id": ctx.run_id,
                                   "task_id": ctx.task_id, "phase": trainer.state.phase,
                                   "global_step": trainer.state.global_step,
                                   "sft_step": trainer.state.sft_step, "method": cfg.method})
            shutil.rmtree(local, ignore_errors=True)
            if tracker is not None and tracking:
                tracker.checkpoint_model(tracking["experiment_id"], tracking["run_id"],
                                         ref.to_dict())
            if cfg.keep_last > 0:
                pruned = store.prune(cfg.keep_last, prefix=ctx.run_id, where=lambda r: (
                    r.meta.get("kind") == "checkpoint" and not r.meta.get("end_of_epoch")))
                if pruned and tracker is not None and tracking:
                    tracker.mark_checkpoints_deleted(tracking["experiment_id"], pruned)
            log.info("epoch %d: checkpoint %s", epoch, ref.uri)
            committed.append(ref)
        if not end_of_epoch:
            injected_failure(epoch, trainer.train_steps)

    return commit


def _launch(nproc: int, cfg: FlowConfig, *, ctx: RunContext, **kw) -> dict:
    """Run this step as `nproc` torchrun workers on this node; return rank 0's result."""
    work = Path(tempfile.mkdtemp(prefix="prefix-rft-torchrun-"))
    try:
        args = {"config": cfg.to_dict(), "ctx": asdict(ctx), **kw}
        (work / "args.json").write_text(json.dumps(args))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "steps.train",
               str(work / "args.json"), str(work / "result.json")]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        log.info("epoch %d: training on %d processes: %s", kw["epoch"], nproc, " ".join(cmd))
        rc = subprocess.run(cmd, env=env, cwd=str(REPO)).returncode
        if rc != 0:
            raise RuntimeError(f"train_epoch: torchrun with {nproc} processes exited with {rc} "
                               "(the first failing rank's traceback is above); committed "
                               "checkpoints are kept and a retry resumes from them")
        return json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _worker(args_path: str, result_path: str) -> None:
    """One torchrun rank: the same train_epoch; rank 0 logs, commits and writes the result."""
    from steps.common import setup_logging

    setup_logging()
    args = json.loads(Path(args_path).read_text())
    cfg = config_from_dict(args.pop("config"))
    ctx = RunContext(**args.pop("ctx"))
    D.init_from_env()
    try:
        tracking = args.get("tracking")
        tracker = tracker_for(tracking) if tracking and D.is_main() else None
        result = train_epoch(cfg, ctx=ctx, tracker=tracker, **args)
        if D.is_main():
            Path(result_path).write_text(json.dumps(result))
        D.barrier()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
