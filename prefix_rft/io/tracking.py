"""MLflow tracking: the only module of the library that imports `mlflow`.

The pipeline keeps one MLflow *parent run* per training lineage (created by the flow's `start`
step, reopened by every later step and by resumed Metaflow runs) and one nested child run per
evaluation task; `prefix_rft.io.run_layout` names what goes where. Besides what the steps log, the
parent run gets `system/*` (CPU/GPU/memory while training, MLflow's system-metrics monitor).
Every call goes through `Tracker`, which talks to the server with an explicit run id (no global
"active run"), so steps in separate processes and machines can log to the same run. Reports read
through it too (`pipeline_runs`, `eval_runs`, `download_artifact`, `metric_history`), getting
plain dicts (`run_record`) rather than MLflow entities.

Lineage (MLflow 3): `checkpoint_model` makes a committed checkpoint a LoggedModel that points at
the checkpoint's URI (its artifacts are only an `MLmodel` and `POINTER_FILE`), `log_metrics(...,
model_id=)` links metrics to it, `register_model` registers it (`models:/<model id>`) with
aliases, `log_dataset` records a data file as a run input. `load_registered` turns a `models:/`
URI back into a local HF directory, and `_load_pyfunc` is the loader that `mlflow.pyfunc` calls
for these models (the `MLmodel` names this module).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefix_rft.errors import UnavailableError, UserError
from prefix_rft.io import run_layout
from prefix_rft.io.redact import redact, split_credentials

log = logging.getLogger(__name__)

PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value
DIGEST_CHARS = 16  # of a data file's sha256, as its MLflow dataset digest (MLflow allows 36)
POINTER_FILE = "checkpoint.json"  # in a checkpoint's LoggedModel: which checkpoint it is
LOADER_MODULE = __name__  # the pyfunc loader of a checkpoint's LoggedModel (`_load_pyfunc`)


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


TRANSFER_TIMEOUT_S = 600  # per request while artifacts move (see `_transfer_timeout`)
_transfer_lock = threading.Lock()
_transfers = {"depth": 0, "saved": None}


@contextlib.contextmanager
def _transfer_timeout(seconds: int = TRANSFER_TIMEOUT_S):
    """Allow each MLflow HTTP request `seconds` (at least; a larger $MLFLOW_HTTP_REQUEST_TIMEOUT
    stays) while artifacts are uploaded or downloaded. The short timeout of `_limit_http_retries`
    is for metadata calls; a multipart upload's last call ("complete") makes the server
    assemble the whole object in its store, which for GB-size weights takes longer than 10 s,
    and a timed-out "complete" that MLflow retries fails for good (the first one already
    consumed the upload). MLflow reads the variable at each request; the block is re-entrant
    and thread-safe (other threads' calls meanwhile get the longer timeout, nothing shorter)."""
    key = "MLFLOW_HTTP_REQUEST_TIMEOUT"
    with _transfer_lock:
        if _transfers["depth"] == 0:
            _transfers["saved"] = os.environ.get(key)
            current = int(_transfers["saved"] or 0)
            os.environ[key] = str(max(current, seconds))
        _transfers["depth"] += 1
    try:
        yield
    finally:
        with _transfer_lock:
            _transfers["depth"] -= 1
            if _transfers["depth"] == 0:
                if _transfers["saved"] is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = _transfers["saved"]


class TrackingUnreachable(UnavailableError):
    """The tracking server did not answer: a user error when it persists, worth retrying while
    a server restarts (`transient`); a retried pipeline step runs again on it."""


def _basic_auth(user: str | None, password: str | None) -> dict[str, str]:
    import base64

    if not (user and password):
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(URI without userinfo, user, password): the URI's own credentials, else MLflow's
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    bare, user, password = split_credentials(uri)
    if password is None:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return bare, user, password


def check_reachable(uri: str, timeout_s: float = 10) -> None:
    """Raise a `UserError` naming `uri` (password masked) unless an http(s) tracking server
    answers /health. Credentials in the URI (`http://user:password@host`) or in MLflow's
    environment variables are sent as HTTP basic auth."""
    if not uri.startswith(("http://", "https://")):
        return
    bare, user, password = _credentials(uri)
    req = urllib.request.Request(bare.rstrip("/") + "/health", headers=_basic_auth(user, password))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            if r.status == 200:
                _check_credentials(uri, timeout_s)
                return
            problem = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        problem = f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        problem = str(getattr(e, "reason", e))
    raise TrackingUnreachable(redact(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start one "
        "(`python infra/local/servers.py start` for a local one), or set tracking.uri / "
        "MLFLOW_TRACKING_URI (unset both to log to a local sqlite file)."
    ))


def _check_credentials(uri: str, timeout_s: float) -> None:
    """/health is open on an authenticated server: ask one real API question with the
    configured credentials so a missing/wrong password fails here, by name."""
    bare, user, password = _credentials(uri)
    req = urllib.request.Request(bare.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                 headers=_basic_auth(user, password))
    try:
        urllib.request.urlopen(req, timeout=timeout_s).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            who = f"user {user!r}" if user else "no credentials"
            raise UserError(redact(
                f"MLflow tracking server {uri} refused the request (HTTP {e.code}, {who}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (see infra/mlflow/README.md)"
            )) from None
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

        if uri.startswith(("http://", "https://")):
            # MLflow's REST client puts its URI in error messages: give it the URI without the
            # password and the credentials through its own variables (HTTP basic auth)
            bare, user, password = split_credentials(uri)
            if password is not None:
                os.environ["MLFLOW_TRACKING_USERNAME"] = user or ""
                os.environ["MLFLOW_TRACKING_PASSWORD"] = password
            uri = bare
        self.uri = redact(uri)  # for messages; `_uri` connects
        self._uri = uri
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
            location = (Path(self._uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
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

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int,
                    model_id: str | None = None) -> None:
        """Numeric `metrics` at `step`; with `model_id` they are also the metrics of that
        LoggedModel (shown on its page in the MLflow UI)."""
        self.log_metric_items(run_id, metric_items(metrics, step, model_id))

    def log_metric_items(self, run_id: str, items: list[dict]) -> None:
        """Metric values as made by `metric_items` (timestamps included): sending the same
        items again adds nothing on a database-backed store (one row per key, timestamp, step
        and value), which is what makes retries and replays safe."""
        from mlflow.entities import Metric

        ms = [Metric(m["key"], m["value"], m["timestamp"], m["step"], model_id=m.get("model_id"))
              for m in items]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i : i + 1000])

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
        with _transfer_timeout():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        with _transfer_timeout():
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
        with _transfer_timeout():
            return Path(self.client.download_artifacts(run_id, path, str(dst_dir)))

    # ------------------------------------------------------------------ registry
    def register(self, name: str, source: str, run_id: str, alias: str | None = None,
                 tags: dict[str, str] | None = None) -> str:
        """Register `source` (any model URI) as a new version of `name` (no LoggedModel link;
        the pipeline registers its checkpoints' models with `register_model`)."""
        self._ensure_registered_model(name)
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
        if alias:
            self.client.set_registered_model_alias(name, alias, mv.version)
        return str(mv.version)

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise

    def register_model(self, name: str, model_id: str, aliases: tuple[str, ...] = (),
                       tags: dict[str, str] | None = None) -> str:
        """Register LoggedModel `model_id` as a new version of `name` (source `models:/<id>`,
        linked both ways, as `mlflow.register_model` does) and point `aliases` at it."""
        import mlflow

        self._ensure_registered_model(name)
        with _process_tracking_uri(self._uri):  # MLflow resolves `models:/<id>` through it
            mv = mlflow.register_model(f"models:/{model_id}", name, tags=tags or {})
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, mv.version)
        return str(mv.version)

    # ------------------------------------------------------------------ lineage (MLflow 3)
    def checkpoint_model(self, experiment_id: str, run_id: str, ref: dict) -> str:
        """The id of the LoggedModel of committed checkpoint `ref` (a `CheckpointRef.to_dict()`),
        created on first use: READY, produced by run `run_id`, pointing at the checkpoint's URI
        (no weights are copied; its artifacts are an `MLmodel` and `POINTER_FILE`). Looked up by
        the manifest digest, so retried and resumed tasks reuse it."""
        from mlflow.entities import LoggedModelOutput

        found = self.find_checkpoint_model(experiment_id, ref["manifest_sha256"])
        if found is not None:
            return found
        tags = {run_layout.MODEL_CHECKPOINT_URI_TAG: ref["uri"],
                run_layout.MODEL_MANIFEST_TAG: ref["manifest_sha256"],
                run_layout.MODEL_WEIGHTS_TAG: "checkpoint"}
        model = self.client.create_logged_model(
            experiment_id, name=run_layout.logged_model_name(ref["uri"]), source_run_id=run_id,
            tags=tags, params=run_layout.logged_model_params(ref),
            model_type=run_layout.LOGGED_MODEL_TYPE)
        try:
            with tempfile.TemporaryDirectory(prefix="prefix-rft-mlmodel-") as tmp:
                _write_pointer_model(Path(tmp), model, ref)
                self.client.log_model_artifacts(model.model_id, tmp)
            self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, int(ref["step"]))])
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def find_checkpoint_model(self, experiment_id: str, manifest_sha256: str) -> str | None:
        """The READY LoggedModel of the checkpoint with this manifest digest, if any."""
        from mlflow.entities import LoggedModelStatus

        found = self.client.search_logged_models(
            [experiment_id], max_results=50,
            filter_string=f"tags.`{run_layout.MODEL_MANIFEST_TAG}` = '{manifest_sha256}'")
        ready = [m for m in found if m.status == LoggedModelStatus.READY]
        return ready[0].model_id if ready else None

    def mark_checkpoints_deleted(self, experiment_id: str, uris: list[str]) -> None:
        """Tag the LoggedModels of deleted checkpoints (`checkpoint.deleted = true`): they stay
        as records (metrics, lineage) but point at nothing."""
        for uri in uris:
            found = self.client.search_logged_models(
                [experiment_id], max_results=50,
                filter_string=f"tags.`{run_layout.MODEL_CHECKPOINT_URI_TAG}` = '{uri}'")
            for m in found:
                self.client.set_logged_model_tags(m.model_id,
                                                  {run_layout.MODEL_DELETED_TAG: "true"})

    def logged_model(self, model_id: str) -> dict:
        """A LoggedModel as a plain dict: model_id, name, status, source_run_id, tags, params,
        metrics ({key: latest value}), artifact_location."""
        m = self.client.get_logged_model(model_id)
        return {"model_id": m.model_id, "name": m.name, "status": str(m.status),
                "source_run_id": m.source_run_id, "tags": dict(m.tags),
                "params": dict(m.params), "artifact_location": m.artifact_location,
                "metrics": {x.key: x.value for x in sorted(m.metrics or [],
                                                            key=lambda x: (x.step, x.timestamp))}}

    def attach_weights(self, model_id: str, model_dir: str | Path) -> None:
        """Copy an HF model directory into the LoggedModel's artifacts (`model/`), for
        checkpoints that a tracking server's clients cannot reach (a local disk)."""
        with _transfer_timeout():
            self.client.log_model_artifacts(model_id, str(model_dir), "model")
        self.client.set_logged_model_tags(model_id, {run_layout.MODEL_WEIGHTS_TAG: "copied"})

    def link_model_input(self, run_id: str, model_id: str) -> None:
        """Record LoggedModel `model_id` as an input of `run_id` (an evaluation of it)."""
        from mlflow.entities import LoggedModelInput

        self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])

    def log_dataset(self, run_id: str, *, name: str, source: str, sha256: str, context: str,
                    num_rows: int, columns: dict[str, str] | None = None,
                    tags: dict[str, str] | None = None) -> None:
        """Log a data file as a dataset input of `run_id`: its source URI (a local path or
        s3://...), a digest (the first `DIGEST_CHARS` of the file's sha256; the full one is an
        input tag), the row count and the column types (`columns`: name -> arrow type string)."""
        import json

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # MLflow knows local paths under two equal names
            warnings.filterwarnings("ignore", message="The specified dataset source can be "
                                    "interpreted in multiple ways")
            resolved = resolve_dataset_source(source)
        meta = MetaDataset(resolved, name=name, digest=sha256[:DIGEST_CHARS],
                           schema=_schema(columns or {}))
        d = meta.to_dict()
        entity = Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"],
                         source=d["source"], schema=d.get("schema"),
                         profile=json.dumps({"num_rows": int(num_rows)}))
        input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("sha256", sha256)]
        input_tags += [InputTag(k, str(v)) for k, v in (tags or {}).items() if v is not None]
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, input_tags)])

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

            monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self._uri)
            monitor.start()
        except Exception as e:  # never lose training over monitoring
            log.warning("system metrics disabled: %s", e)
            monitor = None
        try:
            yield
        finally:
            if monitor is not None:
                monitor.finish()


def metric_items(metrics: dict, step: int, model_id: str | None = None) -> list[dict]:
    """The numeric, non-NaN entries of `metrics` as plain records stamped with the time now:
    {key, value, timestamp (ms), step, model_id}. The stamp is fixed here, once, so that every
    later try sends identical values."""
    import time

    now = int(time.time() * 1000)
    return [{"key": k, "value": v, "timestamp": now, "step": int(step), "model_id": model_id}
            for k, v in _numeric(metrics).items() if not math.isnan(v)]


# ------------------------------------------------------------------------------ outages
RETRY_ENV = "PREFIX_RFT_TRACKING_RETRY_S"  # how long a call keeps retrying a dead server
BACKOFF_ENV = "PREFIX_RFT_TRACKING_BACKOFF_S"  # the first wait; doubled after each failure
BACKOFF_MAX_ENV = "PREFIX_RFT_TRACKING_BACKOFF_MAX_S"  # the longest wait between tries
PENDING_ENV = "PREFIX_RFT_PENDING_METRICS_DIR"  # where unsent operations are kept
# error codes that are the request's fault: sending it again cannot help
_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE",
                    "NOT_FOUND", "ENDPOINT_NOT_FOUND"}
# the Tracker methods a queue (and a replay) may call: each is safe to repeat
QUEUED_METHODS = ("set_tags", "checkpoint_model", "mark_checkpoints_deleted", "terminate")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: wait `first_s`, then twice as long after every failure (at most
    `max_s`), for `total_s` in all. Defaults: 1 s, 30 s, 900 s (a 15-minute outage)."""

    total_s: float = 900.0
    first_s: float = 1.0
    max_s: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        def num(name: str, default: float) -> float:
            raw = os.environ.get(name)
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise UserError(f"{name}={raw!r}: expected a number of seconds") from None
            if value < 0:
                raise UserError(f"{name}={raw!r}: expected a number of seconds >= 0")
            return value

        return cls(num(RETRY_ENV, cls.total_s), num(BACKOFF_ENV, cls.first_s),
                   num(BACKOFF_MAX_ENV, cls.max_s))


def transient(error: BaseException) -> bool:
    """Whether a failed tracking call may succeed if repeated: the server is down, restarting,
    overloaded or the connection broke (MLflow wraps these in an MlflowException), as opposed to
    a request the server refused on its merits."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code not in _PERMANENT_CODES
    if isinstance(error, TrackingUnreachable):
        return True
    return isinstance(error, (OSError, ConnectionError, TimeoutError))


def with_retries(fn, what: str, policy: RetryPolicy | None = None):
    """`fn()`, repeated with back-off while it fails transiently and `policy.total_s` lasts."""
    import time

    policy = policy or RetryPolicy.from_env()
    deadline = time.monotonic() + policy.total_s
    delay, failures = policy.first_s, 0
    while True:
        try:
            out = fn()
        except Exception as e:
            if not transient(e) or time.monotonic() + delay > deadline:
                raise
            failures += 1
            log.warning("%s failed (%s); try %d in %.1f s", what, redact(e), failures + 1, delay)
            time.sleep(delay)
            delay = min(max(delay, 0.01) * 2, policy.max_s)
            continue
        if failures:
            log.warning("%s succeeded after %d failed tries", what, failures)
        return out


def _apply(tracker: Tracker, item: dict) -> None:
    if item["op"] == "metrics":
        tracker.log_metric_items(item["run_id"], item["metrics"])
    elif item["op"] == "call" and item["method"] in QUEUED_METHODS:
        getattr(tracker, item["method"])(*item["args"], **item["kwargs"])
    else:
        raise ValueError(f"not a tracking operation: {item!r}")


def pending_dir() -> Path:
    """Where operations that could not be sent are kept: $PREFIX_RFT_PENDING_METRICS_DIR, else
    ~/.cache/prefix-rft/pending-metrics."""
    env = os.environ.get(PENDING_ENV)
    return Path(env) if env else Path.home() / ".cache" / "prefix-rft" / "pending-metrics"


class TrackingQueue:
    """Tracking calls that must never stop training: `log_metrics` and `call` return at once;
    a background thread sends the operations in order, retrying a server that is down with
    exponential back-off for as long as the queue is open (an outage of any length in the middle
    of an epoch loses nothing). A retried batch carries the timestamps it was made with, so a
    batch whose first try reached the server before the connection broke is not stored twice.

    `close(wait_s)` (end of the step) waits at most `wait_s` for the rest; whatever is still
    unsent then is written to a JSON-lines file under `pending_dir()` with an ERROR naming the
    command that sends it later (`python -m prefix_rft.io.tracking replay FILE`). More than
    `max_items` waiting operations go straight to that file instead of memory."""

    def __init__(self, tracker: Tracker, policy: RetryPolicy | None = None,
                 max_items: int = 10_000, label: str = "training"):
        import collections
        import threading

        self.tracker, self.label, self.max_items = tracker, label, max_items
        self.policy = policy or RetryPolicy.from_env()
        self._items: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closing = self._stop = False
        self.pending_file: Path | None = None
        self._thread = threading.Thread(target=self._work, name=f"tracking-{label}", daemon=True)
        self._thread.start()

    def log_metrics(self, run_id: str, metrics: dict, step: int, model_id: str | None = None):
        items = metric_items(metrics, step, model_id)
        if items:
            self._put({"op": "metrics", "run_id": run_id, "metrics": items})

    def call(self, method: str, *args, **kwargs) -> None:
        """Tracker.`method`(*args, **kwargs) later, in order (JSON-able arguments only)."""
        if method not in QUEUED_METHODS:
            raise ValueError(f"{method!r} cannot be queued (one of {QUEUED_METHODS})")
        self._put({"op": "call", "method": method, "args": list(args), "kwargs": kwargs})

    def _put(self, item: dict) -> None:
        with self._cv:
            if self._closing:
                raise RuntimeError("tracking queue is closed")
            if len(self._items) >= self.max_items:
                self._keep([item])
                return
            self._items.append(item)
            self._cv.notify_all()

    def _work(self) -> None:
        import time

        delay, down_since = self.policy.first_s, None
        while True:
            with self._cv:
                while not self._items and not self._closing:
                    self._cv.wait()
                if not self._items or self._stop:
                    return
                item = self._items[0]
            try:
                _apply(self.tracker, item)
            except Exception as e:
                if transient(e):
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("MLflow %s unreachable (%s): %s keeps training, %d tracking "
                                    "operation(s) wait and are retried", self.tracker.uri,
                                    redact(e), self.label, len(self._items))
                    with self._cv:
                        if self._stop:
                            return
                        self._cv.wait(timeout=delay)
                    delay = min(max(delay, 0.01) * 2, self.policy.max_s)
                    continue
                log.error("MLflow %s refused a tracking operation (%s); kept for replay",
                          self.tracker.uri, redact(e))
                self._keep([item])
            else:
                if down_since is not None:
                    log.warning("MLflow %s is back after %.0f s; sending %d waiting operation(s)",
                                self.tracker.uri, time.monotonic() - down_since, len(self._items))
                    delay, down_since = self.policy.first_s, None
            with self._cv:
                self._items.popleft()
                self._cv.notify_all()

    def close(self, wait_s: float | None = None) -> int:
        """Send what waits, for at most `wait_s` (default: the policy's `total_s`); keep the
        rest on disk (see the class). Returns how many operations were not sent."""
        import time

        deadline = time.monotonic() + (self.policy.total_s if wait_s is None else wait_s)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            while self._items and time.monotonic() < deadline:
                self._cv.wait(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=60)
        with self._cv:
            left = list(self._items)
            self._items.clear()
        if left:
            self._keep(left)
        if self.pending_file is not None:
            values = sum(len(i.get("metrics", ())) or 1 for i in left)
            log.error("MLFLOW TRACKING INCOMPLETE: %s still unreachable; %d operation(s) (%d "
                      "values) of %s are kept in %s. Send them when it is back: python -m "
                      "prefix_rft.io.tracking replay %s", self.tracker.uri, len(left), values,
                      self.label, self.pending_file, self.pending_file)
        return len(left)

    def _keep(self, items: list[dict]) -> None:
        import json
        import time

        if self.pending_file is None:
            d = pending_dir()
            d.mkdir(parents=True, exist_ok=True)
            self.pending_file = d / f"{self.label}-{int(time.time())}-{os.getpid()}.jsonl"
        with open(self.pending_file, "a") as f:
            for item in items:
                f.write(json.dumps(item | {"uri": self.tracker.uri}) + "\n")


def run_record(run) -> dict:
    """An MLflow run as a plain dict: run_id, name, status, start_time / end_time (ms since the
    epoch), experiment_id, params, tags, metrics (latest values)."""
    info = run.info
    return {"run_id": info.run_id, "name": info.run_name, "status": info.status,
            "start_time": info.start_time, "end_time": info.end_time,
            "experiment_id": info.experiment_id, "params": dict(run.data.params),
            "tags": dict(run.data.tags), "metrics": dict(run.data.metrics)}


@contextlib.contextmanager
def _process_tracking_uri(uri: str):
    """Set MLflow's process-wide tracking URI for the block. MLflow's registry resolves a
    `models:/<model id>` source through it (not through the client's own URI). MLflow's helper
    deletes $MLFLOW_TRACKING_URI when it puts back an unset URI, so the variable is restored
    here: later MLflow calls of the process (e.g. `mlflow.pyfunc.load_model` after
    `load_registered`) must still reach the server it names, not a local sqlite file."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _schema(columns: dict[str, str]):
    """An MLflow column schema from arrow type strings; unknown types are left out."""
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    simple = {"string": DataType.string, "large_string": DataType.string,
              "int64": DataType.long, "int32": DataType.integer, "double": DataType.double,
              "float": DataType.float, "bool": DataType.boolean}
    specs = []
    for col, arrow in columns.items():
        if arrow in simple:
            specs.append(ColSpec(simple[arrow], col))
        elif arrow.startswith(("list<", "large_list<")) and arrow.endswith("string>"):
            specs.append(ColSpec(Array(DataType.string), col))
    return Schema(specs) if specs else None


def _write_pointer_model(local: Path, model, ref: dict) -> None:
    """A checkpoint LoggedModel's artifacts: an `MLmodel` whose pyfunc flavour loads through
    this module, and `POINTER_FILE` naming the checkpoint (URI + manifest digest)."""
    import json

    from mlflow.models import Model, ModelSignature
    from mlflow.pyfunc import add_to_model
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 256),
                            ParamSpec("temperature", "double", 0.0),
                            ParamSpec("chat", "boolean", True)]))
    mlmodel = Model(artifact_path=model.artifact_location, model_id=model.model_id,
                    run_id=model.source_run_id, signature=signature)
    add_to_model(mlmodel, loader_module=LOADER_MODULE)
    mlmodel.save(str(local / "MLmodel"))
    keys = ("uri", "step", "epoch", "config_hash", "manifest_sha256")
    (local / POINTER_FILE).write_text(json.dumps({k: ref.get(k) for k in keys}, indent=1) + "\n")


# ---------------------------------------------------------------------------------- loading
def model_dir_from_pointer(local: str | Path, dst: str | Path | None = None) -> Path:
    """The HF model directory of a downloaded checkpoint LoggedModel (`local`: its artifacts):
    the copy in its `model/` artifacts if it has one, else the checkpoint's verified `model/`
    files (in place for a local store; downloaded into `dst`, default a new temp dir, for S3)."""
    import json

    from prefix_rft.io.store import CheckpointRef, fetch_checkpoint, is_s3

    local = Path(local)
    if (local / "model" / "config.json").is_file():
        return local / "model"
    pointer = local / POINTER_FILE
    if not pointer.is_file():
        raise UserError(f"{local}: not a prefix-rft checkpoint model (no {POINTER_FILE}, no model/)")
    info = json.loads(pointer.read_text())
    ref = CheckpointRef(uri=info["uri"], step=int(info["step"]), epoch=info.get("epoch"),
                        config_hash=str(info["config_hash"]),
                        manifest_sha256=str(info["manifest_sha256"]))
    dest = None  # a local store: verified in place
    if is_s3(ref.uri):
        dest = dst if dst is not None else tempfile.mkdtemp(prefix="prefix-rft-model-")
    return fetch_checkpoint(ref, dest, only="model") / "model"


def load_registered(model_uri: str, *, tracking_uri: str | None = None,
                    dst: str | Path | None = None) -> Path:
    """A local HF directory (config, weights, tokenizer) of a registered or logged checkpoint
    model, e.g. `load_registered("models:/prefix-rft-prefix_rft@best")`; load it with
    transformers' `from_pretrained` or vLLM. Weights of a local checkpoint store are verified
    and returned in place (read-only: do not write there); S3 ones, and copies kept in MLflow,
    go to `dst` (default: a new temp dir, left for the caller). Only the `model/` files are
    fetched, never the optimizer state. `tracking_uri`: default as `resolve_uri`."""
    import shutil

    import mlflow

    uri = resolve_uri(tracking_uri)
    made = dst is None
    out = Path(tempfile.mkdtemp(prefix="prefix-rft-model-")) if made else Path(dst)
    try:
        # straight into `out` (weights kept in MLflow are GBs: no second copy); `models:/`
        # URIs resolve through the process-wide tracking URI
        with _process_tracking_uri(uri), _transfer_timeout():
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(out)))
        if (local / "model" / "config.json").is_file():  # weights copied into MLflow
            return local / "model"
        got = model_dir_from_pointer(local, out)
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if made and not got.is_relative_to(out):  # a local store's checkpoint, verified in place
        shutil.rmtree(out, ignore_errors=True)
    return got


class CheckpointPredictor:
    """What `mlflow.pyfunc.load_model(...)` wraps for a checkpoint LoggedModel: completions
    for prompts. Input: a string or a list of strings (MLflow hands a list over as a one-column
    DataFrame).
    Params: `max_new_tokens` (256), `temperature` (0 = greedy), `chat` (apply the tokenizer's
    chat template when it has one; default true). Output: a list of completions."""

    def __init__(self, model_dir: str | Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        self.model.to(self.device).eval()

    @staticmethod
    def _prompts(model_input) -> list[str]:
        if isinstance(model_input, str):
            return [model_input]
        if hasattr(model_input, "columns"):  # a pandas DataFrame
            col = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
            return [str(x) for x in model_input[col]]
        if isinstance(model_input, dict):
            v = model_input.get("prompt")
            return [v] if isinstance(v, str) else [str(x) for x in v]
        return [str(x) for x in model_input]

    def predict(self, model_input, params: dict | None = None) -> list[str]:
        import torch

        params = params or {}
        prompts = self._prompts(model_input)
        tok = self.tokenizer
        if params.get("chat", True) and tok.chat_template:
            prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        temperature = float(params.get("temperature", 0.0))
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {
            "do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=int(params.get("max_new_tokens", 256)),
                                      pad_token_id=tok.pad_token_id, **sampling)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> CheckpointPredictor:
    """MLflow's pyfunc entry point for a checkpoint LoggedModel (its `MLmodel` names this
    module): resolves the pointer (S3 weights go to a temp dir) and loads the model."""
    with tempfile.TemporaryDirectory(prefix="prefix-rft-model-") as tmp:  # S3 downloads
        return CheckpointPredictor(model_dir_from_pointer(data_path, tmp))


# ---------------------------------------------------------------------------------- replay
def replay(path: str | Path, uri: str | None = None) -> int:
    """Send the operations kept in a pending file (see `TrackingQueue`) to `uri` (default: the
    URI recorded in the file, unless its password was masked, else as `resolve_uri`). Metric
    values keep their original timestamps, so a replay repeated adds nothing twice. The file is
    renamed `*.replayed` afterwards. Returns the number of operations sent."""
    import json

    from prefix_rft.io.redact import MASK

    path = Path(path)
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    trackers: dict[str, Tracker] = {}
    for item in items:
        target = uri or item.pop("uri", None)
        if not target or MASK in target:
            target = resolve_uri(None)
        item.pop("uri", None)
        tracker = trackers.get(target) or trackers.setdefault(target, Tracker(target))
        with_retries(lambda t=tracker, i=item: _apply(t, i), f"replay of {path.name}")
    path.rename(path.with_name(path.name + ".replayed"))
    return len(items)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m prefix_rft.io.tracking",
                                description="Send tracking operations kept while MLflow was down.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="send a pending-metrics file")
    r.add_argument("file", nargs="+")
    r.add_argument("--uri", help="tracking URI (default: the file's, else MLFLOW_TRACKING_URI)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for f in a.file:
        print(f"{f}: {replay(f, a.uri)} operation(s) sent")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
