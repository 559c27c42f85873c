"""What every step function shares: the run context, config round-trips, the lineage layout.

Layout of a training lineage (one MLflow parent run, one `start` task; resumes continue it):

    <pipeline.checkpoint_root>/<flow>/<lineage>/data/                 filtered train/test sets
    <pipeline.checkpoint_root>/<flow>/<lineage>/<run id>/step-NNNNNN  checkpoints of one run

(Per-sample evaluation results are artifacts of the MLflow child runs, not files here.)

`lineage` is the Metaflow run id of the run that created it (its `start`); a resumed run writes
its own `<run id>/` beside the origin's, so nothing a finished task referenced is overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prefix_rft.errors import UnavailableError, UserError
from steps.flow_config import FlowConfig, resolve_flow

log = logging.getLogger("prefix_rft.pipeline")

# Test/chaos hook: PREFIX_RFT_FAIL_AT="epoch=2,step=6" makes train_epoch raise right after the
# checkpoint of that training step is committed (how the resume tests kill an epoch).
FAIL_AT_ENV = "PREFIX_RFT_FAIL_AT"


@dataclass
class RunContext:
    """Who is running: filled from `metaflow.current` by the flow, by hand in tests."""

    flow_name: str = "PrefixRFTFlow"
    run_id: str = "local"
    user: str = "unknown"
    origin_run_id: str | None = None  # set in a resumed run
    task_id: str | None = None
    retry_count: int = 0
    project: str | None = None
    branch: str | None = None
    flow_file: str | None = None
    extra_tags: dict = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        t = {
            "metaflow.flow_name": self.flow_name,
            "metaflow.run_id": self.run_id,
            "metaflow.user": self.user,
            "metaflow.project": self.project,
            "metaflow.branch": self.branch,
            "mlflow.user": self.user,
            "mlflow.source.name": self.flow_file,
            "mlflow.source.type": "JOB",
        }
        t.update(git_tags(Path(self.flow_file).parent if self.flow_file else Path.cwd()))
        t.update(self.extra_tags)
        return {k: v for k, v in t.items() if v}


def setup_logging() -> None:
    """One INFO line per training step and per checkpoint in the task logs. (Progress bars are
    for terminals: Metaflow shows a task's output line by line, and a bar redraws one line.)"""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    if not interactive():  # bars redraw one line with \r: in a log they become one endless line
        os.environ.setdefault("TQDM_DISABLE", "1")
        # transformers' own bars (weight loading, GGUF conversion, saving) follow huggingface_hub's
        # switch, read when transformers is imported (after this: the steps import it lazily)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("mlflow", "urllib3", "botocore", "s3transfer", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from prefix_rft.io.redact import install_log_filter

    install_log_filter()  # no password of a URI, no secret env value in a log line


DEFAULT_METAFLOW_USER = "local"


def ensure_metaflow_user(environ=os.environ) -> str | None:
    """Give Metaflow a user name where it would find none it accepts. It takes METAFLOW_USER,
    SUDO_USER, USERNAME or USER, refuses 'root', and stops before the first step without one,
    which is every container or CI machine running as root. There the run is recorded under
    DEFAULT_METAFLOW_USER; setting METAFLOW_USER chooses another name. Returns the name set, or
    None where Metaflow has one already. Call before importing metaflow."""
    if any(environ.get(k) not in (None, "", "root")
           for k in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
        return None
    environ["METAFLOW_USER"] = DEFAULT_METAFLOW_USER
    return DEFAULT_METAFLOW_USER


def use_cpus(cpus: int, processes: int = 1) -> int:
    """Size torch's CPU thread pool to the task's `@resources(cpu=...)` request (shared by
    `processes` ranks), never above the cores this process may run on. Torch otherwise starts one
    thread per core of the machine: Metaflow runs a flow's parallel tasks (the eval cells) side by
    side on one machine, and a Kubernetes pod sees the node's cores, not its CPU limit, so the
    tasks' threads outnumber the cores and spin against each other (measured: 3 demo eval cells
    on 2 cores, 2 threads each, 173 s; 1 thread each, see docs/DEMO.md). Returns the count."""
    import torch

    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    threads = max(1, min(available, max(1, cpus) // max(1, processes)))
    torch.set_num_threads(threads)
    return threads


def interactive() -> bool:
    import sys

    return sys.stderr.isatty()


def git_tags(where: Path) -> dict[str, str]:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"mlflow.source.git.commit": commit, "mlflow.source.git.branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "git.dirty": str(dirty).lower()}


def config_from_dict(data: dict) -> FlowConfig:
    """The resolved config a step received (already validated by `start`)."""
    return resolve_flow(data, source="pipeline config")


def lineage_prefix(cfg: FlowConfig, flow_name: str, lineage: str) -> str:
    root = cfg.pipeline.checkpoint_root
    if root.startswith("file://"):
        root = root[len("file://"):]
    if not root.startswith("s3://"):
        root = str(Path(root).expanduser().resolve())
    return f"{root.rstrip('/')}/{flow_name}/{lineage}"


def injected_failure(epoch: int, step: int) -> None:
    spec = os.environ.get(FAIL_AT_ENV)
    if not spec:
        return
    try:
        want = dict(kv.split("=", 1) for kv in spec.split(","))
        want_epoch, want_step = int(want["epoch"]), int(want["step"])
        hit = want_epoch == epoch and want_step == step
    except (KeyError, ValueError) as e:
        raise UserError(f"{FAIL_AT_ENV}={spec!r}: expected 'epoch=E,step=S'") from e
    if hit:
        raise RuntimeError(f"injected failure ({FAIL_AT_ENV}={spec}) in epoch {epoch} after step {step}")


def tracker_for(tracking: dict, *, wait: bool = True):
    """A `Tracker` for the `tracking` record that `start` produced (uri, run id, timeout).
    With `wait`, a server that does not answer is retried with back-off (a step that starts
    while it restarts waits for it; `RetryPolicy.from_env` bounds the wait)."""
    from prefix_rft.io.tracking import Tracker, with_retries

    uri, timeout_s = live_tracking_uri(tracking["uri"]), tracking.get("timeout_s", 10)
    if not wait:
        return Tracker(uri, timeout_s=timeout_s)
    return with_retries(lambda: Tracker(uri, timeout_s=timeout_s),
                        f"connecting to MLflow {tracking['uri']}")


def live_tracking_uri(recorded: str) -> str:
    """The URI to connect to for a tracking record. `start` records the URI with its password
    masked (records are Metaflow artifacts); the password then comes from this task's
    MLFLOW_TRACKING_URI, which must be the same URI."""
    from prefix_rft.io.redact import MASK, redact_uri

    if MASK not in recorded:
        return recorded
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and redact_uri(env) == recorded:
        return env
    raise UserError(f"tracking URI {recorded}: its password is not stored with the run; set "
                    "MLFLOW_TRACKING_URI to the full URI in this task's environment (or use "
                    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")


def mark_resumed(tracker, tracking: dict, ctx: RunContext) -> None:
    """A resumed Metaflow run continues the lineage's MLflow run: reopen it and say so."""
    if not ctx.origin_run_id:
        return
    run_id = tracking["run_id"]
    tracker.reopen(run_id)
    tracker.set_tags(run_id, {
        "metaflow.resumed": "true",
        "metaflow.latest_run_id": ctx.run_id,
        f"metaflow.resume.{ctx.run_id}": f"origin={ctx.origin_run_id}",
    })


def fetch_into(ref, scratch: Path, only: str | None = None) -> Path:
    """A local directory with a checkpoint's verified files (`ref`: a CheckpointRef or its dict):
    the directory itself for a local store, a download under `scratch` (removed with it) for S3.
    `only` ("model/"): just the files below it are fetched and verified; an evaluation reads
    the weights only, and a 1.5B float32 checkpoint's optimizer state is 13 of its 19 GB."""
    from prefix_rft.io.store import CheckpointRef, fetch_checkpoint, is_s3

    r = ref if isinstance(ref, CheckpointRef) else CheckpointRef.from_dict(ref)
    dest = Path(scratch) / f"fetched-{r.manifest_sha256[:12]}" if is_s3(r.uri) else None
    return fetch_checkpoint(r, dest, only=only)


# --------------------------------------------------------------------------------------------
# User errors are not retried. Metaflow's @retry runs a failed task again whatever it raised (the
# local runtime spares only tasks that exit with its internal "disallow retry" status, which
# Argo's retry policy ignores), so a retried step that fails on the user's input would fail the
# same way on every attempt, each one a new GPU task after the retry wait. The step runs inside
# `user_errors_not_retried`: a UserError leaves a marker (its message) in the lineage's storage,
# which every attempt can read (local directory or s3://); a later attempt of the same task
# finds it and re-raises the message at once, before any work. The flow then fails (or @catch
# records the error) after attempts that cost only a task start each.

USER_ERROR_DIR = "user-errors"


def user_error_marker(lineage_prefix: str, run_id: str, step: str, task_id: str) -> str:
    """Where a task's user error is recorded: one object per task (its attempts share it)."""
    return f"{lineage_prefix.rstrip('/')}/{USER_ERROR_DIR}/{run_id}/{step}-{task_id}.txt"


@contextlib.contextmanager
def user_errors_not_retried(marker: str, retry_count: int) -> Iterator[None]:
    """Run a retried step's work once per user error: on attempt 0 (`retry_count` 0) a UserError
    is recorded at `marker` and re-raised; a retry attempt that finds the marker re-raises the
    recorded message without running the body. An `UnavailableError` (a server or storage that
    did not answer) and any other exception are retried as before."""
    if retry_count > 0:
        recorded = _read_marker(marker)
        if recorded is not None:
            raise UserError(f"{recorded} (a user error: attempt {retry_count + 1} does not run "
                            "the step again)")
    try:
        yield
    except UnavailableError:  # a server or storage that did not answer: retried as before
        raise
    except UserError as e:
        _write_marker(marker, str(e))
        raise


def _write_marker(uri: str, text: str) -> None:
    """Record `text` at `uri`; a failure to record is logged, never raised over the user error."""
    try:
        if uri.startswith("s3://"):
            from prefix_rft.io.store import S3Store

            bucket, _, key = uri[len("s3://"):].partition("/")
            S3Store(f"s3://{bucket}").client.put_object(Bucket=bucket, Key=key,
                                                        Body=text.encode())
        else:
            path = Path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except Exception as e:  # the user error is what the task reports
        log.warning("could not record the user error at %s (%s): a retry runs the step again",
                    uri, e)


def _read_marker(uri: str) -> str | None:
    """The text recorded at `uri`, None when there is none (or it cannot be read)."""
    try:
        if uri.startswith("s3://"):
            from prefix_rft.io.store import S3Store

            bucket, _, key = uri[len("s3://"):].partition("/")
            body = S3Store(f"s3://{bucket}").client.get_object(Bucket=bucket, Key=key)["Body"]
            return body.read().decode()
        path = Path(uri)
        return path.read_text() if path.is_file() else None
    except Exception:  # no marker (NoSuchKey) or unreadable: run the step
        return None
