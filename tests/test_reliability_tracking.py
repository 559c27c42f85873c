"""Tracking that never stops training (issue 19 item 4) and credentials that never leak (item 6),
against a real MLflow server of this module (its own port and sqlite file, so stopping and
restarting it leaves the session's shared server alone).

The outages here last a few seconds with back-off set small through the environment; the design
(back-off capped at 30 s, 15 minutes of retries by default) is for outages of minutes.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import os
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest

from prefix_rft.errors import UserError
from prefix_rft.io import tracking as T
from prefix_rft.io.redact import MASK, redact, redact_data, redact_uri, split_credentials
from steps import data as sdata
from steps import finish as sfinish
from steps import start as sstart
from steps import train as strain
from steps.common import RunContext, config_from_dict, tracker_for
from tests import pipeline_configs

SECRET = "Sw0rdfish-7781"
EXPERIMENT = "reliability-tracking"


def _servers_module():
    path = Path(__file__).resolve().parents[1] / "infra" / "local" / "servers.py"
    spec = importlib.util.spec_from_file_location("local_servers_r19d", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class OwnServer:
    """`mlflow server` on a free port with a sqlite store and local artifacts; `stop()` kills
    it, `start()` brings it back on the same port and store."""

    def __init__(self, root: Path):
        self.srv = _servers_module()
        self.root, self.port = root, self.srv.free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = root / "mlflow.db"
        self.proc = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = self.srv._spawn([
            self.srv._bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.db}", "--workers", "1",
            "--artifacts-destination", (self.root / "artifacts").as_uri()],
            self.root / "mlflow.log", env)
        self.srv._wait(f"{self.uri}/health", lambda st, body: body.strip() == "OK", 90,
                       self.proc, self.root / "mlflow.log")

    def stop(self) -> None:
        self.srv._killpg(self.proc.pid)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = OwnServer(tmp_path_factory.mktemp("own-mlflow"))
    s.start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.stop()


@pytest.fixture
def fast_retries(monkeypatch, tmp_path):
    """Back-off of 0.2 s .. 1 s for 120 s, no MLflow-internal HTTP retries, pending files here."""
    monkeypatch.setenv(T.BACKOFF_ENV, "0.2")
    monkeypatch.setenv(T.BACKOFF_MAX_ENV, "1")
    monkeypatch.setenv(T.RETRY_ENV, "120")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv(T.PENDING_ENV, str(tmp_path / "pending"))
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)  # restored after the test (Tracker may set them)
    return tmp_path / "pending"


def tiny(model_dir, root: Path, uri: str | None) -> dict:
    cfg = pipeline_configs.tiny_config(model_dir, root, experiment=EXPERIMENT,
                                       **{"pipeline.epochs": 1, "pipeline.eval_base": False})
    cfg["tracking"].update({"uri": uri, "system_metrics": False})
    return cfg


def start_and_data(cfg_data: dict, run_id: str):
    ctx = RunContext(flow_name="ReliabilityFlow", run_id=run_id, user="tester", task_id="1")
    m = sstart.start(cfg_data, ctx)
    cfg = config_from_dict(m["config"])
    tracker = tracker_for(m["tracking"])
    d = sdata.filter_data(cfg, lineage_prefix=m["lineage_prefix"], tracker=tracker,
                          tracking=m["tracking"])
    return ctx, m, cfg, tracker, d


def epoch_1(cfg, ctx, m, d, tracker):
    return strain.train_epoch(cfg, epoch=1, plan=d["plan"], data_ref=d["data"], start_ref=None,
                              warm_start=None, lineage_prefix=m["lineage_prefix"], ctx=ctx,
                              tracker=tracker, tracking=m["tracking"], progress=False)


# ================================================================================ outage
@pytest.mark.slow
def test_outage_mid_epoch_loses_and_duplicates_nothing(server, fast_retries, smollm2_dir,
                                                       tmp_path, monkeypatch):
    """The server dies after the first training step and comes back two steps later, while
    the epoch goes on: every (key, step) the trainer produced is in MLflow exactly once."""
    ctx, m, cfg, tracker, d = start_and_data(tiny(smollm2_dir, tmp_path, server.uri), "301")
    expected = collections.Counter()
    real_build = strain.build_trainer

    def build_with_outage(*args, **kwargs):
        trainer = real_build(*args, **kwargs)

        def outage(metrics):  # runs before the queue's listener sees the step
            values = {k: v for k, v in metrics.items() if k != "step"}
            expected.update((i["key"], i["step"]) for i in T.metric_items(values, trainer.train_steps))
            if trainer.train_steps == 1 and metrics.get("phase") == "rl":
                server.stop()
            if trainer.train_steps == 3 and metrics.get("phase") == "rl":
                server.start()

        trainer.listeners.insert(0, outage)
        return trainer

    monkeypatch.setattr(strain, "build_trainer", build_with_outage)
    result = epoch_1(cfg, ctx, m, d, tracker)
    assert result["steps"] == [0, 4]
    client = tracker.client
    got = collections.Counter()
    for key in {k for k, _ in expected}:
        got.update((key, h.step) for h in client.get_metric_history(m["tracking"]["run_id"], key))
    assert got == expected and max(expected.values()) == 1
    assert not list(fast_retries.glob("*.jsonl"))  # nothing left unsent
    tags = client.get_run(m["tracking"]["run_id"]).data.tags
    assert tags["checkpoint.latest"] == result["checkpoint"]["uri"]  # queued during the outage


@pytest.mark.slow
def test_server_down_at_close_keeps_metrics_and_replay_sends_them_once(server, fast_retries):
    """Still down when the step ends: the queue gives up after its bounded wait, keeps the
    values in a pending file and names the replay command; replaying (twice) stores them once."""
    tracker = T.Tracker(server.uri)
    run_id = tracker.create_run(EXPERIMENT, "pending", {})
    queue = T.TrackingQueue(tracker, label="pending-test")
    queue.log_metrics(run_id, {"a": 1.0}, step=1)
    server.stop()
    try:
        queue.log_metrics(run_id, {"a": 2.0, "b": 3.0}, step=2)
        queue.call("set_tags", run_id, {"late": "yes"})
        assert queue.close(wait_s=1) >= 2
    finally:
        server.start()
    pending = queue.pending_file
    assert pending is not None and pending.is_file()
    assert pending.parent == fast_retries
    copy = pending.with_name("copy.jsonl")
    copy.write_text(pending.read_text())
    assert T.main(["replay", str(pending)]) == 0
    assert T.replay(copy) >= 2  # a second replay of the same values adds nothing
    hist = {k: [(h.step, h.value) for h in tracker.client.get_metric_history(run_id, k)]
            for k in ("a", "b")}
    assert hist == {"a": [(1, 1.0), (2, 2.0)], "b": [(2, 3.0)]}
    assert tracker.client.get_run(run_id).data.tags["late"] == "yes"
    assert Path(str(pending) + ".replayed").is_file()


@pytest.mark.slow
def test_end_and_exit_hook_wait_for_the_server(server, fast_retries):
    """`mark_failed` (the exit hook) and `end` started while the server is down set the run's
    status once it is back, instead of failing and leaving it RUNNING (both in one outage)."""
    tracker = T.Tracker(server.uri)
    calls = {"FAILED": sfinish.mark_failed, "FINISHED": sfinish.end}
    runs = {status: tracker.create_run(EXPERIMENT, f"exit-{status}", {}) for status in calls}
    errors = []

    def call(status):
        tracking = {"uri": server.uri, "run_id": runs[status], "experiment_id": "0",
                    "experiment": EXPERIMENT, "timeout_s": 5}
        try:
            calls[status](tracking)
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            errors.append(f"{status}: {e!r}")

    server.stop()
    threads = [threading.Thread(target=call, args=(status,)) for status in calls]
    for t in threads:
        t.start()
    time.sleep(3.0)
    assert all(t.is_alive() for t in threads)  # still retrying: the server is down
    server.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    for status, run_id in runs.items():
        assert tracker.client.get_run(run_id).info.status == status


def test_retry_policy_from_env_names_a_bad_value(monkeypatch):
    monkeypatch.setenv(T.RETRY_ENV, "soon")
    with pytest.raises(UserError, match=f"{T.RETRY_ENV}='soon': expected a number of seconds"):
        T.RetryPolicy.from_env()


# ================================================================================ credentials
def test_redact_masks_uri_passwords_and_secret_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    assert redact("http://alice:pw%40x@h:5000/p") == f"http://alice:{MASK}@h:5000/p"
    assert redact("postgresql://u:p@ss@db:5432/m and s3://b/k") == f"postgresql://u:{MASK}@db:5432/m and s3://b/k"
    assert redact(f"token {SECRET}!") == f"token {MASK}!"
    assert redact("http://h:5000/#/runs a@b") == "http://h:5000/#/runs a@b"
    assert redact_data({"a": ["https://u:v@h"], "n": 1}) == {"a": [f"https://u:{MASK}@h"], "n": 1}
    assert split_credentials("https://al%20ice:p%40w@h/x") == ("https://h/x", "al ice", "p@w")


def test_short_env_values_and_records_other_code_reads_are_left_alone(monkeypatch):
    """A local S3 server's secret ("test") is no secret: masking it would rewrite paths such as
    .pytest_cache in what people read; records read back (configs, tracking records) get only
    their URI passwords masked, whatever the environment holds."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    assert redact("/work/.pytest_cache/d/model") == "/work/.pytest_cache/d/model"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    assert redact(f"key {SECRET} in /tmp/x") == f"key {MASK} in /tmp/x"
    assert redact_uri(f"key {SECRET} http://u:pw@h/x") == f"key {SECRET} http://u:{MASK}@h/x"


def test_credentials_in_config_uri_are_refused(smollm2_dir, tmp_path, fast_retries):
    with pytest.raises(UserError) as e:
        sstart.start(tiny(smollm2_dir, tmp_path, f"http://alice:{SECRET}@127.0.0.1:1"),
                     RunContext(run_id="302"))
    assert "key 'tracking.uri'" in str(e.value) and SECRET not in str(e.value)
    assert f"alice:{MASK}@" in str(e.value)


def test_unreachable_message_masks_the_password(fast_retries):
    with pytest.raises(UserError) as e:
        T.check_reachable(f"http://alice:{SECRET}@127.0.0.1:9", timeout_s=2)
    assert SECRET not in str(e.value) and f"http://alice:{MASK}@127.0.0.1:9" in str(e.value)


@pytest.fixture
def task_logging():
    """`steps.common.setup_logging()` as a flow task calls it (root handler, INFO level, the
    redacting filter), undone afterwards: it reconfigures the process's root logger, which later
    tests in this process would otherwise inherit (a handler on a closed capture stream, INFO
    records where they expect none)."""
    from steps.common import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {n: logging.getLogger(n).level for n in ("mlflow", "urllib3", "botocore", "s3transfer", "httpx")}
    setup_logging()
    try:
        yield
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        for n, lv in noisy.items():
            logging.getLogger(n).setLevel(lv)


def test_secret_in_tracking_uri_never_lands_anywhere(server, fast_retries, smollm2_dir, tmp_path,
                                                     monkeypatch, task_logging, caplog, capfd):
    """A run whose MLFLOW_TRACKING_URI carries user:secret@ works end to end (start, data, one
    epoch, end), and the secret is in none of: the MLflow sqlite store, the artifact store, the
    server's log, the step functions' results (what the flow stores as Metaflow artifacts,
    pickled here), the captured logs and output."""
    secret_uri = server.uri.replace("http://", f"http://alice:{SECRET}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    T.check_reachable(secret_uri)  # basic auth on /health and the API check
    caplog.set_level("INFO")
    ctx, m, cfg, tracker, d = start_and_data(tiny(smollm2_dir, tmp_path, None), "303")
    assert m["tracking"]["uri"] == f"http://alice:{MASK}@127.0.0.1:{server.port}"
    e1 = epoch_1(cfg, ctx, m, d, tracker)
    text = sfinish.end(m["tracking"])
    assert tracker.client.get_run(m["tracking"]["run_id"]).info.status == "FINISHED"
    needle = SECRET.encode()
    stores = [server.db, server.root / "mlflow.log", *(server.root / "artifacts").rglob("*")]
    hits = [str(p) for p in stores if p.is_file() and needle in p.read_bytes()]
    assert hits == []
    assert needle not in pickle.dumps([m, d, e1, text])
    out, err = capfd.readouterr()
    assert SECRET not in caplog.text + out + err + text
    assert redact(f"MLflow tracking URI: {secret_uri}") in text
