"""The team MLflow server recipe (infra/mlflow/server.py) for real: a PostgreSQL cluster made
by initdb for the module (Debian's postgresql), the session's moto S3 server as the artifact
store (a unique prefix of its bucket) and MLflow's basic-auth app.

The pipeline's step functions run once against it, without Metaflow, as tests/test_steps.py
wires them, logging as a non-admin user through MLFLOW_TRACKING_USERNAME/PASSWORD and with no
S3 credentials (artifacts are proxied by the server). Requests without credentials, with a wrong
password or with MLflow's old default admin password are refused and create nothing.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

from tests import pipeline_configs

_PATH = Path(__file__).resolve().parents[1] / "infra" / "mlflow" / "server.py"
_spec = importlib.util.spec_from_file_location("prefix_rft_team_server", _PATH)
team_server = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = team_server  # dataclasses look their module up there
_spec.loader.exec_module(team_server)

EXPERIMENT = "team-server-tests"
FLOW = "TeamFlow"
ADMIN = "admin"  # the historical admin name: its old default password must not work
USER = "pipeline-bot"  # the pipeline logs as this non-admin user
REGISTERED = "prefix-rft-prefix_rft"
S3_CLIENT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def admin_env(**override) -> dict:
    env = {
        team_server.ENV_ADMIN_USER: ADMIN,
        team_server.ENV_ADMIN_PASSWORD: "admin-" + secrets.token_urlsafe(16),
        team_server.ENV_DB_PASSWORD: "db-" + secrets.token_urlsafe(16),
    }
    env.update(override)
    return {k: v for k, v in env.items() if v is not None}


def s3_client(servers):
    import boto3

    return boto3.client("s3", endpoint_url=servers.s3_endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def s3_keys(servers, prefix: str) -> set[str]:
    pages = s3_client(servers).get_paginator("list_objects_v2").paginate(
        Bucket=servers.bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


# ==================================================================================== fixtures
@pytest.fixture(scope="module")
def team(local_servers):
    """Postgres + the team MLflow server for the module; a non-admin user for the pipeline."""
    if team_server.find_pg_bindir() is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed "
                    "(Debian package `postgresql`)")
    # Not under pytest's tmp dir: as root, Postgres runs as the OS user `postgres`, which must
    # be able to reach its data directory (pytest's /tmp/pytest-of-root is mode 0700).
    root = Path(tempfile.mkdtemp(prefix="prefix-rft-team-"))
    root.chmod(0o711)
    prefix = f"team-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **team_server._local.AWS_ENV, **admin_env()}
    server = None
    try:
        server = team_server.start(root, artifacts_destination=f"s3://{local_servers.bucket}/{prefix}",
                                   s3_endpoint=local_servers.s3_endpoint, env=env, durable=False)
        admin = (env[team_server.ENV_ADMIN_USER], env[team_server.ENV_ADMIN_PASSWORD])
        user = (USER, "bot-" + secrets.token_urlsafe(16))
        r = requests.post(f"{server.uri}/api/2.0/mlflow/users/create", auth=admin, timeout=10,
                          json={"username": user[0], "password": user[1]})
        assert r.status_code == 200, r.text
        yield SimpleNamespace(server=server, uri=server.uri, root=root, prefix=prefix,
                              admin=admin, user=user, env=env, s3=local_servers)
    finally:
        if server is not None:
            team_server.stop(server)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def as_user(team, monkeypatch):
    """The client environment of a pipeline run: the tracking URI and the user's credentials,
    and no S3 credentials at all (the server proxies artifacts)."""
    for k in S3_CLIENT_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team.user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team.user[1])
    return team


def admin_client(team, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team.admin[1])
    return MlflowClient(team.uri)


# ==================================================================================== pipeline
@pytest.mark.slow
def test_pipeline_logs_to_the_team_server(as_user, smollm2_dir, tmp_path):
    """start -> filter_data -> train_epoch x 2 -> plan_eval -> eval_task -> join_eval -> end,
    as tests/test_steps.py's chain, with credentials only in MLFLOW_TRACKING_USERNAME/PASSWORD."""
    from mlflow import MlflowClient

    from prefix_rft.core.dicts import flatten
    from steps.common import RunContext

    team = as_user
    cfg_data = pipeline_configs.tiny_config(smollm2_dir, tmp_path, experiment=EXPERIMENT)
    cfg_data["tracking"].update({"uri": team.uri, "system_metrics": False})
    ctx = RunContext(flow_name=FLOW, run_id="100", user="tester", task_id="7")
    c = pipeline_configs.run_chain(cfg_data, ctx)
    m, e1, e2, results, tracking = c.start, c.e1, c.e2, c.results, c.tracking
    summary, text = c.summary, c.text
    assert team.uri in text and tracking["run_id"] in text

    client = MlflowClient(team.uri)  # still the non-admin user's credentials
    run_id = tracking["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    tags = run.data.tags
    assert tags["metaflow.flow_name"] == FLOW
    assert tags["metaflow.run_id"] == "100"
    assert tags["metaflow.user"] == "tester"
    assert tags["checkpoint.epoch_2"] == e2["checkpoint"]["uri"]
    params = run.data.params
    assert params == {k: "null" if v is None else str(v) for k, v in flatten(m["config"]).items()}
    assert params["method"] == "prefix_rft"
    assert params["rl.steps"] == str(pipeline_configs.STEPS_TOTAL)
    # training metrics at step = training step 1..4; evaluation at step = epoch (0 = base)
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4]
    ev = client.get_metric_history(run_id, "eval/heldout/avg_at_1")
    assert sorted((m.step, m.value) for m in ev) == [(r["epoch"], r["value"]) for r in results]
    assert sorted(m.step for m in ev) == [0, 1, 2]
    # artifacts, written and read back through the server's proxy
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "learning_curves.png"} <= arts
    local = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text()) == m["config"]
    # the best epoch's LoggedModel, registered with the alias 'best' (local checkpoints + a
    # server: the model holds a copy of the weights in its artifacts)
    best = int(tags["best_epoch"])
    assert summary["registered"]["name"] == REGISTERED
    model_id = summary["registered"]["model_id"]
    mv = client.get_model_version_by_alias(REGISTERED, "best")
    assert mv.run_id == run_id and mv.source == f"models:/{model_id}"
    assert tags["best_checkpoint"] == [e1, e2][best - 1]["checkpoint"]["uri"]
    # ... and the bytes are in the S3 bucket (moto) under the server's artifacts destination
    exp_id = tracking["experiment_id"]
    keys = s3_keys(team.s3, f"{team.prefix}/{exp_id}/")
    base = f"{team.prefix}/{exp_id}/{run_id}/artifacts"
    model_base = f"{team.prefix}/{exp_id}/models/{model_id}/artifacts"
    assert {f"{base}/config.yaml", f"{base}/learning_curves.png", f"{model_base}/MLmodel",
            f"{model_base}/model/model.safetensors", f"{model_base}/model/config.json"} <= keys
    body = s3_client(team.s3).get_object(Bucket=team.s3.bucket, Key=f"{base}/config.yaml")
    assert yaml.safe_load(body["Body"].read()) == m["config"]
    # the documented one-liner, as the non-admin user without S3 credentials (the server
    # proxies the copied weights)
    from prefix_rft.io.tracking import load_registered

    got = load_registered(f"models:/{REGISTERED}@best", tracking_uri=team.uri,
                          dst=tmp_path / "best")
    assert (got / "model.safetensors").is_file() and (got / "config.json").is_file()


# ==================================================================================== refusals
@pytest.mark.slow
def test_requests_without_valid_credentials_are_refused(team, monkeypatch):
    from mlflow.entities import ViewType

    client = admin_client(team, monkeypatch)

    def state():
        exps = client.search_experiments(view_type=ViewType.ALL)
        runs = client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL)
        models = client.search_registered_models()
        users = requests.get(f"{team.uri}/api/2.0/mlflow/users/list", auth=team.admin,
                             timeout=10)
        assert users.status_code == 200, users.text
        return ({e.name for e in exps}, {r.info.run_id for r in runs}, {m.name for m in models},
                sorted(u["username"] for u in users.json()["users"]),
                s3_keys(team.s3, f"{team.prefix}/"))

    exp_id = client.create_experiment(f"refusals-{uuid.uuid4().hex[:6]}")
    before = state()
    assert ADMIN in before[3] and USER in before[3]
    bad = {
        "no credentials": None,
        "wrong password": (team.admin[0], team.admin[1] + "x"),
        "MLflow's old default admin password": (ADMIN, team_server.MLFLOW_LEGACY_DEFAULT_PASSWORD),
        "unknown user": ("nobody", team.admin[1]),
    }
    api = f"{team.uri}/api/2.0/mlflow"
    calls = [
        ("POST", f"{api}/experiments/create", {"name": "intruder-experiment"}),
        ("POST", f"{api}/runs/create", {"experiment_id": exp_id, "run_name": "intruder"}),
        ("POST", f"{api}/registered-models/create", {"name": "intruder-model"}),
        ("POST", f"{api}/users/create", {"username": "intruder", "password": "x" * 16}),
        ("GET", f"{api}/experiments/search?max_results=10", None),
        ("POST", f"{team.uri}/ajax-api/2.0/mlflow/experiments/create", {"name": "intruder-ui"}),
        ("GET", f"{team.uri}/signup", None),
    ]
    for why, auth in bad.items():
        for method, url, body in calls:
            r = requests.request(method, url, json=body, auth=auth, timeout=10)
            assert r.status_code in (401, 403), (why, method, url, r.status_code, r.text)
        # an artifact upload straight to the proxy
        r = requests.put(f"{team.uri}/api/2.0/mlflow-artifacts/artifacts/{exp_id}/intruder.txt",
                         data=b"x", auth=auth, timeout=10)
        assert r.status_code in (401, 403), (why, "artifact upload", r.status_code)
        # the UI's sign-up form
        r = requests.post(f"{api}/users/create-ui", auth=auth, timeout=10,
                          data={"username": "intruder-ui", "password": "x" * 16})
        assert r.status_code in (401, 403), (why, "sign-up form", r.status_code, r.text)
    # an authenticated non-admin may not create users either
    r = requests.post(f"{api}/users/create", auth=team.user, timeout=10,
                      json={"username": "intruder", "password": "x" * 16})
    assert r.status_code == 403, r.text
    assert state() == before  # nothing was created
    # /health stays open: the pipeline's reachability check needs no credentials
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert requests.get(f"{team.uri}/health", timeout=10).text.strip() == "OK"  # stays open


@pytest.mark.slow
def test_a_restart_with_another_admin_password_is_refused(team, tmp_path):
    """The admin password from the environment only applies when the admin user is created;
    a server started later with a different one says so instead of running with credentials
    nobody has (and the old password keeps working)."""
    env = {**team.env, team_server.ENV_ADMIN_PASSWORD: "another-" + secrets.token_urlsafe(12)}
    with pytest.raises(team_server.TeamServerError,
                       match=r"admin credentials .* were refused \(HTTP 401\)"):
        team_server.start_mlflow_team_server(
            tmp_path, pg_host=team.server.pg_host, pg_port=team.server.pg_port,
            artifacts_destination=team.server.artifacts_destination,
            s3_endpoint=team.s3.s3_endpoint, env=env)
    r = requests.get(f"{team.uri}/api/2.0/mlflow/users/get?username={ADMIN}", auth=team.admin,
                     timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("override, message", [
    ({team_server.ENV_ADMIN_PASSWORD: None}, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    ({team_server.ENV_ADMIN_PASSWORD: ""}, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    ({team_server.ENV_ADMIN_PASSWORD: "password1234"},
     "MLFLOW_AUTH_ADMIN_PASSWORD is MLflow's old default password 'password1234'"),
    ({team_server.ENV_ADMIN_PASSWORD: "short"}, "shorter than MLflow's minimum of 12"),
    ({team_server.ENV_ADMIN_USER: None}, "MLFLOW_AUTH_ADMIN_USERNAME is not set"),
])
def test_the_server_refuses_to_start_without_safe_admin_credentials(override, message, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_ADMIN_")}
    env.update(admin_env(**override))
    with pytest.raises(team_server.TeamServerError) as e:
        team_server.start(tmp_path / "team", artifacts_destination="s3://bucket/prefix",
                          env=env)
    assert message in str(e.value)
    with pytest.raises(team_server.TeamServerError) as e2:
        team_server.start_mlflow_team_server(tmp_path / "direct", pg_host="127.0.0.1",
                                             pg_port=1, artifacts_destination="s3://b/p",
                                             env=env)
    assert str(e2.value) == str(e.value)
    assert not (tmp_path / "team").exists() and not (tmp_path / "direct").exists()  # nothing


def test_db_password_is_required(tmp_path):
    env = admin_env(**{team_server.ENV_DB_PASSWORD: None})
    with pytest.raises(team_server.TeamServerError, match="MLFLOW_DB_PASSWORD is not set"):
        team_server.start_mlflow_team_server(tmp_path, pg_host="127.0.0.1", pg_port=1,
                                             artifacts_destination="s3://b/p", env=env)


@pytest.mark.slow
def test_start_checks_credentials_against_an_authenticated_server(team, monkeypatch):
    """/health is open on the team server; the tracker's start-up check asks a real API question
    so a missing or wrong password fails in `start`, naming the variables to set."""
    from prefix_rft.errors import UserError
    from prefix_rft.io.tracking import check_reachable

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(UserError, match="HTTP 401, no credentials.*MLFLOW_TRACKING_USERNAME"):
        check_reachable(team.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team.user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
    with pytest.raises(UserError, match=f"HTTP 401, user '{USER}'"):
        check_reachable(team.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team.user[1])
    check_reachable(team.uri)  # passes
