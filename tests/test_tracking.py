"""`prefix_rft.io.tracking`: URI resolution, the reachability check, and `Tracker` against both a
real MLflow server (the session's `local_servers`) and a sqlite file: explicit-run-id logging,
param truncation and batching, metric filtering, run status changes, the model registry, tables.

Every `Tracker` test runs on both backends (the `tracker` fixture is parametrized); names that
live in the shared server database (experiments, registered models) are made unique per test.
"""

from __future__ import annotations

import http.server
import json
import math
import socket
import threading
import uuid
from pathlib import Path

import pytest

from prefix_rft.errors import UserError
from prefix_rft.io.run_layout import PARENT_TAG
from prefix_rft.io.tracking import (
    PARAM_MAX_CHARS,
    Tracker,
    _numeric,
    check_reachable,
    resolve_uri,
)


def closed_port_uri() -> str:
    """An http URI on a loopback port that was free a moment ago and is now closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------ resolve_uri
def test_resolve_uri_config_value_wins_over_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert resolve_uri("http://from-config:5000") == "http://from-config:5000"


def test_resolve_uri_env_wins_over_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert resolve_uri(None) == "http://from-env:5000"
    assert resolve_uri("") == "http://from-env:5000"  # an empty config value counts as unset


def test_resolve_uri_default_is_sqlite_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    # "sqlite:///" + an absolute path: four slashes in all (SQLAlchemy's absolute-path form)
    expected = "sqlite:///" + str(tmp_path.resolve() / "mlflow.db")
    assert resolve_uri(None) == expected
    assert expected.startswith("sqlite:////")


# ------------------------------------------------------------------------------ check_reachable
def test_check_reachable_names_the_uri_of_a_closed_port():
    dead = closed_port_uri()
    with pytest.raises(UserError) as e:
        check_reachable(dead, timeout_s=2)
    assert f"MLflow tracking server {dead} is unreachable" in str(e.value)


def test_check_reachable_reports_an_http_error_status():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(UserError) as e:
            check_reachable(uri, timeout_s=2)
        assert f"MLflow tracking server {uri} is unreachable (HTTP 503)" in str(e.value)
    finally:
        server.shutdown()
        server.server_close()


def test_check_reachable_passes_for_the_local_server(local_servers):
    check_reachable(local_servers.mlflow_uri, timeout_s=5)
    check_reachable(local_servers.mlflow_uri + "/", timeout_s=5)  # trailing slash tolerated


def test_check_reachable_is_a_no_op_for_non_http_uris(tmp_path):
    # nothing is opened or created for a sqlite (or file) URI, even one that cannot exist
    check_reachable(f"sqlite:///{tmp_path}/no/such/dir/mlflow.db")
    check_reachable("file:///nowhere/mlruns")
    assert list(tmp_path.iterdir()) == []


def test_tracker_refuses_an_unreachable_server():
    dead = closed_port_uri()
    with pytest.raises(UserError, match=dead):
        Tracker(dead, timeout_s=2)


# ------------------------------------------------------------------------------ _numeric
def test_numeric_keeps_numbers_and_bools_as_floats():
    got = _numeric({"f": 0.5, "i": 3, "t": True, "b": False, "s": "x", "none": None, "l": [1]})
    # bools become 0/1; ints become floats; str/None/list are dropped
    assert got == {"f": 0.5, "i": 3.0, "t": 1.0, "b": 0.0}
    assert all(type(v) is float for v in got.values())


def test_numeric_keeps_numpy_scalars():
    import numpy as np

    assert _numeric({"a": np.float32(0.25), "b": np.int64(3)}) == {"a": 0.25, "b": 3.0}


# ------------------------------------------------------------------------------ Tracker
@pytest.fixture(scope="module")
def sqlite_tracker(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking-sqlite")
    return Tracker(f"sqlite:///{root}/mlflow.db"), root


@pytest.fixture(params=["server", "sqlite"])
def tracker(request):
    """(Tracker, an experiment name of this test) on the MLflow server or on a sqlite file."""
    name = _unique("tracking-tests")
    if request.param == "server":
        servers = request.getfixturevalue("local_servers")
        t = Tracker(servers.mlflow_uri, timeout_s=10)
    else:
        t, root = request.getfixturevalue("sqlite_tracker")
        # keep the run artifacts in the test's directory, not in ./mlruns of the working dir
        t.client.create_experiment(name, artifact_location=str(root / name))
    return t, name


def test_create_run_with_parent_tags_the_parent(tracker):
    t, exp = tracker
    parent = t.create_run(exp, "parent", {"a": 1, "dropped": None})
    child = t.create_run(exp, "child", {"b": "x"}, parent_run_id=parent)
    p, c = t.run_info(parent), t.run_info(child)
    assert p.data.tags["a"] == "1"  # values are stringified
    assert "dropped" not in p.data.tags  # None values are not logged
    assert PARENT_TAG not in p.data.tags
    assert c.data.tags[PARENT_TAG] == parent
    assert c.info.run_name == "child"
    assert c.info.experiment_id == p.info.experiment_id == t.experiment_id(exp)
    assert p.info.status == "RUNNING"


def test_log_params_truncates_long_values(tracker):
    t, exp = tracker
    run = t.create_run(exp, "params", {})
    t.log_params(run, {"long": "x" * 7000, "none": None, "lr": 1e-6, "list": [1, 2]})
    params = t.run_info(run).data.params
    assert PARAM_MAX_CHARS == 6000
    assert params["long"] == "x" * 6000  # 7000 characters cut to MLflow's 6000
    assert params["none"] == "null"
    assert params["lr"] == "1e-06"  # str(1e-6)
    assert params["list"] == "[1, 2]"


def test_log_params_in_batches_of_100(tracker):
    t, exp = tracker
    run = t.create_run(exp, "many-params", {})
    params = {f"p{i:03d}": i for i in range(250)}  # 250 = 100 + 100 + 50: three log_batch calls
    t.log_params(run, params)
    got = t.run_info(run).data.params
    assert len(got) == 250
    assert got == {k: str(v) for k, v in params.items()}


def test_log_metrics_filters_and_uses_the_step(tracker):
    t, exp = tracker
    run = t.create_run(exp, "metrics", {})
    t.log_metrics(run, {"f": 1.5, "i": 3, "t": True, "b": False, "s": "text",
                        "nan": math.nan, "none": None}, step=7)
    t.log_metrics(run, {"f": 2.5}, step=8)
    metrics = t.run_info(run).data.metrics
    # kept: f (latest value 2.5), i -> 3.0, t -> 1.0, b -> 0.0; dropped: s, nan, none
    assert metrics == {"f": 2.5, "i": 3.0, "t": 1.0, "b": 0.0}
    assert sorted(t.metric_history(run, "f")) == [(7, 1.5), (8, 2.5)]
    assert t.metric_history(run, "t") == [(7, 1.0)]
    assert t.metric_history(run, "nan") == []


def test_set_tags_skips_none(tracker):
    t, exp = tracker
    run = t.create_run(exp, "tags", {})
    t.set_tags(run, {"k": 3, "none": None})
    t.set_tags(run, {"gone": None})  # nothing to log: no call at all
    tags = t.run_info(run).data.tags
    assert tags["k"] == "3" and "none" not in tags and "gone" not in tags


def test_reopen_and_terminate(tracker):
    t, exp = tracker
    run = t.create_run(exp, "status", {})
    t.terminate(run, "FINISHED")
    assert t.run_info(run).info.status == "FINISHED"
    t.reopen(run)
    assert t.run_info(run).info.status == "RUNNING"
    t.reopen(run)  # already running: unchanged
    assert t.run_info(run).info.status == "RUNNING"
    t.terminate(run, "FAILED")
    assert t.run_info(run).info.status == "FAILED"
    t.reopen(run)
    assert t.run_info(run).info.status == "RUNNING"


def test_experiment_id_creates_once_and_restores_a_deleted_one(tracker):
    t, exp = tracker
    eid = t.experiment_id(exp)
    assert t.experiment_id(exp) == eid
    t.client.delete_experiment(eid)
    assert t.experiment_id(exp) == eid
    assert t.client.get_experiment(eid).lifecycle_stage == "active"


def test_register_twice_makes_two_versions_and_moves_the_alias(tracker, tmp_path):
    t, exp = tracker
    run = t.create_run(exp, "register", {})
    name = _unique("tracking-model")
    if t.uri.startswith("http"):
        source = "s3://prefix-rft/models/x/model"  # a server accepts remote sources
    else:
        source = str(tmp_path / "model")  # sqlite: a local directory is allowed
    v1 = t.register(name, source, run, alias="best", tags={"epoch": "1"})
    v2 = t.register(name, source, run, alias="best", tags={"epoch": "2"})
    assert (str(v1), str(v2)) == ("1", "2")
    best = t.client.get_model_version_by_alias(name, "best")
    assert str(best.version) == "2"
    assert best.tags["epoch"] == "2"
    assert best.source == source
    assert best.run_id == run
    assert t.client.get_model_version(name, str(v1)).tags["epoch"] == "1"


def test_register_returns_the_version_as_a_string_on_sqlite(sqlite_tracker, tmp_path):
    t, root = sqlite_tracker
    exp = _unique("tracking-tests")
    t.client.create_experiment(exp, artifact_location=str(root / exp))
    run = t.create_run(exp, "register", {})
    assert t.register(_unique("tracking-model"), str(tmp_path / "model"), run) == "1"


def test_log_table_text_and_list_artifacts(tracker, tmp_path):
    t, exp = tracker
    run = t.create_run(exp, "artifacts", {})
    t.log_table(run, [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], "tables/rows.json")
    t.log_table(run, [], "tables/empty.json")  # no rows: nothing is logged
    t.log_text(run, "hello\n", "notes/readme.md")
    top = {a.path for a in t.client.list_artifacts(run)}
    assert top == {"tables", "notes"}
    assert [a.path for a in t.client.list_artifacts(run, "tables")] == ["tables/rows.json"]
    local = Path(t.client.download_artifacts(run, "tables/rows.json", str(tmp_path)))
    table = json.loads(local.read_text())
    assert table["columns"] == ["a", "b"]
    assert table["data"] == [[1, "x"], [2, "y"]]
    text = Path(t.client.download_artifacts(run, "notes/readme.md", str(tmp_path)))
    assert text.read_text() == "hello\n"


def test_system_metrics_disabled_is_a_plain_block(tracker):
    t, exp = tracker
    run = t.create_run(exp, "sysmetrics", {})
    with t.system_metrics(run, enabled=False):
        pass
    assert not any(k.startswith("system/") for k in t.run_info(run).data.metrics)


def test_reading_pipeline_runs_their_evaluations_and_artifacts(tracker, tmp_path):
    import time

    t, exp = tracker
    first = t.create_run(exp, "sft-1", {})
    t.log_params(first, {"method": "sft"})
    t.log_metrics(first, {"loss": 0.5}, step=3)
    t.terminate(first, "FINISHED")
    time.sleep(0.02)  # distinct start times
    second = t.create_run(exp, "prefix_rft-2", {"best_epoch": 1})
    ev = t.create_run(exp, "eval-heldout-epoch1", {"epoch": 1, "benchmark": "heldout",
                                                   "shard": "0/1"}, parent_run_id=second)
    t.create_run(exp, "not-an-evaluation", {}, parent_run_id=second)
    (tmp_path / "samples.parquet").write_bytes(b"rows")
    t.log_artifact(ev, tmp_path / "samples.parquet")

    runs = t.pipeline_runs(exp)  # top-level runs only, newest first
    assert [r["run_id"] for r in runs] == [second, first]
    old = runs[1]
    assert (old["name"], old["status"], old["params"], old["metrics"]) == (
        "sft-1", "FINISHED", {"method": "sft"}, {"loss": 0.5})
    assert runs[0]["tags"]["best_epoch"] == "1" and runs[0]["status"] == "RUNNING"
    assert [r["run_id"] for r in t.pipeline_runs(exp, max_runs=1)] == [second]

    (e,) = t.eval_runs(second)  # children tagged epoch + benchmark
    assert (e["run_id"], e["epoch"], e["benchmark"], e["shard"]) == (ev, 1, "heldout", "0/1")
    assert t.eval_runs(first) == []
    got = t.download_artifact(ev, "samples.parquet", tmp_path / "dl")
    assert got.read_bytes() == b"rows" and got.is_relative_to(tmp_path / "dl")

    missing = _unique("no-such-experiment")
    with pytest.raises(UserError, match=f"no experiment '{missing}'"):
        t.pipeline_runs(missing)
    assert t.client.get_experiment_by_name(missing) is None  # reading created nothing


def test_log_dataset_records_source_digest_rows_and_columns(tracker):
    t, exp = tracker
    run = t.create_run(exp, "data", {})
    sha = "ab" * 32
    t.log_dataset(run, name="train", source="s3://bucket/lineage/data/train.parquet", sha256=sha,
                  context="training", num_rows=5, tags={"raw_source": "hub:owner/name"},
                  columns={"prompt": "string", "demonstrations": "list<item: string>",
                           "n": "int64", "odd": "map<string, int64>"})
    (d,) = t.run_info(run).inputs.dataset_inputs
    assert (d.dataset.name, d.dataset.digest) == ("train", sha[:16])
    assert json.loads(d.dataset.source) == {"uri": "s3://bucket/lineage/data/train.parquet"}
    assert json.loads(d.dataset.profile) == {"num_rows": 5}
    cols = json.loads(d.dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in cols] == [  # types MLflow has no name for: left out
        ("prompt", "string"), ("demonstrations", "array"), ("n", "long")]
    assert {x.key: x.value for x in d.tags} == {
        "mlflow.data.context": "training", "sha256": sha, "raw_source": "hub:owner/name"}


def test_metrics_logged_against_a_model_are_its_metrics(tracker):
    t, exp = tracker
    run = t.create_run(exp, "model-metrics", {})
    ref = {"uri": "s3://bucket/lineage/9/step-000003", "step": 3, "epoch": 1,
           "config_hash": "c0ffee", "manifest_sha256": uuid.uuid4().hex * 2}
    model_id = t.checkpoint_model(t.experiment_id(exp), run, ref)
    t.log_metrics(run, {"eval/amc/avg_at_1": 0.5, "text": "dropped"}, step=1, model_id=model_id)
    t.log_metrics(run, {"loss": 1.0}, step=1)  # no model: the run's only
    assert t.logged_model(model_id)["metrics"] == {"eval/amc/avg_at_1": 0.5}
    assert t.run_info(run).data.metrics == {"eval/amc/avg_at_1": 0.5, "loss": 1.0}
    assert t.find_checkpoint_model(t.experiment_id(exp), "0" * 64) is None
    version = t.register_model(_unique("tracking-model"), model_id, aliases=("best",))
    assert version == "1"  # sqlite too: `models:/<id>` resolves through the tracker's URI
