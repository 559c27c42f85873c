"""start: validate everything that can be validated before a GPU is requested, then open the
lineage's MLflow parent run.

Fails with one line naming the key for a bad config, naming the URI for an unreachable tracking
server or a warm-start checkpoint that is missing or incomplete (no MANIFEST.json). File hashes
are verified where the files are read (`train_epoch`, `eval_task`): a corrupt file is refused
there, with the checkpoint's URI, before any training or generation.
"""

from __future__ import annotations

from prefix_rft.core.config import parse_overrides
from prefix_rft.core.dicts import deep_merge, flatten
from prefix_rft.errors import UserError
from prefix_rft.io import run_layout
from prefix_rft.io.redact import has_password, redact, redact_data
from prefix_rft.io.store import CheckpointRef, open_checkpoint
from prefix_rft.io.tracking import Tracker, resolve_uri
from steps.common import RunContext, lineage_prefix, log
from steps.flow_config import FlowConfig, check_flow_config, resolve_flow


def resolve_flow_config(config_data: dict, *, seed: int | None = None, epochs: int | None = None,
                        max_problems: int | None = None, overrides: str | None = None,
                        source: str = "flow config") -> FlowConfig:
    """The flow's Config (a YAML mapping) + the run's Parameters -> a validated `FlowConfig`.
    `overrides`: "key=value key=value" (the `--set` Parameter), applied last."""
    import shlex

    config_data = check_flow_config(dict(config_data), source)
    if overrides:
        config_data = deep_merge(config_data, parse_overrides(shlex.split(overrides)))
    over: dict = {}
    if seed is not None:
        over["seed"] = seed
    if epochs is not None:
        over.setdefault("pipeline", {})["epochs"] = epochs
    if max_problems is not None:
        over.setdefault("data", {})["max_problems"] = max_problems
    return resolve_flow(deep_merge(dict(config_data), over), source=source)


def start(config_data: dict, ctx: RunContext, *, seed: int | None = None, epochs: int | None = None,
          max_problems: int | None = None, warm_start: str | None = None,
          overrides: str | None = None, source: str = "flow config") -> dict:
    cfg = resolve_flow_config(config_data, seed=seed, epochs=epochs, max_problems=max_problems,
                              overrides=overrides, source=source)
    warm: CheckpointRef | None = None
    if warm_start:
        warm = open_checkpoint(warm_start)  # raises naming the URI if absent/incomplete
        if warm.meta.get("kind", "checkpoint") != "checkpoint":
            raise UserError(f"--warm-start {warm_start}: not a training checkpoint")
    if has_password(cfg.tracking.uri):
        raise UserError(
            f"key 'tracking.uri': {redact(cfg.tracking.uri)} holds a password, and the flow's "
            "config and Parameters are stored in clear by Metaflow; pass credentials through the "
            "environment instead: MLFLOW_TRACKING_URI=<uri with user:password@>, or "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    uri = resolve_uri(cfg.tracking.uri)
    check_remote_storage(cfg, uri)
    tracker = Tracker(uri, timeout_s=cfg.tracking.timeout_s)
    tags = ctx.tags() | {run_layout.METHOD_TAG: cfg.method,
                         run_layout.CONFIG_HASH_TAG: cfg.config_hash()}
    if warm:
        tags |= {run_layout.WARM_START_URI_TAG: warm.uri, run_layout.WARM_START_STEP_TAG: warm.step}
    run_name = cfg.tracking.run_name or f"{cfg.method}-{ctx.run_id}"
    experiment = experiment_name(cfg, ctx)
    run_id = tracker.create_run(experiment, run_name, tags)
    tracker.log_params(run_id, redact_data(flatten(cfg.to_dict())))
    tracker.log_text(run_id, redact(cfg.to_yaml()), run_layout.CONFIG_ARTIFACT)
    prefix = lineage_prefix(cfg, ctx.flow_name, ctx.run_id)
    tracker.set_tags(run_id, {run_layout.CHECKPOINT_PREFIX_TAG: prefix})
    info = tracker.run_info(run_id).info
    log.info("MLflow run %s (experiment %s) at %s", run_id, experiment, redact(uri))
    return {  # Metaflow stores this: no secret in it (the password comes from the environment)
        "config": redact_data(cfg.to_dict()),
        "config_hash": cfg.config_hash(),
        "tracking": {"uri": redact(uri), "run_id": run_id, "experiment_id": info.experiment_id,
                     "experiment": experiment, "timeout_s": cfg.tracking.timeout_s,
                     "registered_model": registered_model_name(cfg, ctx)},
        "lineage": ctx.run_id,
        "lineage_prefix": prefix,
        "warm_start": warm.to_dict() if warm else None,
    }


def experiment_name(cfg: FlowConfig, ctx: RunContext) -> str:
    """The MLflow experiment of the lineage: `tracking.experiment`, and under a Metaflow
    @project `<tracking.experiment>/<project>/<branch>` (e.g. prefix-rft/qwen_7b/prod), so runs
    of different projects and branches never share an experiment. `ctx` carries the project and
    branch Metaflow resolved (the config's, `--branch`, `--production`)."""
    if not ctx.project:
        return cfg.tracking.experiment
    return "/".join(p for p in (cfg.tracking.experiment, ctx.project, ctx.branch) if p)


def registered_model_name(cfg: FlowConfig, ctx: RunContext) -> str | None:
    """The Model-registry name of the best checkpoint: `tracking.registered_model` with
    {method} filled in and, under a Metaflow @project, `.<project>.<branch>` appended (like the
    experiment), so deployments of different projects and branches never register versions
    under one name. None when registration is off."""
    name = cfg.tracking.registered_model
    if not name:
        return None
    name = name.format(method=cfg.method)
    if ctx.project:
        name = ".".join(p for p in (name, ctx.project, ctx.branch) if p)
    return name


def remote_platform() -> str | None:
    """'kubernetes' / 'aws-batch' when Metaflow runs this task remotely (it sets
    METAFLOW_RUNTIME_ENVIRONMENT in its pods and Batch jobs), else None. A notebook or a local
    run inside some Kubernetes pod is not a Metaflow remote task and keeps local storage."""
    import os

    value = os.environ.get("METAFLOW_RUNTIME_ENVIRONMENT", "")
    return value if value in ("kubernetes", "aws-batch") else None


def check_remote_storage(cfg: FlowConfig, tracking_uri: str) -> None:
    """On Kubernetes/Batch every task has its own disk, gone when it ends: a sqlite tracking
    store or a local checkpoint root would silently split a run over pods. Refuse them."""
    where = remote_platform()
    if where is None:
        return
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        raise UserError(
            f"key 'tracking.uri': {redact(tracking_uri)} is local to this {where} task; set a tracking "
            "server (tracking.uri or MLFLOW_TRACKING_URI, see infra/mlflow/README.md)")
    if not cfg.pipeline.checkpoint_root.startswith("s3://"):
        raise UserError(
            f"key 'pipeline.checkpoint_root': {cfg.pipeline.checkpoint_root} is local to this "
            f"{where} task; use s3://bucket/prefix")
