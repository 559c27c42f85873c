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
trainer (FSDP2-sharded policy) and trains its share of each batch; global rank 0 alone logs to
MLflow and commits checkpoints (full HF weights); its result is handed to every rank, and each
node's first process writes it for the task to return.

Several nodes (`pipeline.train.nodes`, the multi-node flow): every node's task calls
`train_epochs` with its place in the gang (`Rendezvous`: the first node's address, the node count,
this node's index, from Metaflow's `current.parallel`). Each epoch then launches torchrun with
`--nnodes/--node_rank/--master_addr/--master_port` instead of `--standalone`: torchrun numbers
RANK and WORLD_SIZE across all nodes (node_rank x processes per node + LOCAL_RANK), so "rank 0"
above is the first process of node 0, and every node returns the same result.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from prefix_rft.core.dicts import flatten
from prefix_rft.errors import UserError
from prefix_rft.io import run_layout
from prefix_rft.io.store import CheckpointRef, open_store
from prefix_rft.io.tracking import TrackingQueue
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
PORTS = (29500, 39500)  # the rendezvous port range (torchrun's default port is its start)


@dataclass(frozen=True)
class Rendezvous:
    """Where one node of a multi-node training task stands: the address of the first node
    (where torchrun's rendezvous store listens), how many nodes, this node's index (0 = the
    first) and the rendezvous port."""

    main_ip: str
    num_nodes: int
    node_index: int
    port: int = PORTS[0]

    def __post_init__(self):
        if not 0 <= self.node_index < self.num_nodes:
            raise ValueError(f"node_index {self.node_index} is not one of {self.num_nodes} nodes")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is not a TCP port")


def rendezvous_port(run_id: str, epoch: int) -> int:
    """The rendezvous port of one epoch of one run: the same on every node (each computes it
    alone), different for consecutive epochs so that a node that starts the next epoch early
    never reaches the previous epoch's store, and spread over PORTS so that two runs on one
    machine (local tests) rarely meet."""
    digest = hashlib.sha256(f"{run_id}/{epoch}".encode()).digest()
    return PORTS[0] + int.from_bytes(digest[:4], "big") % (PORTS[1] - PORTS[0])


def torchrun_args(nproc: int, nodes: Rendezvous | None = None) -> list[str]:
    """torchrun's options for `nproc` processes on this node: one node alone (`--standalone`),
    or this node's place in a gang of `nodes.num_nodes` (static rendezvous at the first node)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if nodes is None or nodes.num_nodes == 1:
        return ["--standalone", f"--nproc_per_node={nproc}"]
    return [f"--nnodes={nodes.num_nodes}", f"--node_rank={nodes.node_index}",
            f"--master_addr={nodes.main_ip}", f"--master_port={nodes.port}",
            f"--nproc_per_node={nproc}"]


def gang_size(cfg: FlowConfig) -> int:
    """The node count of the multi-node flow's training gang (`pipeline.train.nodes`, which a
    `--set` may have changed since the flow was loaded): at least 2."""
    nodes = cfg.pipeline.train.nodes
    if nodes < 2:
        raise UserError(f"key 'pipeline.train.nodes': {nodes} node(s) in the multi-node flow; "
                        "it needs at least 2 (one node: flows/prefix_rft_flow.py)")
    return nodes


def check_shared_store(cfg: FlowConfig, nodes: Rendezvous) -> None:
    """Nodes on different machines must share the checkpoint store (the data step's output
    lives there too): refuse a local checkpoint_root unless every node runs on this machine
    (a loopback main address: Metaflow's local @parallel)."""
    root = cfg.pipeline.checkpoint_root
    if nodes.num_nodes == 1 or root.startswith("s3://"):
        return
    try:
        local = ipaddress.ip_address(nodes.main_ip).is_loopback
    except ValueError:
        local = nodes.main_ip == "localhost"
    if not local:
        raise UserError(f"key 'pipeline.checkpoint_root': {root!r} is a local path, which the "
                        f"{nodes.num_nodes} training nodes do not share; use s3://bucket/prefix")


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
                tracking: dict | None = None, progress: bool = True,
                nodes: Rendezvous | None = None) -> dict:
    """One epoch (see the module's docstring); `nodes`: this node's place in a multi-node task."""
    nproc = cfg.pipeline.processes()
    several_nodes = nodes is not None and nodes.num_nodes > 1
    if (nproc > 1 or several_nodes) and D.world()[1] == 1:
        return _launch(nproc, cfg, epoch=epoch, plan=plan, data_ref=data_ref, start_ref=start_ref,
                       warm_start=warm_start, lineage_prefix=lineage_prefix, ctx=ctx,
                       tracking=tracking, progress=progress, nodes=nodes)
    use_cpus(cfg.pipeline.train.cpus, int(os.environ.get("LOCAL_WORLD_SIZE", D.world()[1])))
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
    queue = None
    try:
        weights_from = None
        if start_ref is None and warm_start is not None:
            weights_from = fetch_into(warm_start, scratch) / "model"
        trainer = build_trainer(cfg, train, test, weights_from=weights_from,
                                output_dir=scratch / "trainer", progress=progress)
        resume_from = previous or (CheckpointRef.from_dict(start_ref) if start_ref else None)
        if resume_from is not None:
            local = fetch_into(resume_from, scratch)
            if previous is not None:
                check_same_config(cfg, previous, local)
            trainer.load(local)
            if previous is not None:
                log.info("epoch %d: resuming from %s (step %d)", epoch, previous.uri, previous.step)
        first = trainer.train_steps
        # every tracking call of the epoch goes through a queue: an MLflow outage never stops
        # training, and nothing is lost (see TrackingQueue)
        queue = TrackingQueue(tracker, label=f"epoch-{epoch}") if tracker is not None else None
        if queue is not None:
            trainer.listeners.append(
                step_logger(tracker, run_id, lambda: trainer.train_steps, sink=queue))
            if previous is not None:
                queue.call("set_tags", run_id, {run_layout.resumed_from_tag(epoch): previous.uri})

        committed: list[CheckpointRef] = []
        commit = _commit_hook(cfg, store, trainer, ctx, epoch=epoch, start_id=start_id, main=main,
                              committed=committed, queue=queue, tracking=tracking)

        monitor = (tracker.system_metrics(run_id, cfg.tracking.system_metrics) if tracker
                   else contextlib.nullcontext())
        with monitor, contextlib.closing(trainer):  # closing: stop the grader processes
            trainer.fit(max_steps=max(0, target - trainer.train_steps), on_checkpoint=commit,
                        final_model_only=cfg.pipeline.final_checkpoint == "model")
        if not main:
            return {"epoch": epoch, "rank": D.world()[0]}
        ref = committed[-1]
        last = trainer.history[-1] if trainer.history else {}
        if queue is not None:
            queue.call("set_tags", run_id, {run_layout.checkpoint_tag(epoch): ref.uri,
                                            run_layout.CHECKPOINT_LATEST_TAG: ref.uri})
        return {"epoch": epoch, "checkpoint": ref.to_dict(),
                "resumed_from": previous.uri if previous else None,
                "steps": [first, trainer.train_steps],
                "last_metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))}}
    finally:
        if queue is not None:  # flushed at the end of the step; unsent ones are kept on disk
            queue.close()
        shutil.rmtree(scratch, ignore_errors=True)


# The key every row of a kind carries: training rows (SFT and RL) and in-training evaluations.
_ROW_KEYS = {"train": "time/step", "eval": "eval/accuracy"}


def _row_kind(metrics: dict) -> str:
    return "eval" if metrics.get("phase") == "eval" else "train"


def step_logger(tracker, run_id: str, step_of, sink=None):
    """The trainer listener that logs each row of metrics to the MLflow run at the pipeline's
    step axis (`step_of()`: the trainer's `train_steps`), once per step: a task that resumes
    (a retry, `resume train_epoch`) trains again the steps after its checkpoint, which an
    earlier attempt may have logged already. MLflow appends every point it gets, so those steps
    are not logged again (they are the same values: a resumed run repeats a straight one). The
    run's logged steps are read once, when the listener is made. `sink` (default: `tracker`)
    sends the metrics: the epoch's `TrackingQueue`, so an outage never stops training."""
    sink = tracker if sink is None else sink
    logged = {kind: set() for kind in _ROW_KEYS}
    try:
        for kind, key in _ROW_KEYS.items():
            logged[kind] = {step for step, _ in tracker.metric_history(run_id, key)}
    except Exception as e:  # a tracking outage must not stop training: log, may duplicate
        log.warning("could not read the steps run %s has logged (%s): steps trained again after "
                    "a resume may be logged twice", run_id, e)

    def listener(metrics: dict) -> None:
        step, kind = step_of(), _row_kind(metrics)
        if step in logged[kind]:
            log.info("step %d: %s metrics already in MLflow run %s (logged before the resume); "
                     "not logged again", step, kind, run_id)
            return
        sink.log_metrics(run_id, {k: v for k, v in metrics.items() if k != "step"}, step=step)

    return listener


def check_same_config(cfg: FlowConfig, ref: CheckpointRef, local: Path) -> None:
    """A task resumes its own epoch from its own checkpoints with the config that wrote them:
    Metaflow's `resume` and `@retry` reuse the run's config, so a difference means the
    checkpoint root holds another run's files. Refused with the keys that differ (a flow has
    no config-change flag: changing the config is a new run, or a warm start from this one)."""
    if ref.config_hash == cfg.config_hash():
        return
    import dataclasses

    from prefix_rft.core.config import Config
    from prefix_rft.train.resume import checkpoint_config, config_diff

    training = {f.name for f in dataclasses.fields(Config)}  # what config_hash covers

    def of(d: dict) -> dict:
        return {k: v for k, v in d.items() if k.split(".")[0] in training}

    diff = config_diff(of(checkpoint_config(local, type(cfg))), of(flatten(cfg.to_dict())))
    listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "(unknown)"
    raise UserError(f"epoch checkpoint {ref.uri} was trained with another config (hash "
                    f"{ref.config_hash}, this run's {cfg.config_hash()}): {listed}")


def _commit_hook(cfg: FlowConfig, store, trainer, ctx: RunContext, *, epoch: int, start_id: str,
                 main: bool, committed: list[CheckpointRef], queue=None,
                 tracking: dict | None = None):
    """The flow's `on_checkpoint`: rank 0 commits each checkpoint the trainer writes to the
    store (appending its ref to `committed`), makes it an MLflow LoggedModel pointing at its
    URI (through the epoch's `TrackingQueue`, if any), removes the local copy and prunes older in-epoch ones; every rank
    then passes the test failure-injection point."""

    def commit(local: Path, end_of_epoch: bool) -> None:
        if main:
            ref = store.commit(local, f"{ctx.run_id}/{local.name}", step=trainer.train_steps,
                               epoch=epoch, config_hash=cfg.config_hash(), move=True, meta={
                                   "kind": "checkpoint", "end_of_epoch": end_of_epoch,
                                   "start_id": start_id, "run_id": ctx.run_id,
                                   "task_id": ctx.task_id, "phase": trainer.state.phase,
                                   "global_step": trainer.state.global_step,
                                   "sft_step": trainer.state.sft_step, "method": cfg.method})
            shutil.rmtree(local, ignore_errors=True)
            if queue is not None and tracking:
                queue.call("checkpoint_model", tracking["experiment_id"], tracking["run_id"],
                             ref.to_dict())
            if cfg.keep_last > 0:
                pruned = store.prune(cfg.keep_last, prefix=ctx.run_id, where=lambda r: (
                    r.meta.get("kind") == "checkpoint" and not r.meta.get("end_of_epoch")))
                if pruned and queue is not None and tracking:
                    queue.call("mark_checkpoints_deleted", tracking["experiment_id"], pruned)
            log.info("epoch %d: checkpoint %s", epoch, ref.uri)
            committed.append(ref)
        if not end_of_epoch:
            injected_failure(epoch, trainer.train_steps)

    return commit


def train_epochs(cfg: FlowConfig, *, plan: dict, data_ref: dict, warm_start: dict | None,
                 lineage_prefix: str, ctx: RunContext, nodes: Rendezvous,
                 tracking: dict | None = None, progress: bool = False) -> list[dict]:
    """Every epoch of the plan on this node of a multi-node task, one torchrun launch per epoch
    (each on its own port), each starting from the previous epoch's checkpoint. Every node
    returns the same list (global rank 0's results). A retried or resumed task finds the epochs
    and checkpoints already committed and continues from them, as `train_epoch` does."""
    check_shared_store(cfg, nodes)
    results: list[dict] = []
    start_ref = None
    for epoch in range(1, plan["epochs"] + 1):
        at = replace(nodes, port=rendezvous_port(ctx.run_id, epoch))
        m = train_epoch(cfg, epoch=epoch, plan=plan, data_ref=data_ref, start_ref=start_ref,
                        warm_start=warm_start, lineage_prefix=lineage_prefix, ctx=ctx,
                        tracking=tracking, progress=progress, nodes=at)
        results.append(m)
        start_ref = m["checkpoint"]
    return results


def _launch(nproc: int, cfg: FlowConfig, *, ctx: RunContext, nodes: Rendezvous | None = None,
            **kw) -> dict:
    """Run this step as `nproc` torchrun workers on this node (with the other nodes of `nodes`);
    return global rank 0's result."""
    work = Path(tempfile.mkdtemp(prefix="prefix-rft-torchrun-"))
    try:
        args = {"config": cfg.to_dict(), "ctx": asdict(ctx), **kw}
        (work / "args.json").write_text(json.dumps(args))
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(nproc, nodes),
               "-m", "steps.train", str(work / "args.json"), str(work / "result.json")]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        where = f" x {nodes.num_nodes} nodes (node {nodes.node_index})" if nodes else ""
        log.info("epoch %d: training on %d processes%s: %s", kw["epoch"], nproc, where,
                 " ".join(cmd))
        rc = subprocess.run(cmd, env=env, cwd=str(REPO)).returncode
        if rc != 0:
            raise RuntimeError(f"train_epoch: torchrun with {nproc} processes{where} exited with "
                               f"{rc} (the first failing rank's traceback is above); committed "
                               "checkpoints are kept and a retry resumes from them")
        return json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _worker(args_path: str, result_path: str) -> None:
    """One torchrun rank: the same train_epoch; global rank 0 logs and commits, the first rank
    of each node writes rank 0's result."""
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
        result = D.gather_objects(result)[0]  # global rank 0's, on every rank
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one writer per node
            Path(result_path).write_text(json.dumps(result))
        D.barrier()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
