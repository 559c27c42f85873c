"""MLflow tracking: the only module of the library that imports `mlflow`.

The pipeline keeps one MLflow *parent run* per training lineage (created by the flow's `start`
step, reopened by every later step and by resumed Metaflow runs) and one nested child run per
evaluation task; `prefix_rft.io.run_layout` names what goes where. Besides what the steps log, the
parent run gets `system/*` (CPU/GPU/memory while training, MLflow's system-metrics monitor).
Every call goes through `Tracker`, which talks to the server with an explicit run id (no global
"active run"), so steps in separate processes and machines can log to the same run. Reports read
through it too (`pipeline_runs`, `eval_runs`, `download_artifact`, `metric_history`), getting
plain dicts (`run_record`) rather than MLflow entities.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prefix_rft.errors import UserError
from prefix_rft.io import run_layout

log = logging.getLogger(__name__)

PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value


def resolve_uri(configured: str | None) -> str:
    """config `tracking.uri` > $MLFLOW_TRACKING_URI > sqlite:///<cwd>/mlflow.db."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def _limit_http_retries(timeout_s: int) -> None:
    """Fail in seconds, not minutes: MLflow retries a dead server 7 times with back-off and a
    120 s timeout by default. Users who set these variables keep their values."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def check_reachable(uri: str, timeout_s: float = 10) -> None:
    """Raise a `UserError` naming `uri` unless an http(s) tracking server answers /health."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            if r.status == 200:
                _check_credentials(uri, timeout_s)
                return
            problem = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        problem = str(getattr(e, "reason", e))
    raise UserError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start one "
        "(`python infra/local/servers.py start` for a local one), or set tracking.uri / "
        "MLFLOW_TRACKING_URI (unset both to log to a local sqlite file)."
    )


def _check_credentials(uri: str, timeout_s: float) -> None:
    """/health is open on an authenticated server: ask one real API question with the
    configured credentials so a missing/wrong password fails here, by name."""
    import base64

    req = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(req, timeout=timeout_s).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            who = f"user {user!r}" if user else "no credentials"
            raise UserError(
                f"MLflow tracking server {uri} refused the request (HTTP {e.code}, {who}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (see infra/mlflow/README.md)"
            ) from None
    except (OSError, ValueError):
        pass  # reachability was established; other problems surface at the first call


def _numeric(metrics: dict) -> dict[str, float]:
    """The numeric entries (bools as 0/1, numpy/torch scalars included) as floats."""
    import numbers

    out = {}
    for k, v in metrics.items():
        if getattr(v, "ndim", None) == 0:
            v = v.item()  # numpy scalar, 0-d array or tensor
        if isinstance(v, numbers.Real):
            out[k] = float(v)
    return out


class Tracker:
    """A thin, explicit-run-id wrapper over `MlflowClient`."""

    def __init__(self, uri: str, timeout_s: int = 10, check: bool = True):
        _limit_http_retries(timeout_s)
        if check:
            check_reachable(uri, timeout_s)
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    # ------------------------------------------------------------------ runs
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # next to the database, not in whatever directory the process happens to run in
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def create_run(self, experiment: str, run_name: str, tags: dict[str, str],
                   parent_run_id: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items() if v is not None}
        if parent_run_id:
            tags[run_layout.PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        return run.info.run_id

    def run_info(self, run_id: str):
        return self.client.get_run(run_id)

    def reopen(self, run_id: str) -> None:
        """Mark a finished/failed run RUNNING again (a resumed pipeline continues it)."""
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    def terminate(self, run_id: str, status: str) -> None:
        """status: FINISHED | FAILED | KILLED."""
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------------ values
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = []
        for k, v in params.items():
            s = "null" if v is None else str(v)
            items.append(Param(k, s[: PARAM_MAX_CHARS]))
        for i in range(0, len(items), 100):  # the server's batch limit
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in _numeric(metrics).items() if not math.isnan(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(run_id, tags=items)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        if not rows:
            return
        cols = {k: [r.get(k) for r in rows] for k in rows[0]}
        self.client.log_table(run_id, data=cols, artifact_file=artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    # ------------------------------------------------------------------ reading (reports)
    def existing_experiment_id(self, name: str) -> str:
        """The id of experiment `name`; unlike `experiment_id`, never creates or restores one."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage == "deleted":
            known = sorted(e.name for e in self.client.search_experiments())
            raise UserError(f"MLflow {self.uri}: no experiment {name!r} (experiments: "
                            f"{', '.join(known) or 'none'})")
        return exp.experiment_id

    def pipeline_runs(self, experiment: str, max_runs: int = 50) -> list[dict]:
        """The newest `max_runs` top-level runs (one per training lineage; evaluation child runs
        are left out) of `experiment`, newest first, as plain dicts (see `run_record`)."""
        exp_id = self.existing_experiment_id(experiment)
        out, token = [], None
        while len(out) < max_runs:
            page = self.client.search_runs([exp_id], "", max_results=1000,
                                           order_by=["attributes.start_time DESC"], page_token=token)
            out += [run_record(r) for r in page if run_layout.PARENT_TAG not in r.data.tags]
            token = page.token
            if not token:
                break
        return out[:max_runs]

    def eval_runs(self, run_id: str) -> list[dict]:
        """The evaluation child runs of a pipeline run (those tagged `epoch` and `benchmark`; see
        `run_layout`), oldest first, as plain dicts with `epoch` (int), `benchmark` and `shard`
        ("k/n") added."""
        exp_id = self.client.get_run(run_id).info.experiment_id
        runs = self.client.search_runs([exp_id], f"tags.{run_layout.PARENT_TAG} = '{run_id}'",
                                       max_results=10000, order_by=["attributes.start_time ASC"])
        out = []
        for r in runs:
            tags = r.data.tags
            if run_layout.EPOCH in tags and run_layout.BENCHMARK in tags:
                out.append(run_record(r) | {
                    "epoch": int(tags[run_layout.EPOCH]), "benchmark": tags[run_layout.BENCHMARK],
                    "shard": tags.get(run_layout.SHARD, run_layout.UNSHARDED)})
        return out

    def download_artifact(self, run_id: str, path: str, dst_dir: str | Path) -> Path:
        """A run's artifact `path`, copied under `dst_dir`; returns its local path."""
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst_dir)))

    # ------------------------------------------------------------------ registry
    def register(self, name: str, source: str, run_id: str, alias: str | None = None,
                 tags: dict[str, str] | None = None) -> str:
        """Register `source` (a checkpoint's model directory URI) as a new version of `name`."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
        if alias:
            self.client.set_registered_model_alias(name, alias, mv.version)
        return str(mv.version)

    # ------------------------------------------------------------------ system metrics
    @contextlib.contextmanager
    def system_metrics(self, run_id: str, enabled: bool = True):
        """CPU/GPU/memory/disk as `system/*` metrics while the block runs (continuing the step
        count of earlier tasks of the same run)."""
        if not enabled:
            yield
            return
        monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.uri)
            monitor.start()
        except Exception as e:  # never lose training over monitoring
            log.warning("system metrics disabled: %s", e)
            monitor = None
        try:
            yield
        finally:
            if monitor is not None:
                monitor.finish()


def run_record(run) -> dict:
    """An MLflow run as a plain dict: run_id, name, status, start_time / end_time (ms since the
    epoch), experiment_id, params, tags, metrics (latest values)."""
    info = run.info
    return {"run_id": info.run_id, "name": info.run_name, "status": info.status,
            "start_time": info.start_time, "end_time": info.end_time,
            "experiment_id": info.experiment_id, "params": dict(run.data.params),
            "tags": dict(run.data.tags), "metrics": dict(run.data.metrics)}
