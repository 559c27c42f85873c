"""`prefix_rft.io.run_layout`: the names pinned to the strings users see in MLflow, and one pipeline
run written by the real step functions (start, filter_data, eval_task with a sharded cell,
join_eval) into a sqlite store and read back through `Tracker` and `prefix_rft.eval.report` with the
layout's names, so a name changed on one side only fails here."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from prefix_rft.io import run_layout as L


def test_names_are_the_strings_in_mlflow():
    assert L.PARENT_TAG == "mlflow.parentRunId"
    assert L.metric_key("aime24", 32) == "eval/aime24/avg_at_32"
    assert L.eval_metric("amc", "ci_low") == "eval/amc/ci_low"
    assert L.data_metric("num_train") == "data/num_train"
    assert L.eval_run_name("heldout", 2) == "eval-heldout-epoch2"
    assert L.eval_run_name("amc", 0, 1, 3) == "eval-amc-epoch0-shard1of3"
    assert L.shard_value(1, 3) == "1/3" and L.shard_count("1/3") == 3
    assert L.shard_count(L.UNSHARDED) == 1
    assert L.protocol_params({"n": 4, "top_p": 0.95}) == {"protocol.n": 4, "protocol.top_p": 0.95}
    assert L.metric_stat("eval/synthetic_add/avg_at_4") == "avg_at_4"
    assert L.registered_version_tags(2, 0.5, ["amc", "aime24"]) == {
        "epoch": "2", "macro_score": "0.500000", "benchmarks": "amc,aime24"}
    assert L.checkpoint_tag(2) == "checkpoint.epoch_2"
    assert L.resumed_from_tag(2) == "epoch_2.resumed_from"
    assert (L.BEST_EPOCH_TAG, L.BEST_MACRO_METRIC, L.BEST_ALIAS) == (
        "best_epoch", "eval/best_macro", "best")
    assert L.TRAINING_CURVES == ("reward/mean", "demo/nll", "loss", "prefix/advantage")


def test_imports_nothing_of_mlflow():
    code = ("import sys, prefix_rft.io.run_layout; "
            "sys.exit(any(m.split('.')[0] == 'mlflow' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture(scope="module")
def written(smollm2_dir, tmp_path_factory):
    """A pipeline run as the steps log it, without training: the base model (tiny, random
    weights) evaluated on the held-out set as epoch 0 and again as "epoch 1", each cell in two
    shards."""
    from steps import data as sdata
    from steps import evaluate as seval
    from steps import start as sstart
    from steps.common import RunContext, config_from_dict, tracker_for
    from tests import pipeline_configs

    root = tmp_path_factory.mktemp("layout")
    data = pipeline_configs.tiny_config(smollm2_dir, root, experiment="layout", **{
        "tracking.uri": f"sqlite:///{root}/mlflow.db", "tracking.system_metrics": False,
        "tracking.registered_model": None, "pipeline.eval_shards": 2})
    m = sstart.start(data, RunContext(run_id="7", user="tester"))
    cfg, tracking = config_from_dict(m["config"]), m["tracking"]
    tracker = tracker_for(tracking)
    d = sdata.filter_data(cfg, lineage_prefix=m["lineage_prefix"], tracker=tracker,
                          tracking=tracking)
    items = seval.plan_eval(cfg, [], None)  # epoch 0: the base model, 2 shards
    items += [it | {"epoch": 1} for it in items]
    results = [seval.eval_task(cfg, it, data_ref=d["data"], tracker=tracker, tracking=tracking,
                               n_boot=50) for it in items]
    summary = seval.join_eval(cfg, results, [], [], lineage_prefix=m["lineage_prefix"],
                              tracker=tracker, tracking=tracking)
    return {"cfg": cfg, "tracking": tracking, "tracker": tracker, "data": d, "items": items,
            "summary": summary}


@pytest.mark.slow
def test_parent_run_round_trip(written):
    from prefix_rft.eval import report

    t, tracking, s = written["tracker"], written["tracking"], written["summary"]
    (run,) = t.pipeline_runs(tracking["experiment"])  # the children are not pipeline runs
    assert run["run_id"] == tracking["run_id"]
    assert run["tags"][L.METHOD_TAG] == "prefix_rft"
    assert run["tags"][L.DATA_URI_TAG] == written["data"]["data"]["uri"]
    # eval.tasks counts cells, not shards: epochs 0 and 1
    assert run["tags"][L.EVAL_TASKS_TAG] == "2" and run["tags"][L.EVAL_FAILED_TASKS_TAG] == "0"
    assert run["metrics"][L.data_metric("num_test")] == 4
    assert s["best_epoch"] == 1
    (row,) = report.runs_overview([run])
    assert (row["method"], row["best_epoch"], row["best_macro"]) == ("prefix_rft", 1,
                                                                     s["best_score"])
    # the merged cells reach the parent at step = epoch, under the key eval_task reported
    n = written["cfg"].eval.n_samples
    key = L.metric_key("heldout", n)
    assert {r["metric"] for r in s["results"]} == {key}
    assert sorted(t.metric_history(run["run_id"], key)) == sorted(
        (r["epoch"], r["value"]) for r in s["results"])
    arts = {a.path for a in t.client.list_artifacts(run["run_id"])}
    assert {L.CONFIG_ARTIFACT, L.LEARNING_CURVES_ARTIFACT, "eval", "data"} <= arts
    assert [a.path for a in t.client.list_artifacts(run["run_id"], "eval")] == [
        L.EVAL_TABLE_ARTIFACT]


@pytest.mark.slow
def test_child_runs_round_trip(written):
    from prefix_rft.eval import report
    from prefix_rft.eval.protocol import SAMPLES_FILE

    t, run_id = written["tracker"], written["tracking"]["run_id"]
    evals = t.eval_runs(run_id)
    assert sorted((e["epoch"], e["benchmark"], e["shard"]) for e in evals) == [
        (e, "heldout", L.shard_value(k, 2)) for e in (0, 1) for k in (0, 1)]
    assert sorted(e["name"] for e in evals) == sorted(
        L.eval_run_name("heldout", e, k, 2) for e in (0, 1) for k in (0, 1))
    n = written["cfg"].eval.n_samples
    for e in evals:
        assert e["params"][L.protocol_param("n")] == str(n)
        assert e["params"][L.EPOCH] == str(e["epoch"]) and e["tags"][L.ENGINE] == "hf"
        assert e["tags"][L.PARENT_TAG] == run_id
    assert {L.SAMPLES_PREVIEW_ARTIFACT, SAMPLES_FILE} <= {
        a.path for a in t.client.list_artifacts(evals[0]["run_id"])}

    # report: both shards merged back into the 4 held-out problems, n from the protocol param
    s = written["summary"]
    for which, epoch in (("best", s["best_epoch"]), ("last", 1), (0, 0)):
        res = report.load_pipeline_run(t, run_id, epoch=which)
        assert (res.epoch, res.method, res.incomplete) == (epoch, "prefix_rft", [])
        assert res.n == {"heldout": n} and len(res.per_problem["heldout"]) == 4
        value = next(r["value"] for r in s["results"] if r["epoch"] == epoch)
        got = res.per_problem["heldout"].values()
        assert sum(got) / len(got) == pytest.approx(value)


def test_trainer_writes_every_curve_the_readers_plot(smol_tokenizer):
    """The writer side of the training curves: one Prefix-RFT step of the tiny model records
    every metric `run_layout.TRAINING_CURVES` names (report and notebook plot them by name)."""
    from tests.test_trainer import _cfg, _trainer

    tr = _trainer(_cfg(rl={"steps": 1}), smol_tokenizer)
    try:
        metrics = tr.rl_step()
    finally:
        tr.close()
    missing = [name for name in L.TRAINING_CURVES if name not in metrics]
    assert missing == []
    assert all(math.isfinite(metrics[name]) for name in L.TRAINING_CURVES)
