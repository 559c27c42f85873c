"""The pipeline's step functions (`steps/`) called directly, without Metaflow: a sqlite MLflow
file and a local checkpoint root in temporary directories.

The whole chain start -> filter_data -> train_epoch x 2 -> plan_eval -> eval_task -> join_eval ->
end runs once per module (`chain`, ~20 s: a random-weight 1-layer model with SmolLM2's
tokenizer, 4 RL steps); the resume and corruption tests build on its data and epoch-1
checkpoint, each in its own checkpoint root. Every expected number is worked out in a comment.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml

from prefix_rft.core.dicts import flatten
from prefix_rft.errors import UserError
from prefix_rft.io import run_layout
from prefix_rft.io.store import (
    MANIFEST,
    CheckpointRef,
    fetch_checkpoint,
    open_checkpoint,
    open_store,
)
from steps import common as scommon
from steps import data as sdata
from steps import evaluate as seval
from steps import finish as sfinish
from steps import start as sstart
from steps import train as strain
from steps.common import FAIL_AT_ENV, RunContext, tracker_for
from steps.flow_config import check_flow_config, flow_config_parser, resolve_flow
from tests import pipeline_configs

STEPS_TOTAL = pipeline_configs.STEPS_TOTAL
EXPERIMENT = "steps-tests"
FLOW = "StepsFlow"


def tiny_config(model_dir, root: Path, mlflow_uri: str, **extra) -> dict:
    """The shared tiny config plus an explicit tracking URI and no system-metrics thread."""
    cfg = pipeline_configs.tiny_config(model_dir, root, experiment=EXPERIMENT, **extra)
    cfg["tracking"].update({"uri": mlflow_uri, "system_metrics": False})
    return cfg


def minimal(**extra) -> dict:
    """The smallest valid config (nothing is loaded: only for resolving and planning)."""
    cfg = {"method": "rft", "model": {"name_or_path": "some-model"},
           "data": {"train": "synthetic:tiny"}}
    return pipeline_configs.set_dotted(cfg, extra)


def closed_port_uri() -> str:
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ==================================================================================== fixtures
@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite MLflow file for the module (creating its tables takes ~5 s); the experiment is
    created up front with its artifacts beside the file (not in ./mlruns of the working dir)."""
    from prefix_rft.io.tracking import Tracker

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    Tracker(uri).client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    return uri


@pytest.fixture(scope="module")
def chain(smollm2_dir, mlflow_uri, tmp_path_factory):
    """The whole pipeline once, step function by step function, as the flow wires them."""
    root = tmp_path_factory.mktemp("chain")
    ctx = RunContext(flow_name=FLOW, run_id="100", user="tester", task_id="7")
    c = pipeline_configs.run_chain(  # committed: listed before join_eval could prune anything
        tiny_config(smollm2_dir, root, mlflow_uri), ctx,
        on_trained=lambda m: open_store(m["lineage_prefix"]).list())
    c.root, c.committed = root, c.extra
    return c


# ==================================================================================== epoch_plan
def test_epoch_plan_even_split():
    cfg = resolve_flow(minimal(**{"rl.steps": 20, "pipeline.epochs": 2}))
    # 20 RL steps over 2 epochs: ceil(20 / 2) = 10 per epoch; total min(20, 2 * 10) = 20
    assert sdata.epoch_plan(cfg, num_train=100) == {
        "epochs": 2, "steps_per_epoch": 10, "total_steps": 20, "sft_steps": 0, "rl_steps": 20}


def test_epoch_plan_uneven_split():
    cfg = resolve_flow(minimal(**{"rl.steps": 5, "pipeline.epochs": 2}))
    # ceil(5 / 2) = 3 per epoch: epoch 1 = steps 1-3, epoch 2 = steps 4-5; total min(5, 6) = 5
    assert sdata.epoch_plan(cfg, num_train=100) == {
        "epochs": 2, "steps_per_epoch": 3, "total_steps": 5, "sft_steps": 0, "rl_steps": 5}


def test_epoch_plan_sft_preset():
    cfg = resolve_flow(minimal(method="sft", **{"sft.epochs": 3, "sft.batch_size": 4}))
    assert cfg.rl.steps == 0  # the sft preset has no RL phase
    # 10 problems / batch 4 -> ceil(10 / 4) = 3 steps per SFT epoch; 3 epochs -> 9 SFT steps;
    # + 0 RL = 9 steps; pipeline.epochs defaults to 2: ceil(9 / 2) = 5 per epoch;
    # (2 - 1) * 5 = 5 < 9, so epoch 2 has steps 6-9; total min(9, 2 * 5) = 9
    assert sdata.epoch_plan(cfg, num_train=10) == {
        "epochs": 2, "steps_per_epoch": 5, "total_steps": 9, "sft_steps": 9, "rl_steps": 0}


def test_epoch_plan_fractional_sft_epochs_plus_rl():
    cfg = resolve_flow(minimal(method="sft_then_rft", **{"sft.epochs": 0.5, "sft.batch_size": 4,
                                                     "rl.steps": 3, "pipeline.epochs": 1}))
    # ceil(10 / 4) = 3 per SFT epoch; ceil(0.5 * 3) = ceil(1.5) = 2 SFT steps; + 3 RL = 5;
    # one epoch: ceil(5 / 1) = 5 per epoch, total min(5, 5) = 5
    assert sdata.epoch_plan(cfg, num_train=10) == {
        "epochs": 1, "steps_per_epoch": 5, "total_steps": 5, "sft_steps": 2, "rl_steps": 3}


def test_epoch_plan_refuses_an_empty_last_epoch():
    cfg = resolve_flow(minimal(**{"rl.steps": 20, "pipeline.epochs": 3,
                             "pipeline.steps_per_epoch": 10}))
    # (3 - 1) * 10 = 20 >= 20 steps: epoch 3 would train nothing
    with pytest.raises(UserError) as e:
        sdata.epoch_plan(cfg, num_train=100)
    msg = str(e.value)
    assert msg.startswith("key 'pipeline.epochs': 3 epochs of 10 steps leave epoch 3 without "
                          "training steps (the method has 20: 0 SFT + 20 RL)")


def test_epoch_plan_explicit_steps_per_epoch_caps_the_total():
    cfg = resolve_flow(minimal(**{"rl.steps": 20, "pipeline.epochs": 2,
                             "pipeline.steps_per_epoch": 5}))
    # 2 epochs of 5 steps: (2 - 1) * 5 = 5 < 20 is fine; total min(20, 2 * 5) = 10
    assert sdata.epoch_plan(cfg, num_train=100) == {
        "epochs": 2, "steps_per_epoch": 5, "total_steps": 10, "sft_steps": 0, "rl_steps": 20}


def test_epoch_plan_no_training_steps():
    cfg = resolve_flow(minimal(method="sft", **{"sft.epochs": 0}))  # rl.steps 0 from the preset
    with pytest.raises(UserError, match="no training steps"):
        sdata.epoch_plan(cfg, num_train=10)


# ==================================================================================== config
def test_resolve_flow_config_parameters_override():
    data = minimal(seed=1, **{"pipeline.epochs": 4, "data.max_problems": 100})
    cfg = sstart.resolve_flow_config(data, seed=7, epochs=3, max_problems=5)
    assert (cfg.seed, cfg.pipeline.epochs, cfg.data.max_problems) == (7, 3, 5)
    assert data["pipeline"]["epochs"] == 4 and data["seed"] == 1  # the input is not modified
    same = sstart.resolve_flow_config(data)  # Parameters left at None keep the config's values
    assert (same.seed, same.pipeline.epochs, same.data.max_problems) == (1, 4, 100)


def test_resolve_flow_config_set_overrides():
    data = minimal(**{"rl.steps": 9})
    cfg = sstart.resolve_flow_config(
        data, overrides="rl.steps=12 'pipeline.checkpoint_root=s3://b/ck' rl.optim.lr=2e-6",
        seed=5)
    assert cfg.rl.steps == 12
    assert cfg.pipeline.checkpoint_root == "s3://b/ck"
    assert cfg.rl.optim.lr == 2e-6
    assert cfg.seed == 5
    # the seed Parameter is applied after --set
    assert sstart.resolve_flow_config(data, overrides="seed=3", seed=4).seed == 4
    with pytest.raises(UserError, match="rl.optim.lr_typo"):
        sstart.resolve_flow_config(data, overrides="rl.optim.lr_typo=1")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        sstart.resolve_flow_config(data, overrides="rl.steps")


def test_resolve_flow_config_unknown_key_is_named():
    with pytest.raises(UserError) as e:
        sstart.resolve_flow_config(minimal(**{"rl.optim.lr_typo": 1e-6}), source="my.yaml")
    assert str(e.value).startswith("my.yaml: unknown key 'rl.optim.lr_typo'")


def test_resolve_flow_config_bad_parameter_value_is_named():
    with pytest.raises(UserError, match="key 'pipeline.epochs': 0 is out of range: must be >= 1"):
        sstart.resolve_flow_config(minimal(), epochs=0)


def test_flow_config_parser_fills_pipeline_defaults():
    got = flow_config_parser("method: rft\nmodel: {name_or_path: m}\n")
    assert got["method"] == "rft"
    assert got["pipeline"]["train"] == {"cpus": 2, "gpus": 0, "memory_mb": 8000,
                                        "timeout_minutes": 240, "nodes": 1}
    assert got["pipeline"]["eval"]["gpus"] == 0
    assert got["pipeline"]["train_retries"] == 1
    assert got["pipeline"]["epochs"] == 2


def test_flow_config_parser_keeps_user_values():
    text = "method: rft\npipeline:\n  epochs: 3\n  train:\n    gpus: 1\n    memory_mb: 1000\n"
    got = flow_config_parser(text)["pipeline"]
    assert got["epochs"] == 3
    assert got["train"] == {"cpus": 2, "gpus": 1, "memory_mb": 1000, "timeout_minutes": 240,
                            "nodes": 1}
    assert got["eval"]["gpus"] == 0


@pytest.mark.parametrize("text, message", [
    ("method: [rft\n", "cfg.yaml: malformed YAML: "),
    ("- a\n- b\n", "cfg.yaml: expected a mapping of config keys at the top level, got ['a', 'b']"),
    ("method: rft\npipeline: 3\n", "cfg.yaml: key 'pipeline': expected a mapping, got 3"),
])
def test_flow_config_parser_markers_become_user_errors(text, message):
    parsed = flow_config_parser(text)  # never raises: the markers ride along
    assert parsed["pipeline"]["train"]["gpus"] == 0  # the decorators can still read defaults
    with pytest.raises(UserError) as e:
        check_flow_config(parsed, "cfg.yaml")
    assert str(e.value).startswith(message)
    with pytest.raises(UserError) as e2:  # and start's resolution reports the same line
        sstart.resolve_flow_config(parsed, source="cfg.yaml")
    assert str(e2.value) == str(e.value)


@pytest.mark.parametrize("text", ["method: rft\npipeline:\n",
                                  "method: rft\npipeline:\n  train:\n"])
def test_flow_config_parser_fills_defaults_under_an_empty_section(text):
    assert flow_config_parser(text)["pipeline"]["train"]["gpus"] == 0


# ==================================================================================== start
def test_start_opens_the_mlflow_run(smollm2_dir, mlflow_uri, tmp_path):
    ctx = RunContext(flow_name=FLOW, run_id="42", user="alice")
    data = tiny_config(smollm2_dir, tmp_path, mlflow_uri)
    m = sstart.start(data, ctx, seed=3)
    cfg = resolve_flow(data | {"seed": 3})
    assert m["config"] == cfg.to_dict() and m["config_hash"] == cfg.config_hash()
    assert m["lineage"] == "42"
    assert m["lineage_prefix"] == f"{(tmp_path / 'checkpoints').resolve()}/{FLOW}/42"
    assert m["warm_start"] is None
    assert m["tracking"]["uri"] == mlflow_uri
    assert m["tracking"]["experiment"] == EXPERIMENT and m["tracking"]["timeout_s"] == 10
    client = mlflow_client(mlflow_uri)
    run = client.get_run(m["tracking"]["run_id"])
    assert run.info.experiment_id == m["tracking"]["experiment_id"]
    assert run.info.run_name == "prefix_rft-42"  # <method>-<metaflow run id>
    assert run.info.status == "RUNNING"
    tags = run.data.tags
    assert tags["metaflow.flow_name"] == FLOW
    assert tags["metaflow.run_id"] == "42"
    assert tags["metaflow.user"] == "alice"
    assert tags["method"] == "prefix_rft"
    assert tags["config_hash"] == cfg.config_hash()
    assert tags["checkpoint.prefix"] == m["lineage_prefix"]
    params = run.data.params
    assert params == {k: "null" if v is None else str(v) for k, v in flatten(m["config"]).items()}
    assert params["rl.optim.lr"] == "1e-06"  # the default RL lr 1e-6, str() of a float
    assert params["seed"] == "3"  # the Parameter, not the config's 1
    assert params["rollout.prefix_schedule.total_steps"] == "4"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml"}
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text()) == m["config"]


def test_start_warm_start_without_manifest_names_the_path(smollm2_dir, mlflow_uri, tmp_path):
    warm = tmp_path / "half-uploaded"
    (warm / "model").mkdir(parents=True)
    (warm / "trainer_state.pt").write_bytes(b"x")
    with pytest.raises(UserError) as e:
        sstart.start(tiny_config(smollm2_dir, tmp_path, mlflow_uri), RunContext(run_id="43"),
                     warm_start=str(warm))
    assert str(e.value).startswith(f"{warm} is not a committed checkpoint (no {MANIFEST})")


def test_start_warm_start_of_a_data_commit_is_refused(smollm2_dir, mlflow_uri, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.parquet").write_bytes(b"rows")
    ref = open_store(tmp_path / "store").commit(src, "data", step=0, epoch=None,
                                                 config_hash="h", meta={"kind": "data"})
    with pytest.raises(UserError, match=f"--warm-start {ref.uri}: not a training checkpoint"):
        sstart.start(tiny_config(smollm2_dir, tmp_path, mlflow_uri), RunContext(run_id="44"),
                     warm_start=ref.uri)


def test_start_unreachable_tracking_server_names_the_uri(smollm2_dir, tmp_path):
    dead = closed_port_uri()
    with pytest.raises(UserError) as e:
        sstart.start(tiny_config(smollm2_dir, tmp_path, dead), RunContext(run_id="46"))
    assert f"MLflow tracking server {dead} is unreachable" in str(e.value)


# ==================================================================================== the chain
@pytest.mark.slow
def test_chain_checkpoints(chain):
    prefix = chain.start["lineage_prefix"]
    assert prefix == f"{(chain.root / 'checkpoints').resolve()}/{FLOW}/100"
    # 16 synthetic problems, 4 held out; 4 RL steps over 2 epochs: ceil(4 / 2) = 2 per epoch
    assert (chain.data["num_train"], chain.data["num_test"]) == (16, 4)
    assert chain.data["plan"] == {"epochs": 2, "steps_per_epoch": 2, "total_steps": 4,
                                  "sft_steps": 0, "rl_steps": 4}
    assert chain.data["data"]["uri"] == f"{prefix}/data"
    # epoch 1 trains steps 1-2 (target min(1 * 2, 4) = 2), epoch 2 steps 3-4
    assert chain.e1["steps"] == [0, 2] and chain.e2["steps"] == [2, 4]
    assert chain.e1["resumed_from"] is None and chain.e2["resumed_from"] is None
    refs = [chain.e1["checkpoint"], chain.e2["checkpoint"]]
    assert [r["step"] for r in refs] == [2, 4]
    assert [r["uri"] for r in refs] == [f"{prefix}/100/step-000002", f"{prefix}/100/step-000004"]
    # where each epoch started: the base model, then epoch 1's checkpoint (its manifest hash)
    assert refs[0]["meta"]["start_id"] == "base"
    assert refs[1]["meta"]["start_id"] == refs[0]["manifest_sha256"]
    for epoch, r in enumerate(refs, start=1):
        assert r["epoch"] == epoch
        assert r["meta"]["end_of_epoch"] is True
        assert (r["meta"]["run_id"], r["meta"]["task_id"]) == ("100", "7")
        ref = open_checkpoint(r["uri"])
        assert ref.manifest_sha256 == r["manifest_sha256"]
        d = fetch_checkpoint(CheckpointRef.from_dict(r))
        assert (d / "model" / "config.json").is_file() and (d / "trainer_state.pt").is_file()
    # save_every 1 commits steps 1 (in-epoch), 2 (end), 3 (in-epoch), 4 (end); keep_last 1
    # prunes the in-epoch ones to the newest (3) when 3 is committed: [2, 3, 4] remain
    ckpts = [r for r in chain.committed if r.meta.get("kind") == "checkpoint"]
    assert [(r.step, r.meta["end_of_epoch"]) for r in ckpts] == [(2, True), (3, False), (4, True)]
    assert [r.uri for r in chain.committed if r.meta.get("kind") == "data"] == [f"{prefix}/data"]


@pytest.mark.slow
def test_chain_mlflow_run(chain):
    client = mlflow_client(chain.tracking["uri"])
    run_id = chain.tracking["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    tags = run.data.tags
    assert tags["metaflow.run_id"] == "100" and tags["metaflow.user"] == "tester"
    assert tags["checkpoint.epoch_1"] == chain.e1["checkpoint"]["uri"]
    assert tags["checkpoint.epoch_2"] == chain.e2["checkpoint"]["uri"]
    assert tags["checkpoint.latest"] == chain.e2["checkpoint"]["uri"]
    assert tags["data.uri"] == chain.data["data"]["uri"]
    # training metrics at step = training step 1..4, each exactly once
    for key in ("loss", "reward/mean"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3, 4]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "data/num_train")] == [
        (0, 16.0)]
    # evaluation at step = epoch (0 = the base model), values as the eval tasks returned them
    ev = client.get_metric_history(run_id, "eval/heldout/avg_at_1")
    assert sorted((m.step, m.value) for m in ev) == [(r["epoch"], r["value"])
                                                     for r in chain.results]
    assert sorted(m.step for m in ev) == [0, 1, 2]
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "learning_curves.png", "eval", "data"} <= arts
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/summary.md"]
    children = client.search_runs([chain.tracking["experiment_id"]],
                                  f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(c.info.run_name for c in children) == [
        "eval-heldout-epoch0", "eval-heldout-epoch1", "eval-heldout-epoch2"]
    assert all(c.info.status == "FINISHED" for c in children)
    child_arts = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"samples_preview.json", "samples.parquet"} <= child_arts


@pytest.mark.slow
def test_chain_evaluation_and_registry(chain):
    # 1 benchmark (heldout) x (epoch 0 = base, epochs 1, 2) = 3 items, epoch-major
    assert [(i["epoch"], i["benchmark"]) for i in chain.items] == [
        (0, "heldout"), (1, "heldout"), (2, "heldout")]
    assert chain.items[0]["checkpoint"] is None  # no warm start: the config's base model
    assert [i["checkpoint"] for i in chain.items[1:]] == [chain.e1["checkpoint"],
                                                          chain.e2["checkpoint"]]
    for r in chain.results:
        assert r["metric"] == "eval/heldout/avg_at_1" and r["num_problems"] == 4
        assert 0.0 <= r["value"] <= 1.0
    v = {r["epoch"]: r["value"] for r in chain.results}
    # best: the trained epoch with the highest heldout score (the only benchmark), ties -> later
    best = 2 if v[2] >= v[1] else 1
    s = chain.summary
    assert (s["best_epoch"], s["best_score"], s["best_benchmarks"]) == (best, v[best], ["heldout"])
    best_uri = [chain.e1, chain.e2][best - 1]["checkpoint"]["uri"]
    assert s["best_checkpoint"] == best_uri
    assert s["failures"] == [] and s["pruned"] == []  # keep_epochs: all
    assert s["table"] == (
        "| epoch | heldout (avg_at_1) | macro |\n|---|---|---|\n"
        + "".join(f"| {e} | {v[e]:.4f} | {v[e]:.4f} |\n" for e in (0, 1, 2)))
    client = mlflow_client(chain.tracking["uri"])
    tags = client.get_run(chain.tracking["run_id"]).data.tags
    assert tags["best_epoch"] == str(best) and tags["best_checkpoint"] == best_uri
    assert tags["eval.tasks"] == "3" and tags["eval.failed_tasks"] == "0"
    # registered as prefix-rft-{method} with method prefix_rft; sqlite: the local source is kept
    assert s["registered"]["name"] == "prefix-rft-prefix_rft"
    assert s["registered"]["source"] == best_uri + "/model"
    mv = client.get_model_version_by_alias("prefix-rft-prefix_rft", "best")
    assert mv.source == f"models:/{s['registered']['model_id']}"  # the checkpoint's LoggedModel
    assert mv.run_id == chain.tracking["run_id"]
    assert str(mv.version) == str(s["registered"]["version"]) == "1"
    assert mv.tags["epoch"] == str(best)


@pytest.mark.slow
def test_chain_lineage(chain):
    """Every committed checkpoint is a LoggedModel pointing at its URI; evaluation metrics are
    the models' metrics; the registered aliases point at them; the data files are inputs."""
    import hashlib

    from prefix_rft.io.tracking import load_registered

    client = mlflow_client(chain.tracking["uri"])
    run_id, exp_id = chain.tracking["run_id"], chain.tracking["experiment_id"]
    models = {m.name: m for m in client.search_logged_models([exp_id])
              if m.source_run_id == run_id}
    assert sorted(models) == [f"100-step-00000{i}" for i in (1, 2, 3, 4)]  # all four commits
    pruned = models["100-step-000001"]  # keep_last 1 pruned step 1 when step 3 came
    assert pruned.tags["checkpoint.deleted"] == "true"
    by_epoch = {e["epoch"]: models[f"100-step-00000{2 * e['epoch']}"] for e in (chain.e1, chain.e2)}
    for epoch, m in by_epoch.items():
        ref = [chain.e1, chain.e2][epoch - 1]["checkpoint"]
        assert m.tags["checkpoint.uri"] == ref["uri"]
        assert m.params["manifest_sha256"] == ref["manifest_sha256"]
        assert (m.params["step"], m.params["epoch"]) == (str(ref["step"]), str(epoch))
        assert m.params["config_hash"] == chain.cfg.config_hash()
        value = {r["epoch"]: r["value"] for r in chain.results}[epoch]
        assert {x.key: x.value for x in m.metrics}["eval/heldout/avg_at_1"] == value
    children = {c.info.run_name: c for c in client.search_runs(
        [exp_id], f"tags.mlflow.parentRunId = '{run_id}'")}
    child_inputs = {k: client.get_run(c.info.run_id).inputs for k, c in children.items()}
    assert [i.model_id for i in child_inputs["eval-heldout-epoch1"].model_inputs] == [
        by_epoch[1].model_id]
    assert child_inputs["eval-heldout-epoch0"].model_inputs == []  # the base model
    # registry: best -> the best epoch's model, last -> epoch 2's
    s = chain.summary
    assert s["registered"]["model_id"] == by_epoch[s["best_epoch"]].model_id
    last = client.get_model_version_by_alias("prefix-rft-prefix_rft", "last")
    assert last.source == f"models:/{by_epoch[2].model_id}"
    assert load_registered("models:/prefix-rft-prefix_rft@best",
                           tracking_uri=chain.tracking["uri"]) == Path(s["best_checkpoint"]) / "model"
    # the training and held-out files as dataset inputs: source, digest, context
    inputs = {d.dataset.name: d for d in client.get_run(run_id).inputs.dataset_inputs}
    assert sorted(inputs) == ["heldout", "train"]
    for name, file, context in (("train", "train.parquet", "training"),
                                ("heldout", "test.parquet", "evaluation")):
        path = Path(chain.data["data"]["uri"]) / file
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        d = inputs[name]
        assert d.dataset.digest == sha[:16] and str(path) in d.dataset.source
        tags = {t.key: t.value for t in d.tags}
        assert tags["mlflow.data.context"] == context and tags["sha256"] == sha
    assert '"num_rows": 16' in inputs["train"].dataset.profile


@pytest.mark.slow
def test_chain_end_says_where_to_look(chain):
    t = chain.text
    assert chain.tracking["run_id"] in t
    assert f"MLflow tracking URI: {chain.tracking['uri']}" in t
    assert f"mlflow ui --backend-store-uri {chain.tracking['uri']}" in t
    assert chain.summary["table"].rstrip() in t
    s = chain.summary
    assert (f"best epoch: {s['best_epoch']} (macro {s['best_score']:.4f}) -> "
            f"{s['best_checkpoint']}") in t
    assert "registered model: models:/prefix-rft-prefix_rft@best (version 1)" in t
    assert "WARNING" not in t


# ==================================================================================== train_epoch
def _epoch2(chain, *, start_ref, lineage_prefix, run_id, tracker=None, tracking=None):
    return strain.train_epoch(
        chain.cfg, epoch=2, plan=chain.data["plan"], data_ref=chain.data["data"],
        start_ref=start_ref, warm_start=None, lineage_prefix=lineage_prefix,
        ctx=RunContext(flow_name=FLOW, run_id=run_id, user="tester"), tracker=tracker,
        tracking=tracking, progress=False)


@pytest.mark.slow
def test_train_epoch_resumes_from_its_own_checkpoints_only(chain, tmp_path, monkeypatch):
    prefix = str((tmp_path / "lineage").resolve())  # its own store: the chain's stays intact
    store = open_store(prefix)
    e1 = chain.e1["checkpoint"]
    tracker = tracker_for(chain.tracking)
    run_id = tracker.create_run(EXPERIMENT, "resume-test", {})
    tracking = dict(chain.tracking, run_id=run_id)

    # 1. the task dies right after committing step 3 (epoch 2 = steps 3-4)
    monkeypatch.setenv(FAIL_AT_ENV, "epoch=2,step=3")
    with pytest.raises(RuntimeError, match="injected failure"):
        _epoch2(chain, start_ref=e1, lineage_prefix=prefix, run_id="200", tracker=tracker,
                tracking=tracking)
    left = store.list()
    assert [(r.step, r.epoch, r.meta["end_of_epoch"]) for r in left] == [(3, 2, False)]
    assert left[0].meta["start_id"] == e1["manifest_sha256"]

    # 2. the retry (same arguments) continues from step 3 and trains only step 4
    monkeypatch.delenv(FAIL_AT_ENV)
    out = _epoch2(chain, start_ref=e1, lineage_prefix=prefix, run_id="200", tracker=tracker,
                  tracking=tracking)
    assert out["steps"] == [3, 4]
    assert out["resumed_from"] == f"{prefix}/200/step-000003"
    assert out["checkpoint"]["step"] == 4 and out["checkpoint"]["meta"]["end_of_epoch"]
    # step 3 logged by the failed task, step 4 by the retry: no step twice
    assert sorted(m for m, _ in tracker.metric_history(run_id, "loss")) == [3, 4]
    tags = tracker.run_info(run_id).data.tags
    assert tags["epoch_2.resumed_from"] == f"{prefix}/200/step-000003"

    # 3. once more: the epoch is complete, nothing is trained
    again = _epoch2(chain, start_ref=e1, lineage_prefix=prefix, run_id="200")
    assert again["steps"] == [4, 4]
    assert again["checkpoint"] == out["checkpoint"]
    assert again["resumed_from"] == out["checkpoint"]["uri"]

    # 4. epoch 1 re-trained (`resume train_epoch`): another start checkpoint, another hash ->
    #    the step-3/step-4 checkpoints of the old start are not used; epoch 2 trains from step 2
    redo = store.commit(fetch_checkpoint(CheckpointRef.from_dict(e1)), "300/step-000002",
                        step=2, epoch=1, config_hash=e1["config_hash"],
                        meta=dict(e1["meta"], run_id="300"))
    assert redo.manifest_sha256 != e1["manifest_sha256"]
    fresh = _epoch2(chain, start_ref=redo.to_dict(), lineage_prefix=prefix, run_id="300")
    assert fresh["steps"] == [2, 4]
    assert fresh["resumed_from"] is None
    assert fresh["checkpoint"]["uri"] == f"{prefix}/300/step-000004"
    assert fresh["checkpoint"]["meta"]["start_id"] == redo.manifest_sha256


@pytest.mark.slow  # needs the chain's epoch-1 checkpoint
@pytest.mark.parametrize("victim", ["trainer_state.pt", "model/model.safetensors"])
def test_train_epoch_rejects_a_corrupt_start_checkpoint(chain, tmp_path, victim):
    prefix = str((tmp_path / "lineage").resolve())
    store = open_store(prefix)
    e1 = chain.e1["checkpoint"]
    copy = store.commit(fetch_checkpoint(CheckpointRef.from_dict(e1)), "100/step-000002",
                        step=2, epoch=1, config_hash=e1["config_hash"], meta=e1["meta"])
    flip_byte(Path(copy.uri) / victim)
    with pytest.raises(UserError) as e:
        _epoch2(chain, start_ref=copy.to_dict(), lineage_prefix=prefix, run_id="101")
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {copy.uri}: {victim} sha256 mismatch")
    assert [r.uri for r in store.list()] == [copy.uri]  # nothing of epoch 2 was committed


@pytest.mark.slow
def test_train_epoch_final_checkpoint_model_only(chain, tmp_path):
    """`pipeline.final_checkpoint: model`: the checkpoint that ends training (epoch 2, step 4)
    leaves out the optimizer and scheduler states; the in-epoch one before it (step 3) keeps
    them, so a retried task could still continue from it."""
    from dataclasses import replace

    cfg = replace(chain.cfg, pipeline=replace(chain.cfg.pipeline, final_checkpoint="model"))
    prefix = str((tmp_path / "lineage").resolve())
    out = strain.train_epoch(
        cfg, epoch=2, plan=chain.data["plan"], data_ref=chain.data["data"],
        start_ref=chain.e1["checkpoint"], warm_start=None, lineage_prefix=prefix,
        ctx=RunContext(flow_name=FLOW, run_id="500"), progress=False)
    assert out["steps"] == [2, 4]
    states = {}
    for r in open_store(prefix).list():
        d = fetch_checkpoint(r)
        states[r.step] = (torch.load(d / "trainer_state.pt", weights_only=False),
                          json.loads((d / "state.json").read_text()), d)
    assert sorted(states) == [3, 4]
    full, model_only = states[3][0], states[4][0]
    assert full["model_only"] is False and full["optimizer"]["state"]
    assert full["scheduler"] is not None and states[3][1]["model_only"] is False
    assert model_only["model_only"] is True and states[4][1]["model_only"] is True
    assert model_only["optimizer"] is None and model_only["scheduler"] is None
    assert model_only["state"]["phase"] == "done" and model_only["state"]["global_step"] == 4
    # the same weights file either way; the full state's AdamW moments are 2 float32 values per
    # trainable parameter more than the model-only state holds
    from safetensors.torch import load_file

    weights = [load_file(str(f)) for f in (states[4][2] / "model").glob("*.safetensors")]
    numel = sum(t.numel() for w in weights for t in w.values())
    size = {k: (v[2] / "trainer_state.pt").stat().st_size for k, v in states.items()}
    assert size[3] - size[4] >= 2 * 4 * numel > size[4]


@pytest.mark.slow
def test_train_epoch_from_a_warm_start(chain, tmp_path):
    prefix = str((tmp_path / "lineage").resolve())
    warm = chain.e2["checkpoint"]
    out = strain.train_epoch(
        chain.cfg, epoch=1, plan=chain.data["plan"], data_ref=chain.data["data"], start_ref=None,
        warm_start=warm, lineage_prefix=prefix, ctx=RunContext(flow_name=FLOW, run_id="400"),
        progress=False)
    # the warm start's weights with a fresh optimizer and schedule: a new lineage counts its
    # training steps from 0, so epoch 1 is steps 1-2 again (not 5-6)
    assert out["steps"] == [0, 2]
    assert out["checkpoint"]["uri"] == f"{prefix}/400/step-000002"
    assert out["checkpoint"]["meta"]["start_id"] == "warm:" + warm["manifest_sha256"]
    # the flow's plan_eval then evaluates the warm start as epoch 0
    items = seval.plan_eval(chain.cfg, [out], warm)
    assert [(i["epoch"], i["checkpoint"]) for i in items] == [(0, warm), (1, out["checkpoint"])]


# ==================================================================================== evaluate
def _res(epoch, bench, value, n=1):
    return {"epoch": epoch, "benchmark": bench, "value": value,
            "metric": run_layout.metric_key(bench, n)}


def test_best_epoch_excludes_epoch_0_and_breaks_ties_late():
    results = [_res(0, "a", 1.0), _res(0, "b", 1.0),
               _res(1, "a", 0.25), _res(1, "b", 0.75),
               _res(2, "a", 0.5), _res(2, "b", 0.5)]
    # epoch 0 (1.0) does not count; macro 1 = (0.25 + 0.75) / 2 = 0.5, macro 2 = (0.5 + 0.5) / 2
    # = 0.5: a tie, the later epoch wins
    assert seval.best_epoch(results) == (2, 0.5, ["a", "b"])


def test_best_epoch_highest_macro():
    results = [_res(1, "a", 0.75), _res(1, "b", 0.75), _res(2, "a", 0.5), _res(2, "b", 0.25)]
    # macro 1 = 0.75, macro 2 = (0.5 + 0.25) / 2 = 0.375
    assert seval.best_epoch(results) == (1, 0.75, ["a", "b"])


def test_best_epoch_uses_benchmarks_common_to_all_trained_epochs():
    results = [_res(0, "c", 1.0),  # epoch 0's extra benchmark is irrelevant
               _res(1, "a", 0.25), _res(1, "b", 1.0),
               _res(2, "a", 0.5)]  # epoch 2's b failed
    # common = [a]: macro 1 = 0.25, macro 2 = 0.5 (b's 1.0 for epoch 1 is not used)
    assert seval.best_epoch(results) == (2, 0.5, ["a"])


def test_best_epoch_without_common_benchmark():
    assert seval.best_epoch([_res(1, "a", 0.5), _res(2, "b", 0.5)]) == (None, None, [])
    assert seval.best_epoch([_res(0, "a", 0.5)]) == (None, None, [])
    assert seval.best_epoch([]) == (None, None, [])


def test_markdown_table_with_a_failed_cell():
    results = [_res(1, "a", 0.5), _res(1, "b", 0.25, n=4), _res(2, "a", 0.75)]
    failures = [{"epoch": 2, "benchmark": "b", "error": "boom"}]
    # epoch 1 macro (0.5 + 0.25) / 2 = 0.375; epoch 2 has a failed cell: no macro
    assert seval.markdown_table(results, failures) == (
        "| epoch | a (avg_at_1) | b (avg_at_4) | macro |\n"
        "|---|---|---|---|\n"
        "| 1 | 0.5000 | 0.2500 | 0.3750 |\n"
        "| 2 | 0.7500 | failed | - |\n"
        "\n"
        "Failed evaluation tasks:\n"
        "- epoch 2 b: boom\n")


def test_markdown_table_without_failures():
    assert seval.markdown_table([_res(1, "a", 1 / 3)], []) == (
        "| epoch | a (avg_at_1) | macro |\n|---|---|---|\n| 1 | 0.3333 | 0.3333 |\n")


@pytest.mark.parametrize("eval_base, eval_epochs, expected", [
    # (epoch 0 if eval_base) + (epochs 1, 2 | only 2) cells, x 2 benchmarks, epoch-major
    (True, "all", [0, 0, 1, 1, 2, 2]),  # 3 cells x 2 = 6
    (False, "all", [1, 1, 2, 2]),  # 2 x 2 = 4
    (True, "last", [0, 0, 2, 2]),  # 2 x 2 = 4
    (False, "last", [2, 2]),  # 1 x 2 = 2
])
def test_plan_eval_items(eval_base, eval_epochs, expected):
    cfg = resolve_flow(minimal(pipeline={"eval_base": eval_base, "eval_epochs": eval_epochs,
                                    "benchmarks": ["heldout", "path/to/amc.jsonl"]}))
    done = [{"epoch": 1, "checkpoint": {"uri": "c1"}}, {"epoch": 2, "checkpoint": {"uri": "c2"}}]
    warm = {"uri": "w"}
    items = seval.plan_eval(cfg, done, warm)
    assert [i["epoch"] for i in items] == expected
    assert [i["benchmark"] for i in items] == ["heldout", "amc"] * (len(expected) // 2)
    assert [i["spec"] for i in items] == ["heldout", "path/to/amc.jsonl"] * (len(expected) // 2)
    ckpt = {0: warm, 1: {"uri": "c1"}, 2: {"uri": "c2"}}
    assert all(i["checkpoint"] == ckpt[i["epoch"]] for i in items)


def test_join_eval_keeps_best_and_last(tmp_path):
    cfg = resolve_flow(minimal(**{"pipeline.keep_epochs": "best_and_last"}))
    store = open_store(tmp_path / "ckpts")
    src = tmp_path / "src"
    src.mkdir()
    done = []
    for e in (1, 2, 3):
        (src / "w").write_text(str(e))
        ref = store.commit(src, f"run/step-{2 * e:06d}", step=2 * e, epoch=e, config_hash="h",
                           meta={"kind": "checkpoint", "end_of_epoch": True})
        done.append({"epoch": e, "checkpoint": ref.to_dict()})
    results = [_res(1, "a", 0.75), _res(2, "a", 0.25), _res(3, "a", 0.5)]
    out = seval.join_eval(cfg, results, [], done, lineage_prefix=str(tmp_path / "ckpts"))
    uris = [d["checkpoint"]["uri"] for d in done]
    # best = epoch 1 (0.75 > 0.5 > 0.25), last = epoch 3: only epoch 2 is deleted
    assert (out["best_epoch"], out["best_score"], out["best_checkpoint"]) == (1, 0.75, uris[0])
    assert out["pruned"] == [uris[1]]
    assert [r.uri for r in store.list()] == [uris[0], uris[2]]
    assert out["registered"] is None  # no tracker: nothing to register


def test_benchmark_name_and_metric_key():
    assert seval.benchmark_name("path/to/amc.jsonl") == "amc"
    assert seval.benchmark_name("heldout") == "heldout"
    assert seval.benchmark_name("/data/aime24.parquet") == "aime24"
    assert run_layout.metric_key("aime24", 32) == "eval/aime24/avg_at_32"


# ==================================================================================== common
def test_injected_failure(monkeypatch):
    monkeypatch.delenv(FAIL_AT_ENV, raising=False)
    scommon.injected_failure(2, 3)  # unset: nothing
    monkeypatch.setenv(FAIL_AT_ENV, "epoch=2,step=3")
    scommon.injected_failure(2, 4)
    scommon.injected_failure(1, 3)
    with pytest.raises(RuntimeError, match=r"injected failure .* in epoch 2 after step 3"):
        scommon.injected_failure(2, 3)


@pytest.mark.parametrize("spec", ["epoch2", "epoch=2", "epoch=x,step=3", "step=3",
                                  "epoch=2;step=3"])
def test_injected_failure_bad_spec(monkeypatch, spec):
    monkeypatch.setenv(FAIL_AT_ENV, spec)
    with pytest.raises(UserError) as e:
        scommon.injected_failure(2, 3)
    assert str(e.value) == f"{FAIL_AT_ENV}={spec!r}: expected 'epoch=E,step=S'"


def test_lineage_prefix(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rel = resolve_flow(minimal(**{"pipeline.checkpoint_root": "ckpts/x"}))
    assert scommon.lineage_prefix(rel, "Flow", "7") == f"{tmp_path.resolve()}/ckpts/x/Flow/7"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = resolve_flow(minimal(**{"pipeline.checkpoint_root": "~/ck/"}))
    assert scommon.lineage_prefix(home, "Flow", "7") == f"{tmp_path.resolve()}/home/ck/Flow/7"
    for root in ("s3://b/p/", "s3://b/p"):
        s3 = resolve_flow(minimal(**{"pipeline.checkpoint_root": root}))
        assert scommon.lineage_prefix(s3, "Flow", "7") == "s3://b/p/Flow/7"  # no "//"


def test_run_context_tags():
    ctx = RunContext(flow_name="F", run_id="9", user="u", project=None, branch="b",
                     extra_tags={"x": "1", "metaflow.user": "override"})
    tags = ctx.tags()
    assert tags["metaflow.flow_name"] == "F" and tags["metaflow.run_id"] == "9"
    assert tags["metaflow.branch"] == "b" and "metaflow.project" not in tags  # None dropped
    assert tags["mlflow.user"] == "u" and tags["mlflow.source.type"] == "JOB"
    assert tags["x"] == "1" and tags["metaflow.user"] == "override"  # extra tags win


def test_mark_resumed_and_mark_failed(mlflow_uri):
    from prefix_rft.io.tracking import Tracker

    tracker = Tracker(mlflow_uri)
    run_id = tracker.create_run(EXPERIMENT, "resumed", {})
    tracking = {"uri": mlflow_uri, "run_id": run_id}
    tracker.terminate(run_id, "FAILED")
    scommon.mark_resumed(tracker, tracking, RunContext(run_id="2"))  # not a resume: no-op
    assert tracker.run_info(run_id).info.status == "FAILED"
    scommon.mark_resumed(tracker, tracking, RunContext(run_id="2", origin_run_id="1"))
    run = tracker.run_info(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["metaflow.resumed"] == "true"
    assert run.data.tags["metaflow.latest_run_id"] == "2"
    assert run.data.tags["metaflow.resume.2"] == "origin=1"
    sfinish.mark_failed(None)  # no run yet: nothing to mark
    sfinish.mark_failed(tracking)
    assert tracker.run_info(run_id).info.status == "FAILED"


def test_end_warns_about_failed_evaluations(mlflow_uri):
    from prefix_rft.io.tracking import Tracker

    run_id = Tracker(mlflow_uri).create_run(EXPERIMENT, "end", {})
    tracking = {"uri": mlflow_uri, "run_id": run_id, "experiment": EXPERIMENT,
                "experiment_id": "1"}
    failures = [{"epoch": 1, "benchmark": "b", "error": "x"},
                {"epoch": 2, "benchmark": "b", "error": "y"}]
    text = sfinish.end(tracking, {"table": "| t |\n", "best_epoch": None, "failures": failures,
                                  "registered": None})
    assert text.splitlines()[-2:] == [
        "| t |",
        "WARNING: 2 evaluation task(s) failed; the run finished with the others (see the table "
        "above)"]
    assert "best epoch" not in text and "registered model" not in text
    assert Tracker(mlflow_uri).run_info(run_id).info.status == "FINISHED"


def test_where_to_look_for_a_server():
    text = sfinish.where_to_look({"uri": "http://mlflow:5000/", "run_id": "r1",
                                  "experiment": "e", "experiment_id": "3"})
    assert text.splitlines() == [
        "MLflow tracking URI: http://mlflow:5000/",
        "MLflow run: r1 (experiment 'e', id 3)",
        "open: http://mlflow:5000/#/experiments/3/runs/r1",
    ]


@pytest.mark.parametrize("where", ["kubernetes", "aws-batch"])
def test_start_refuses_local_storage_on_kubernetes_or_batch(where, monkeypatch, tmp_path):
    monkeypatch.setenv("METAFLOW_RUNTIME_ENVIRONMENT", where)  # what Metaflow sets remotely
    cfg = resolve_flow(minimal())
    with pytest.raises(UserError, match=f"key 'tracking.uri': sqlite:///x.db is local to this {where} task"):
        sstart.check_remote_storage(cfg, "sqlite:///x.db")
    with pytest.raises(UserError, match="key 'pipeline.checkpoint_root': runs/pipeline/checkpoints"):
        sstart.check_remote_storage(cfg, "https://mlflow.example.com")
    ok = resolve_flow(minimal(**{"pipeline.checkpoint_root": "s3://bucket/ckpt"}))
    sstart.check_remote_storage(ok, "https://mlflow.example.com")  # passes
    # and start() applies it before creating anything
    with pytest.raises(UserError, match="tracking.uri"):
        sstart.start(minimal(**{"tracking.uri": f"sqlite:///{tmp_path}/m.db"}), RunContext())
    assert not (tmp_path / "m.db").exists()


def test_local_runs_keep_local_storage(monkeypatch):
    monkeypatch.delenv("METAFLOW_RUNTIME_ENVIRONMENT", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # e.g. a notebook in a pod
    assert sstart.remote_platform() is None
    sstart.check_remote_storage(resolve_flow(minimal()), "sqlite:///mlflow.db")  # no error


@pytest.mark.parametrize("env,want", [
    ({"USER": "root"}, "local"),  # a container or CI machine: Metaflow refuses 'root'
    ({}, "local"),  # no user name at all
    ({"USER": "root", "USERNAME": "root", "SUDO_USER": ""}, "local"),
    ({"USER": "ana"}, None),  # Metaflow's own choice stands
    ({"USER": "root", "SUDO_USER": "ana"}, None),
    ({"USER": "root", "METAFLOW_USER": "ci-bot"}, None),
])
def test_metaflow_gets_a_user_name_it_accepts(env, want):
    environ = dict(env)
    assert scommon.ensure_metaflow_user(environ) == want
    if want:
        assert environ["METAFLOW_USER"] == want
    else:
        assert environ == env


def test_use_cpus_sizes_torch_threads_to_the_request():
    import os

    import torch

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        assert scommon.use_cpus(1) == 1 and torch.get_num_threads() == 1
        assert scommon.use_cpus(64) == cores == torch.get_num_threads()  # never above the cores
        assert scommon.use_cpus(2 * cores, processes=2) == cores  # ranks share the request
        assert scommon.use_cpus(1, processes=4) == 1
    finally:
        torch.set_num_threads(before)
