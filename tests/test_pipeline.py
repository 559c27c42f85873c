"""The Metaflow pipeline end to end: `metaflow.Runner` + the Client API against a real MLflow
server and a real moto S3 server (both started by infra/local/servers.py for the session).

A tiny random-weight model (SmolLM2's tokenizer) keeps a whole run at ~45 s on 2 CPU cores; the
happy-path run (conftest.py's session-scoped `happy_flow`, tests/flow_runs.py) is shared by the
tests that only read it or build on it (resume plan_eval, warm start) and by the notebook test.
"""

from __future__ import annotations

import pytest

from tests import pipeline_configs
from tests.flow_runs import flow_env, namespace, run_flow, tiny_config  # sets Metaflow's datastore

pytestmark = pytest.mark.slow
STEPS_TOTAL = pipeline_configs.STEPS_TOTAL


def mlflow_client(servers):
    from mlflow import MlflowClient

    return MlflowClient(servers.mlflow_uri)


def parent_run(client, run):
    namespace(None)
    return client.get_run(run["start"].task.data.tracking["run_id"])


@pytest.fixture(scope="module")
def happy(happy_flow):
    """The session's shared full run (conftest.py: 2 epochs, base + 2 epochs evaluated)."""
    return happy_flow


def test_happy_path_two_epochs(happy, local_servers):
    run, out = happy["run"], happy["out"]
    assert happy["status"] == "successful", out[-3000:]
    namespace(None)
    epochs = list(run["train_epoch"])
    assert len(epochs) == 2
    assert sorted(t.data.trained_epoch for t in epochs) == [1, 2]
    # both epoch checkpoints are committed, loadable and verified
    from prefix_rft.io.store import fetch_checkpoint, open_checkpoint

    refs = sorted((t.data.checkpoint for t in epochs), key=lambda r: r["step"])
    assert [r["step"] for r in refs] == [2, 4]
    for r in refs:
        ref = open_checkpoint(r["uri"])
        assert ref.manifest_sha256 == r["manifest_sha256"]
        d = fetch_checkpoint(ref)
        assert (d / "model" / "config.json").exists() and (d / "trainer_state.pt").exists()
    # the MLflow parent run: tags, params, metric histories
    client = mlflow_client(local_servers)
    p = parent_run(client, run)
    tags = p.data.tags
    assert tags["metaflow.flow_name"] == "PrefixRFTFlow"
    assert tags["metaflow.run_id"] == run.id
    assert tags["metaflow.user"] == "tester"
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags["checkpoint.epoch_1"] == refs[0]["uri"]
    assert tags["checkpoint.epoch_2"] == refs[1]["uri"]
    assert p.info.status == "FINISHED"
    assert p.data.params["rl.steps"] == str(STEPS_TOTAL)
    assert p.data.params["method"] == "prefix_rft"
    hist = client.get_metric_history(p.info.run_id, "reward/mean")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4]
    assert len(client.get_metric_history(p.info.run_id, "loss")) == STEPS_TOTAL
    ev = client.get_metric_history(p.info.run_id, "eval/heldout/avg_at_1")
    assert sorted(m.step for m in ev) == [0, 1, 2]
    assert all(0.0 <= m.value <= 1.0 for m in ev)
    assert any(k.startswith("system/") for k in p.data.metrics), sorted(p.data.metrics)
    arts = {a.path for a in client.list_artifacts(p.info.run_id)}
    assert {"config.yaml", "learning_curves.png"} <= arts
    # nested child runs, one per (epoch, benchmark), with the sample table + per-sample parquet
    children = client.search_runs([p.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{p.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == [
        "eval-heldout-epoch0", "eval-heldout-epoch1", "eval-heldout-epoch2"]
    child_arts = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"samples_preview.json", "samples.parquet"} <= child_arts
    # the best epoch's checkpoint is registered with the alias 'best'
    best = int(tags["best_epoch"])
    mv = client.get_model_version_by_alias("prefix-rft-prefix_rft", "best")
    assert tags["best_checkpoint"] == refs[best - 1]["uri"]
    assert mv.run_id == p.info.run_id
    # local checkpoints + a tracking server: the registered version is the best checkpoint's
    # LoggedModel, which holds a copy of the weights (this machine's disk is not shared)
    summary = run["join_eval"].task.data.eval_summary
    model_id = summary["registered"]["model_id"]
    assert mv.source == f"models:/{model_id}"
    model = client.get_logged_model(model_id)
    assert model.tags["checkpoint.uri"] == refs[best - 1]["uri"] and model.tags["weights"] == "copied"
    files = {a.path for a in client.list_logged_model_artifacts(model_id, "model")}
    assert {"model/model.safetensors", "model/config.json"} <= files
    # the end step says where to look
    assert p.info.run_id in out and local_servers.mlflow_uri in out


def test_resume_plan_eval_reruns_only_evaluation(happy, local_servers):
    origin = happy["run"]
    run, status, out = run_flow(happy["cfg"]["path"], flow_env(local_servers, happy["root"]),
                                happy["root"], resume="plan_eval", origin=origin.id)
    assert status == "successful", out[-3000:]
    namespace(None)
    # training is cloned (same checkpoints), evaluation ran again
    old = sorted(t.data.checkpoint["uri"] for t in origin["train_epoch"])
    new = sorted(t.data.checkpoint["uri"] for t in run["train_epoch"])
    assert new == old
    assert all(t.origin_pathspec for t in run["train_epoch"])
    assert not any(t.origin_pathspec for t in run["eval_task"])
    client = mlflow_client(local_servers)
    p = parent_run(client, run)
    assert p.info.run_id == parent_run(client, origin).info.run_id  # same MLflow run
    assert p.data.tags["metaflow.resumed"] == "true"
    assert p.data.tags[f"metaflow.resume.{run.id}"] == f"origin={origin.id}"
    assert p.info.status == "FINISHED"
    ev = client.get_metric_history(p.info.run_id, "eval/heldout/avg_at_1")
    assert len(ev) == 6  # 3 epochs evaluated twice
    assert len(client.get_metric_history(p.info.run_id, "loss")) == STEPS_TOTAL  # not retrained


def test_failure_in_epoch_two_then_resume(local_servers, smollm2_dir, tmp_path):
    cfg = tiny_config(smollm2_dir, tmp_path, **{"pipeline.train_retries": 0,
                                                "pipeline.eval_base": False,
                                                "pipeline.eval_epochs": "last"})
    env = flow_env(local_servers, tmp_path)
    run, status, out = run_flow(cfg["path"], {**env, "PREFIX_RFT_FAIL_AT": "epoch=2,step=3"}, tmp_path)
    assert status == "failed"
    assert "injected failure" in out
    client = mlflow_client(local_servers)
    p = parent_run(client, run)
    assert p.info.status == "FAILED"  # the exit hook
    from prefix_rft.io.store import open_store

    committed = open_store(cfg["data"]["pipeline"]["checkpoint_root"]).list()
    # epoch 1's end (step 2) and epoch 2's in-epoch checkpoint (step 3) are committed
    assert sorted(r.step for r in committed if r.meta.get("kind") == "checkpoint") == [2, 3]

    run2, status2, out2 = run_flow(cfg["path"], env, tmp_path, origin=run.id)
    assert status2 == "successful", out2[-3000:]
    namespace(None)
    tasks = {t.data.trained_epoch: t for t in run2["train_epoch"]}
    assert tasks[1].origin_pathspec is not None  # epoch 1 cloned
    assert tasks[2].origin_pathspec is None  # epoch 2 re-ran ...
    resumed = tasks[2].data.epoch_result
    assert resumed["steps"] == [3, 4]  # ... from its last committed checkpoint (step 3)
    assert resumed["resumed_from"].endswith(f"{run.id}/step-000003")
    p2 = parent_run(client, run2)
    assert p2.info.run_id == p.info.run_id  # the same MLflow run continues
    assert p2.data.tags["metaflow.resumed"] == "true"
    assert p2.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(p.info.run_id, "loss"))
    assert steps == [1, 2, 3, 4]  # no step trained twice


def test_warm_start_from_checkpoint_uri(happy, local_servers, tmp_path):
    namespace(None)
    ckpt = max((t.data.checkpoint for t in happy["run"]["train_epoch"]), key=lambda r: r["step"])
    cfg = tiny_config(happy["cfg"]["data"]["model"]["name_or_path"], tmp_path,
                      **{"pipeline.epochs": 1, "rl.steps": 2, "pipeline.eval_base": True,
                         "rollout.prefix_schedule.total_steps": 2})
    run, status, out = run_flow(cfg["path"], flow_env(local_servers, tmp_path), tmp_path,
                                warm_start=ckpt["uri"])
    assert status == "successful", out[-3000:]
    namespace(None)
    assert run["start"].task.data.warm_start_ref["uri"] == ckpt["uri"]
    assert run["start"].task.data.lineage == run.id  # a new lineage
    client = mlflow_client(local_servers)
    p = parent_run(client, run)
    assert p.data.tags["warm_start.uri"] == ckpt["uri"]
    assert p.info.run_id != parent_run(client, happy["run"]).info.run_id
    # epoch 0 of the new lineage is the warm-start checkpoint: same score as the origin's epoch 2
    origin = parent_run(client, happy["run"])
    old = {m.step: m.value for m in client.get_metric_history(origin.info.run_id,
                                                               "eval/heldout/avg_at_1")}
    new = {m.step: m.value for m in client.get_metric_history(p.info.run_id, "eval/heldout/avg_at_1")}
    assert new[0] == old[2]


@pytest.mark.parametrize("task_per, epochs, tasks", [("benchmark", 2, 4), ("checkpoint", 1, 2)])
def test_s3_checkpoints_and_a_failing_eval_task(local_servers, s3_env, smollm2_dir, tmp_path,
                                                task_per, epochs, tasks):
    """A broken benchmark file fails its cells and nothing else, whether each benchmark has its
    own eval tasks (they fail and are caught) or one task per checkpoint evaluates both (the
    broken one is a failure row, heldout is scored by the same task). Only the last epoch is
    evaluated; with two epochs, the second starts from the first's checkpoint on S3."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "1+1?", "answer": "2"}\nnot json\n')
    prefix = f"s3://{local_servers.bucket}/ckpt-{tmp_path.name}"
    steps = 2 * epochs
    cfg = tiny_config(smollm2_dir, tmp_path, **{
        "pipeline.checkpoint_root": prefix, "pipeline.eval_base": False,
        "pipeline.epochs": epochs, "rl.steps": steps, "rollout.prefix_schedule.total_steps": steps,
        "pipeline.eval_epochs": "last",
        "pipeline.benchmarks": ["heldout", str(broken)], "pipeline.eval_shards": 2,
        "pipeline.eval_task_per": task_per})
    run, status, out = run_flow(cfg["path"], flow_env(local_servers, tmp_path), tmp_path)
    assert status == "successful", out[-3000:]
    namespace(None)
    refs = sorted((t.data.checkpoint for t in run["train_epoch"]), key=lambda r: r["step"])
    assert [r["step"] for r in refs] == list(range(2, steps + 1, 2))
    assert all(r["uri"].startswith(prefix + "/") for r in refs)
    from prefix_rft.io.store import fetch_checkpoint, open_checkpoint

    for r in refs:
        assert (fetch_checkpoint(open_checkpoint(r["uri"])) / "trainer_state.pt").exists()
    if epochs == 2:
        second = next(t for t in run["train_epoch"] if t.data.trained_epoch == 2)
        assert second.data.epoch_result["steps"] == [2, 4]  # went on from epoch 1's S3 checkpoint
    # the last epoch x 2 benchmarks x 2 shards = 4 eval tasks (per checkpoint: 2 shards); the
    # broken benchmark's 2 cells failed; heldout's shards (2 + 2 of its 4 problems) were merged
    assert len(list(run["eval_task"])) == tasks
    summary = run["join_eval"].task.data.eval_summary
    assert sorted((f["epoch"], f["benchmark"]) for f in summary["failures"]) == [
        (epochs, "broken"), (epochs, "broken")]
    assert "broken.jsonl" in summary["failures"][0]["error"]
    assert [r["epoch"] for r in summary["results"]] == [epochs]
    assert all(r["num_problems"] == 4 for r in summary["results"])
    client = mlflow_client(local_servers)
    p = parent_run(client, run)
    assert p.info.status == "FINISHED"
    assert p.data.tags["eval.failed_tasks"] == "2"
    assert "2 evaluation task(s) failed" in out
    merged = {m.step: m.value for m in client.get_metric_history(p.info.run_id, "eval/heldout/avg_at_1")}
    assert merged == {r["epoch"]: r["value"] for r in summary["results"]}
    reg = summary["registered"]
    mv = client.get_model_version(reg["name"], reg["version"])
    assert mv.source == f"models:/{reg['model_id']}"  # S3 checkpoints: pointed at, not copied
    model = client.get_logged_model(reg["model_id"])
    assert model.tags["checkpoint.uri"] == summary["best_checkpoint"]
    assert model.tags["checkpoint.uri"].startswith(prefix + "/")
    assert {a.path for a in client.list_logged_model_artifacts(reg["model_id"])} == {
        "MLmodel", "checkpoint.json"}


def test_invalid_config_fails_in_start(local_servers, smollm2_dir, tmp_path):
    cfg = tiny_config(smollm2_dir, tmp_path, **{"rl.optim.lr_typo": 1e-6})
    run, status, out = run_flow(cfg["path"], flow_env(local_servers, tmp_path), tmp_path)
    assert status == "failed"
    assert "rl.optim.lr_typo" in out
    namespace(None)
    assert [s.id for s in run] == ["start"]  # nothing after start ran


def test_unreachable_mlflow_fails_fast_naming_the_uri(local_servers, smollm2_dir, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = tiny_config(smollm2_dir, tmp_path)
    run, status, out = run_flow(cfg["path"], flow_env(local_servers, tmp_path,
                                                      MLFLOW_TRACKING_URI=dead), tmp_path)
    assert status == "failed"
    assert f"MLflow tracking server {dead} is unreachable" in out
