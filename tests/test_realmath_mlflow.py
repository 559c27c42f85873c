"""studies/realmath_mlflow.py: the real-math study's MLflow experiment rebuilt from the text
committed under docs/results/, read back through `prefix_rft.io.tracking.Tracker` and
`prefix_rft.eval.report` as the notebook reads a flow's run.

The expected values are the committed files' own, for the first run `prefix_rft:1` (MLflow run
ba92dd7324864b2b8a0ec369b3566471): its row of realmath_s1_summary.json (held-out 20/123 =
0.1626), its steps file realmath_s1_steps.json (10 training steps; eval/accuracy at steps 5 and
10) and its slim samples realmath_samples/prefix_rft-seed1/flow_<benchmark>/samples.parquet,
whose correct samples are, by benchmark (problems x samples each): aime24 9 of 30 x 32 (the
row's 0.009375 = 9/960), aime25 1 of 30 x 32 (1/960), amc 300 of 83 x 32 (300/2656 = 0.11295),
heldout 20 of 123 x 1, math500 175 of 500 x 1 (0.35). Later sessions add runs beside these:
`test_every_committed_run_rebuilds` checks all of them, the other tests rebuild the first
session's files only. The notebook test executes notebooks/compare_runs.py on the rebuilt file
(about 7 s).
"""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from prefix_rft.errors import UserError
from prefix_rft.eval import report
from prefix_rft.io import run_layout
from tests.scripts import ROOT, load_script

RM = load_script("studies/realmath_mlflow.py")
RS = load_script("studies/realmath_steps.py")

RESULTS = ROOT / "docs" / "results"
S1_SUMMARY = RESULTS / "realmath_s1_summary.json"
S1_STEPS = RESULTS / "realmath_s1_steps.json"
ORIGINAL = "ba92dd7324864b2b8a0ec369b3566471"
CORRECT = {"aime24": (9, 30, 32), "aime25": (1, 30, 32), "amc": (300, 83, 32),
           "heldout": (20, 123, 1), "math500": (175, 500, 1)}  # correct, problems, samples each


def committed():
    """The default inputs: every committed summary, steps file and samples folder."""
    return (RM.rt.expand([], "--summary", default=RM.SUMMARIES),
            RM.rt.expand([], "--steps", default=RM.STEPS),
            RM.rt.expand([], "--samples", default=RM.SAMPLES, dirs=True))


def test_every_committed_run_rebuilds():
    """Every run committed so far is read and checked (its samples against its row), as
    `rebuild` does before writing; later sessions' runs included."""
    summaries, steps, samples = committed()
    assert S1_SUMMARY in summaries and S1_STEPS in steps
    runs, _ = RM.plan(summaries, steps, samples)
    assert ORIGINAL in [r["row"]["mlflow_run_id"] for r in runs]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """(tracker, the first run's record, the folder) of an experiment rebuilt from the first
    session's committed files (so it holds that one run whatever later sessions add)."""
    from prefix_rft.io.tracking import Tracker

    out = tmp_path_factory.mktemp("realmath-mlflow")
    done, notes = RM.rebuild(out, [S1_SUMMARY], [S1_STEPS], [RESULTS / "realmath_samples"])
    assert [d["original_run_id"] for d in done] == [ORIGINAL] and notes == []
    tracker = Tracker(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = tracker.pipeline_runs(RM.EXPERIMENT)
    assert run["tags"][run_layout.ORIGINAL_RUN_ID_TAG] == ORIGINAL
    return tracker, run, out


def test_the_first_run_is_a_flow_run_with_its_original_id(rebuilt):
    tracker, run, _ = rebuilt
    assert run["run_id"] != ORIGINAL  # MLflow gives the copy a new id
    assert run["name"] == "prefix_rft-1796664078387433"  # <method>-<the Metaflow run it began as>
    assert run["status"] == "FINISHED"
    assert run["params"]["method"] == "prefix_rft" and run["params"]["seed"] == "1"
    assert run["params"]["rl.steps"] == "10" and run["params"]["data.train"] == "realmath:train"
    tags = run["tags"]
    assert tags["method"] == "prefix_rft" and tags["best_epoch"] == "1"
    assert tags["metaflow.latest_run_id"] == "1796664595700331"  # resumed once (the row)
    assert tags["rebuilt_from"].startswith(
        "docs/results/realmath_s1_summary.json, docs/results/realmath_s1_steps.json, "
        "docs/results/realmath_samples/prefix_rft-seed1 at commit ")
    assert ORIGINAL in tags["mlflow.note.content"] and "no completions" in tags["mlflow.note.content"]
    # the row's date is the end; minus its 878 s of flow, the start
    assert run["end_time"] - run["start_time"] == 878_000
    (row,) = report.runs_overview([run])
    assert row["original_run_id"] == ORIGINAL and row["best_epoch"] == 1
    # the flow's best_macro: the mean of the five final scores (fractions above)
    assert row["best_macro"] == pytest.approx((9 / 960 + 1 / 960 + 300 / 2656 + 20 / 123 + 0.35) / 5)


def test_final_scores_are_the_rows_as_the_flow_logs_them(rebuilt):
    _, run, _ = rebuilt
    m = run["metrics"]
    assert m["eval/heldout/avg_at_1"] == 20 / 123
    assert m["eval/heldout/ci_low"] == pytest.approx(13 / 123)  # the row's CI: 0.1057
    assert m["eval/heldout/ci_high"] == pytest.approx(28 / 123)  # 0.2276
    assert m["eval/aime24/avg_at_32"] == 9 / 960 and m["eval/math500/avg_at_1"] == 0.35


def test_training_metrics_are_the_steps_file_at_their_steps(rebuilt):
    tracker, run, _ = rebuilt
    data = json.loads(S1_STEPS.read_text())
    assert tracker.metric_history(run["run_id"], "reward/mean") == list(
        zip(range(1, 11), data["steps"]["reward/mean"]))
    assert tracker.metric_history(run["run_id"], "reward/mean")[0] == (1, 0.18359375)  # 47/256
    assert tracker.metric_history(run["run_id"], "eval/accuracy") == [(5, 15 / 123), (10, 20 / 123)]
    curves = report.training_histories(tracker, [run])[run["name"]]
    assert sorted(curves) == sorted(run_layout.TRAINING_CURVES)  # all four panels of the notebook
    assert all(len(h) == 10 for h in curves.values())
    # studies/realmath_steps.py writes back the same per-step record from the rebuilt file
    again = RS.run_steps(tracker, run["run_id"])
    assert again["steps"] == data["steps"] and again["eval_accuracy_steps"] == [5, 10]
    assert (again["metaflow_run_id"], again["resumed_from"]) == (
        data["metaflow_run_id"], data["resumed_from"])


def test_one_evaluation_child_run_per_benchmark_with_its_samples(rebuilt, tmp_path):
    import pyarrow.parquet as pq

    tracker, run, _ = rebuilt
    children = tracker.eval_runs(run["run_id"])
    assert sorted(c["name"] for c in children) == [f"eval-{b}-epoch1" for b in sorted(CORRECT)]
    for c in children:
        correct, problems, n = CORRECT[c["benchmark"]]
        assert (c["epoch"], c["shard"], c["status"]) == (1, "0/1", "FINISHED")
        assert c["params"]["protocol.n"] == str(n)
        assert c["metrics"]["num_problems"] == problems
        assert c["metrics"]["avg_at_n"] == pytest.approx(correct / (problems * n))
        path = tracker.download_artifact(c["run_id"], "samples.parquet", tmp_path / c["run_id"])
        rows = pq.read_table(path).to_pylist()
        assert len(rows) == problems * n and sum(r["correct"] for r in rows) == correct
    # the notebook's reading: per-problem accuracies, samples per problem, the last epoch
    res = report.load_pipeline_run(tracker, run, samples=True)
    assert (res.method, res.epoch, res.incomplete) == ("prefix_rft", 1, [])
    assert res.n == {b: n for b, (_, _, n) in CORRECT.items()}
    assert {b: (round(sum(acc.values()) * res.n[b]), len(acc))
            for b, acc in res.per_problem.items()} == {b: c[:2] for b, c in CORRECT.items()}
    with pytest.raises(UserError, match=r"the samples of prefix_rft-1796664078387433 "
                       r"carry no completion text"):
        report.sample_rows([res])


def test_the_command_line_refuses_to_overwrite(rebuilt, capsys):
    _, _, out = rebuilt
    assert RM.main(["rebuild", "--out", str(out)]) == 2
    assert "already there: rebuild into an empty folder, or pass --replace" in capsys.readouterr().err


def test_a_run_in_two_summaries_counts_once_and_samples_must_match_the_row(tmp_path):
    _, steps, samples = committed()
    runs, notes = RM.plan([S1_SUMMARY, S1_SUMMARY], steps, samples)
    assert [r["row"]["mlflow_run_id"] for r in runs] == [ORIGINAL] and notes == []
    assert [c["benchmark"] for c in runs[0]["cells"]] == sorted(CORRECT)
    # another run's row beside these samples: refused before anything is written
    rows = json.loads(S1_SUMMARY.read_text())
    rows[0]["scores"]["heldout"]["1"]["value"] = 21 / 123
    bad = tmp_path / "bad_summary.json"
    bad.write_text(json.dumps(rows))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"flow_heldout/samples.parquet: avg_at_1 = "
                       r"0\.1626.* over 123 problems, but run ba92.*'s row says avg_at_1 = "
                       r"0\.1707.*not this run's samples"):
        RM.rebuild(out, [bad], steps, samples)
    assert not out.exists()
    # a run without its steps file or samples folder is rebuilt without them, with notes
    lone = tmp_path / "samples"
    lone.mkdir()
    shutil.copytree(RESULTS / "realmath_samples" / "prefix_rft-seed1", lone / "x")
    (lone / "x" / "run.json").write_text(json.dumps({"mlflow_run_id": "other"}))
    runs, notes = RM.plan([S1_SUMMARY], [], [lone])
    assert runs[0]["hist"] is None and runs[0]["cells"] == []
    assert notes == [f"run {ORIGINAL}: no steps file, so no training metrics",
                     f"run {ORIGINAL}: no samples folder, so no evaluation child runs"]


def test_the_notebook_renders_the_rebuilt_run(rebuilt):
    """notebooks/compare_runs.py executed (as tests/test_notebook.py does) on the rebuilt file
    with the study's parameters: every table and figure of the one run renders; the paired
    differences say that the baseline sft_then_rft has no run, the sample completions that
    the slim samples carry none. About 7 s on 2 cores."""
    from nbclient import NotebookClient

    from tests.test_notebook import NOTEBOOK, body_rows, inject_parameters, read_notebook, tagged

    _, run, out = rebuilt
    nb = inject_parameters(read_notebook(), tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
                           experiment="prefix-rft-realmath", baseline="sft_then_rft", n_boot=500)
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    errors = {c.source.splitlines()[0]: o["evalue"] for c in code for o in c.outputs
              if o.output_type == "error"}
    assert list(errors.values()) == [
        f"no run 'sft_then_rft' among {run['name']} (give a run id, run name or method)",
        f"no completions to show: the samples of {run['name']} carry no completion text (slim "
        "copies with only benchmark, problem_id and correct, as in runs rebuilt from "
        "docs/results)"]
    rows = [body_rows(o["data"]["text/html"]) for c in tagged(nb, "table")
            if c.source.splitlines()[0] not in errors
            for o in c.outputs if "text/html" in o.get("data", {})]
    # runs, runs compared, evaluation (5 benchmarks + macro), methods over runs (the same)
    assert rows == [1, 1, 6, 6]
    listing = next(o["data"]["text/html"] for o in tagged(nb, "table")[0].outputs
                   if "text/html" in o.get("data", {}))
    assert ORIGINAL in listing and run["run_id"] in listing
    for c in tagged(nb, "figure"):  # the training curves and the evaluation bars
        png = [o["data"]["image/png"] for o in c.outputs if "image/png" in o.get("data", {})]
        assert png and len(base64.b64decode(png[-1])) > 5000, f"no figure in cell:\n{c.source}"
