"""start: validate everything that can be validated before a GPU is requested, then open the
lineage's MLflow parent run.

Fails with one line naming the key for a bad config (types, ranges, cross-field checks), for a
data file that does not exist or cannot be read (local or s3://), a model path that is no model
directory (or a hub id while offline), an unknown benchmark, or a checkpoint location that
takes no write (`check_inputs_and_outputs`); naming the URI for an unreachable tracking server
or a warm-start checkpoint that is missing or incomplete (no MANIFEST.json). File hashes are
verified where the files are read (`train_epoch`, `eval_task`): a corrupt file is refused there,
with the checkpoint's URI, before any training or generation.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from prefix_rft.core.config import parse_overrides
from prefix_rft.core.dicts import deep_merge, flatten
from prefix_rft.errors import UserError
from prefix_rft.io import run_layout
from prefix_rft.io.redact import has_password, redact, redact_data, redact_uri
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
    prefix = lineage_prefix(cfg, ctx.flow_name, ctx.run_id)
    check_inputs_and_outputs(cfg, prefix)
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
    tracker.set_tags(run_id, {run_layout.CHECKPOINT_PREFIX_TAG: prefix})
    info = tracker.run_info(run_id).info
    log.info("MLflow run %s (experiment %s) at %s", run_id, experiment, redact(uri))
    return {  # Metaflow stores this: no secret in it (the password comes from the environment)
        "config": cfg.to_dict(),  # tracking.uri holds no password (refused above)
        "config_hash": cfg.config_hash(),
        "tracking": {"uri": redact_uri(uri), "run_id": run_id, "experiment_id": info.experiment_id,
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


# --------------------------------------------------------------------------------------------
# Inputs and outputs, checked in `start` so that a wrong path fails in seconds, not minutes later
# in a GPU step (where `@retry` would run it again).

MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_inputs_and_outputs(cfg: FlowConfig, lineage_prefix: str) -> None:
    """The data files, the model and the checkpoint location of a run, before any task asks for
    a GPU: every data spec exists and is readable (local or s3://), the model is a local
    directory with its config (a built-in alias, or a hub id while online), every benchmark is
    known or an existing file, and the checkpoint location takes a write. A UserError naming the
    key and the path otherwise."""
    check_data_spec(cfg.data.train, "data.train", "train")
    if cfg.data.test:
        check_data_spec(cfg.data.test, "data.test", "test")
    check_model(cfg.model.name_or_path, tokenizer_only=bool(cfg.model.random_init))
    check_benchmarks(cfg)
    check_writable(lineage_prefix, "pipeline.checkpoint_root")


def check_data_spec(spec: str, key: str, split: str) -> None:
    """`spec` (see `prefix_rft.data.sources`) names data that exists and can be read: the levels
    of 'synthetic:', the part of 'realmath:', a local file or directory of data files, an s3:// (fsspec) object or
    prefix. Hub datasets are left to the reader (they need the network)."""
    from prefix_rft.data.loading import HUB_PREFIX, url_protocol

    if spec.startswith("synthetic:"):
        from prefix_rft.data.synthetic import pool_size

        for level in (x.strip() for x in spec.split(":", 1)[1].split(",") if x.strip()):
            try:
                pool_size(level, split)
            except UserError as e:
                raise UserError(f"key '{key}': {spec!r}: {e}") from None
        return
    if spec.startswith("realmath:"):
        from prefix_rft.data.realmath import SPLITS

        if spec.split(":", 1)[1] not in SPLITS:
            raise UserError(f"key '{key}': {spec!r}: expected realmath:train or realmath:heldout")
        return
    if spec.startswith(HUB_PREFIX):
        return
    protocol = url_protocol(spec)
    if protocol is not None:
        _check_url(spec, protocol, key)
        return
    path = Path(spec[len("file://"):] if spec.startswith("file://") else spec).expanduser()
    if not path.exists():
        raise UserError(f"key '{key}': {spec}: no such file or directory")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise UserError(f"key '{key}': {spec}: not readable (permission denied)")
    if path.is_dir():
        from prefix_rft.data.loading import files_for_split

        try:
            files_for_split(str(path), [p.name for p in path.iterdir() if p.is_file()], split)
        except UserError as e:
            raise UserError(f"key '{key}': {e}") from None


def _check_url(url: str, protocol: str, key: str) -> None:
    """An fsspec URL (s3://...) that exists: one metadata request, no data read."""
    import fsspec

    from prefix_rft.data.loading import one_line, storage_options

    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options(protocol))
        fs.info(root)
    except FileNotFoundError:
        raise UserError(f"key '{key}': {url}: not found (no such object or bucket)") from None
    except Exception as e:  # no file system for the protocol, denied, unreachable endpoint
        raise UserError(f"key '{key}': {url}: cannot open ({type(e).__name__}: "
                        f"{one_line(e)})") from None


def check_model(name_or_path: str, *, tokenizer_only: bool = False) -> None:
    """The model of `model.name_or_path` can be loaded by the training task: a built-in alias,
    a local directory with config.json (with `model.random_init` only the tokenizer is read: a
    tokenizer file is enough), or a hub id, which offline must be in the local hub cache."""
    from prefix_rft.builtin_models import BUILTIN_MODELS

    key = "model.name_or_path"
    if name_or_path in BUILTIN_MODELS:
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        wanted = TOKENIZER_FILES if tokenizer_only else MODEL_FILES
        if not any((path / f).is_file() for f in wanted):
            raise UserError(f"key '{key}': {name_or_path}: a directory without "
                            f"{' or '.join(wanted)}; expected a Hugging Face model directory")
        return
    if path.exists():
        raise UserError(f"key '{key}': {name_or_path}: is a file; expected a model directory")
    if not _HUB_ID.match(name_or_path):
        raise UserError(f"key '{key}': {name_or_path}: no such directory")
    if _offline() and not _in_hub_cache(name_or_path):
        raise UserError(
            f"key '{key}': {name_or_path}: no such directory, and HF_HUB_OFFLINE=1 so it cannot "
            f"be fetched as a hub id (nor is it in the local hub cache); use a local directory "
            f"or a built-in alias ({', '.join(sorted(BUILTIN_MODELS))})")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers brings it
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_benchmarks(cfg: FlowConfig) -> None:
    """Every `pipeline.benchmarks` entry can be evaluated: 'heldout' needs data.test, a named
    benchmark must be known, a problems file must exist (`synthetic:` levels were checked with
    the config)."""
    from prefix_rft.eval.benchmarks import ALL_BENCHMARKS

    for spec in cfg.pipeline.benchmarks:
        if not isinstance(spec, str):
            raise UserError(f"key 'pipeline.benchmarks': {spec!r}: expected a name or a file")
        if spec == "heldout":
            if not cfg.data.test:
                raise UserError("key 'pipeline.benchmarks': 'heldout' evaluates data.test, "
                                "which the config does not set")
        elif spec.startswith(("synthetic:", "hub:")) or spec in ALL_BENCHMARKS:
            continue
        elif "/" in spec or spec.lower().endswith((".jsonl", ".json", ".parquet")) or \
                Path(spec).exists():
            check_data_spec(spec, "pipeline.benchmarks", "test")
        else:
            raise UserError(f"key 'pipeline.benchmarks': {spec!r} is not a benchmark (one of "
                            f"{', '.join(ALL_BENCHMARKS)}, heldout, synthetic:LEVEL) nor a file")


def check_writable(uri: str, key: str) -> None:
    """Write and delete a small probe object under `uri` (a local directory, created if
    missing, or s3://bucket/prefix): a read-only disk, a missing bucket or denied credentials
    fail here, naming the key."""
    from prefix_rft.io.store import is_s3

    name = f".write-probe-{uuid.uuid4().hex[:12]}"
    if is_s3(uri):
        from prefix_rft.io.store import S3Store

        store = S3Store(uri)
        key_name = f"{store.prefix}/{name}" if store.prefix else name
        try:
            with store._errors(uri, "writing a probe object"):
                store.client.put_object(Bucket=store.bucket, Key=key_name, Body=b"")
                store.client.delete_object(Bucket=store.bucket, Key=key_name)
        except UserError as e:
            raise UserError(f"key '{key}': cannot write there: {e}") from None
        return
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / name
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"key '{key}': {path}: cannot write there ({e.strerror or e})") from None
