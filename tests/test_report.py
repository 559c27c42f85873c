"""`prefix_rft.eval.report`'s pipeline-run half (what notebooks/compare_runs.py shows): locating the
tracking URI, the run overview, choosing the evaluation of a run (epoch, re-runs, shards), the
evaluation and paired tables, sample completions and the training-curve figure. Plain data in,
numbers worked out by hand; MLflow is replaced by a small fake tracker (the real one is
exercised by tests/test_tracking.py and the notebook test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefix_rft.errors import UserError
from prefix_rft.eval import protocol as BE
from prefix_rft.eval import report
from prefix_rft.eval.metrics import bootstrap_ci
from prefix_rft.eval.report import RunResults


def rec(run_id, name, *, method="sft", status="FINISHED", start=0, params=None, tags=None,
        metrics=None):
    """A run as `Tracker.pipeline_runs` returns it."""
    return {"run_id": run_id, "name": name, "status": status, "start_time": start,
            "end_time": None, "experiment_id": "1",
            "params": {"method": method} | (params or {}), "tags": tags or {},
            "metrics": metrics or {}}


def child(run_id, epoch, bench, shard="0/1", start=0, n=2):
    """An evaluation child run as `Tracker.eval_runs` returns it."""
    return rec(run_id, f"eval-{bench}-epoch{epoch}", start=start,
               params={"protocol.n": str(n)}) | {"epoch": epoch, "benchmark": bench, "shard": shard}


# ------------------------------------------------------------------------ locate_tracking_uri
def test_locate_tracking_uri_finds_a_relative_sqlite_file_under_the_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "mlflow.db").write_bytes(b"")
    roots = [tmp_path / "repo" / "notebooks", tmp_path / "repo"]
    want = f"sqlite:///{(tmp_path / 'repo' / 'mlflow.db').resolve()}"
    assert report.locate_tracking_uri("sqlite:///mlflow.db", roots) == want
    assert report.locate_tracking_uri("", roots) == want  # the default: what `make demo` writes
    assert report.locate_tracking_uri(want, []) == want  # absolute
    assert report.locate_tracking_uri("http://mlflow:5000", roots) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert report.locate_tracking_uri("", roots) == "http://from-env:5000"


def test_locate_tracking_uri_refuses_a_missing_sqlite_file(tmp_path):
    # MLflow would create an empty database there and report an empty experiment
    with pytest.raises(UserError, match=r"no MLflow database at .*a/mlflow.db or .*b/mlflow.db"):
        report.locate_tracking_uri("sqlite:///mlflow.db", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a" / "mlflow.db").exists()


# ------------------------------------------------------------------------ the run overview
def test_run_labels_disambiguate_repeated_names():
    runs = [rec("aaaaaaaa11", "sft-1"), rec("bbbbbbbb22", "x"), rec("cccccccc33", "x"),
            rec("dddddddd44", None)]
    assert report.run_labels(runs) == ["sft-1", "x (bbbbbbbb)", "x (cccccccc)", "dddddddd"]


def test_runs_overview_shows_method_status_best_and_the_params_some_run_has():
    runs = [rec("r2", "prefix_rft-2", method="prefix_rft", status="RUNNING", start=86_400_000,
                params={"rl.steps": "4", "seed": "1"}),
            rec("r1", "sft-1", params={"sft.epochs": "2", "seed": "1"},
                tags={"best_epoch": "2"}, metrics={"eval/best_macro": 0.25})]
    rows = report.runs_overview(runs)
    assert [r["run"] for r in rows] == ["prefix_rft-2", "sft-1"]
    assert rows[0]["method"] == "prefix_rft" and rows[0]["status"] == "RUNNING"
    assert rows[0]["started"] == "1970-01-02 00:00 UTC"
    assert rows[0]["best_epoch"] is None and rows[1]["best_epoch"] == 2
    assert rows[1]["best_macro"] == 0.25
    # only the KEY_PARAMS that some run has, in KEY_PARAMS order; absent in a run -> None
    params = [k for k in rows[0] if k in report.KEY_PARAMS and k != "method"]
    assert params == ["seed", "sft.epochs", "rl.steps"]
    assert rows[0]["sft.epochs"] is None and rows[1]["rl.steps"] is None


def test_runs_overview_shows_the_original_run_id_of_rebuilt_runs():
    # a run rebuilt from a committed record (studies/realmath_mlflow.py) has a new run id
    runs = [rec("new2", "sft-2", tags={"original_run_id": "old2"}), rec("r1", "sft-1")]
    rows = report.runs_overview(runs)
    assert list(rows[0])[:4] == ["run", "run_id", "original_run_id", "method"]
    assert [r["original_run_id"] for r in rows] == ["old2", None]
    assert "original_run_id" not in report.runs_overview(runs[1:])[0]  # no rebuilt run: no column


def test_find_run_by_id_then_name_then_method():
    runs = [rec("r1", "sft-1"), rec("r2", "prefix_rft-2", method="prefix_rft"),
            rec("r3", "sft-3")]
    assert report.find_run(runs, "r3") == 2
    assert report.find_run(runs, "prefix_rft-2") == 1
    assert report.find_run(runs, "sft") == 0  # the first run of the method
    with pytest.raises(UserError, match="no run 'luffy' among sft-1, prefix_rft-2, sft-3"):
        report.find_run(runs, "luffy")


# ------------------------------------------------------------------------ which evaluation
def test_latest_cells_keep_the_newest_child_per_cell():
    old = child("c1", 1, "heldout", start=10)
    new = child("c2", 1, "heldout", start=20)  # `resume plan_eval` evaluated epoch 1 again
    other = child("c3", 0, "heldout", start=5)
    assert [c["run_id"] for c in report.latest_cells([new, other, old])] == ["c3", "c2"]


def test_choose_epoch():
    assert report.choose_epoch([0, 2, 1], "last", best=None, run="r") == 2
    assert report.choose_epoch([0, 1, 2], "best", best=1, run="r") == 1
    assert report.choose_epoch([0, 1, 2], 0, best=None, run="r") == 0
    assert report.choose_epoch([0, 1, 2], "1", best=None, run="r") == 1
    with pytest.raises(UserError, match=r"run r: no evaluation of epoch 3 \(evaluated: \[0, 1, 2\]\)"):
        report.choose_epoch([0, 1, 2], 3, best=None, run="r")
    with pytest.raises(UserError, match="run r: no best epoch"):
        report.choose_epoch([0], "best", best=None, run="r")
    with pytest.raises(UserError, match="run r: no evaluation child runs"):
        report.choose_epoch([], "last", best=None, run="r")


def test_complete_cells_leave_out_a_benchmark_with_a_missing_shard():
    cells = [child("a", 1, "heldout", "0/2"), child("b", 1, "heldout", "1/2"),
             child("c", 1, "amc", "0/2"), child("d", 1, "math500")]
    ok, missing = report.complete_cells(cells)
    assert {b: [c["run_id"] for c in parts] for b, parts in ok.items()} == {
        "heldout": ["a", "b"], "math500": ["d"]}
    assert missing == ["amc"]


class FakeTracker:
    """The reading half of `Tracker`, from dicts and local files."""

    def __init__(self, runs, children, files):
        self.runs, self.children, self.files = runs, children, files

    def eval_runs(self, run_id):
        return self.children[run_id]

    def download_artifact(self, run_id, path, dst_dir):
        assert path == BE.SAMPLES_FILE
        return self.files[run_id]

    def metric_history(self, run_id, key):
        return self.runs[run_id]["history"].get(key, [])


def samples(out: Path, bench: str, table: dict[str, list[bool]]) -> Path:
    """samples.parquet with one row per sample: problem id -> correct per sample."""
    records = [{"benchmark": bench, "problem_id": pid, "sample": k, "completion": f"{pid}#{k}",
                "extracted": str(int(c)), "correct": c, "status": "ok", "finish_reason": "stop",
                "num_tokens": 3}
               for pid, cs in table.items() for k, c in enumerate(cs)]
    BE.write_results(out, [BE.BenchmarkResult(bench, records, {"avg_at_n": 0.0, "n": 2})])
    return out / BE.SAMPLES_FILE


def test_load_pipeline_run_merges_shards_and_prefers_re_runs(tmp_path):
    files = {
        # epoch 2, heldout in two shards: p1 2/2, p2 0/2 | p3 1/2
        "s0": samples(tmp_path / "s0", "heldout", {"p1": [True, True], "p2": [False, False]}),
        "s1": samples(tmp_path / "s1", "heldout", {"p3": [True, False]}),
        # epoch 2, amc: only shard 0 of 2 reported (the other task failed)
        "a0": samples(tmp_path / "a0", "amc", {"q1": [True, True]}),
        # epoch 1 evaluated twice: the newer child (r1new) wins
        "r1old": samples(tmp_path / "r1old", "heldout", {"p1": [False, False]}),
        "r1new": samples(tmp_path / "r1new", "heldout", {"p1": [True, False]}),
    }
    kids = [child("s0", 2, "heldout", "0/2"), child("s1", 2, "heldout", "1/2"),
            child("a0", 2, "amc", "0/2"), child("r1old", 1, "heldout", start=1),
            child("r1new", 1, "heldout", start=2, n=4)]
    run = rec("R", "prefix_rft-7", method="prefix_rft", tags={"best_epoch": "1"})
    t = FakeTracker({}, {"R": kids}, files)

    last = report.load_pipeline_run(t, run)
    assert last.name == "prefix_rft-7" and last.run_id == "R" and last.method == "prefix_rft"
    assert last.epoch == 2
    assert last.per_problem == {"heldout": {"p1": 1.0, "p2": 0.0, "p3": 0.5}}
    assert last.n == {"heldout": 2}
    assert last.incomplete == ["amc"]
    assert last.samples == []  # only per-problem columns unless asked

    best = report.load_pipeline_run(t, run, epoch="best", name="B", samples=True)
    assert best.name == "B" and best.epoch == 1
    assert best.per_problem == {"heldout": {"p1": 0.5}} and best.n == {"heldout": 4}
    assert [(s["problem_id"], s["sample"], s["completion"]) for s in best.samples] == [
        ("p1", 0, "p1#0"), ("p1", 1, "p1#1")]


# ------------------------------------------------------------------------ tables
A = RunResults("A", {"amc": {"p1": 1.0, "p2": 0.0, "p3": 0.5}, "math": {"m1": 1.0, "m2": 1.0}},
               {"amc": 2, "math": 4}, method="sft", epoch=2)
B = RunResults("B", {"amc": {"p1": 1.0, "p2": 1.0, "p3": 0.5, "p4": 1.0}}, {"amc": 2},
               method="prefix_rft", epoch=1)


def test_eval_table_means_cis_and_macro():
    rows = report.eval_table([A, B], n_boot=500, seed=3)
    key = {(r["benchmark"], r["run"]): r for r in rows}
    assert set(key) == {("amc", "A"), ("math", "A"), ("amc", "B"), ("macro", "A")}
    amc_a = key["amc", "A"]
    assert amc_a["avg"] == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3
    assert (amc_a["ci_low"], amc_a["ci_high"]) == bootstrap_ci([1.0, 0.0, 0.5], n_boot=500, seed=3)
    assert amc_a["problems"] == 3 and amc_a["n"] == 2 and amc_a["method"] == "sft"
    assert amc_a["epoch"] == 2
    assert key["amc", "B"]["avg"] == pytest.approx(0.875)  # (1 + 1 + 0.5 + 1) / 4
    # every problem solved: the interval is the point itself
    assert (key["math", "A"]["avg"], key["math", "A"]["ci_low"], key["math", "A"]["ci_high"]) == (1, 1, 1)
    assert key["macro", "A"]["avg"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2; B lacks math: none


def test_paired_table_on_common_problems():
    rows = report.paired_table([A, B], 0, n_boot=500)
    assert len(rows) == 1  # math: B has none of its problems
    (r,) = rows
    # common p1..p3: d = (1 - 1, 1 - 0, 0.5 - 0.5) = (0, 1, 0), mean 1/3; p4 is B's only
    assert (r["benchmark"], r["run"], r["baseline"]) == ("amc", "B", "A")
    assert r["diff"] == pytest.approx(1 / 3)
    assert r["run_avg"] == pytest.approx(2.5 / 3) and r["baseline_avg"] == pytest.approx(0.5)
    assert (r["problems"], r["run_better"], r["baseline_better"], r["ties"]) == (3, 1, 0, 2)
    # one non-zero difference: every sign flip gives |mean| = 1/3, so p = (1 + 500) / (1 + 500)
    assert r["p_value"] == 1.0
    assert (r["ci_low"], r["ci_high"]) == bootstrap_ci([0.0, 1.0, 0.0], n_boot=500)
    # the other way round: A - B
    (rev,) = report.paired_table([A, B], 1, n_boot=500)
    assert (rev["run"], rev["baseline"]) == ("A", "B")
    assert rev["diff"] == pytest.approx(-1 / 3)
    assert (rev["run_better"], rev["baseline_better"]) == (0, 1)


def test_paired_table_constant_difference_has_a_point_interval():
    a = RunResults("a", {"h": {"x": 0.0, "y": 0.5}})
    b = RunResults("b", {"h": {"x": 0.5, "y": 1.0}})
    (r,) = report.paired_table([a, b], n_boot=200)
    assert (r["diff"], r["ci_low"], r["ci_high"]) == (0.5, 0.5, 0.5)


def test_sample_rows_show_disagreements_first_and_cut_long_completions():
    def s(pid, k, ok, text):
        return {"benchmark": "h", "problem_id": pid, "sample": k, "correct": ok,
                "extracted": "1" if ok else None, "completion": text}

    a = RunResults("a", {}, samples=[s("p1", 1, False, "late"), s("p1", 0, True, "x" * 12),
                                     s("p2", 0, False, "a2"), s("p3", 0, True, "a3"),
                                     s("p9", 0, True, "only a")])
    b = RunResults("b", {}, samples=[s("p1", 0, True, "b1"), s("p2", 0, True, "b2"),
                                     s("p3", 0, True, "b3")])
    rows = report.sample_rows([a, b], problems=2, chars=10)
    # p2 (a wrong, b right) first; then p1 (both right, by id); p9 is not in b, p3 cut off
    assert [(r["problem_id"], r["run"]) for r in rows] == [
        ("p2", "a"), ("p2", "b"), ("p1", "a"), ("p1", "b")]
    assert [r["correct"] for r in rows[:2]] == [False, True]
    p1a = rows[2]
    assert p1a["sample"] == 0 and p1a["completion"] == "x" * 10 + " [...]"  # the lowest sample
    assert rows[3]["completion"] == "b1" and rows[3]["extracted"] == "1"


def test_sample_rows_name_the_runs_whose_samples_carry_no_completions():
    slim = [{"benchmark": "h", "problem_id": "p1", "correct": True}]  # docs/results' copies
    full = [{"benchmark": "h", "problem_id": "p1", "sample": 0, "correct": True,
             "extracted": "1", "completion": "c"}]
    a, b, c = RunResults("a", {}, samples=slim), RunResults("b", {}, samples=slim), \
        RunResults("c", {}, samples=full)
    with pytest.raises(UserError, match=r"the samples of a, b carry no completion text .*"
                       r"only benchmark, problem_id and correct.*\)$"):
        report.sample_rows([a, b])
    with pytest.raises(UserError, match=r"the samples of a carry .*leave them out \(`run_ids`\)"):
        report.sample_rows([a, c])
    assert len(report.sample_rows([c])) == 1



def test_method_table_pools_seeds_with_t_intervals():
    # prefix_rft, three seeds: a = 0.75, 0.5, 0.25 (mean 0.5, SD 0.25, t_{0.975,2} = 4.303:
    # half 4.303 * 0.25 / sqrt(3) = 0.62109); b = 0.25, 0.5 (seed 3 has no b: mean 0.375,
    # SD 0.176777, half 12.706 * 0.125 = 1.58825); macro over the runs with both: s1 0.5, s2 0.5
    p1 = RunResults("p-1", {"a": {"x": 1.0, "y": 0.5}, "b": {"x": 0.0, "y": 0.5}}, method="prefix_rft")
    p2 = RunResults("p-2", {"a": {"x": 0.5, "y": 0.5}, "b": {"x": 1.0, "y": 0.0}}, method="prefix_rft")
    p3 = RunResults("p-3", {"a": {"x": 0.25, "y": 0.25}}, method="prefix_rft")
    s1 = RunResults("s-1", {"a": {"x": 1.0, "y": 1.0}, "b": {"x": 0.0, "y": 0.0}}, method="sft")
    rows = {(r["benchmark"], r["method"]): r for r in report.method_table([p1, s1, p2, p3])}
    assert list(rows) == [("a", "prefix_rft"), ("a", "sft"), ("b", "prefix_rft"), ("b", "sft"),
                          ("macro", "prefix_rft"), ("macro", "sft")]
    a = rows[("a", "prefix_rft")]
    assert a["runs"] == 3 and a["per_run"] == "0.7500, 0.5000, 0.2500"
    assert a["mean"] == pytest.approx(0.5) and a["sd"] == pytest.approx(0.25)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((0.5 - 0.62109, 0.5 + 0.62109), abs=2e-4)
    b = rows[("b", "prefix_rft")]
    assert b["runs"] == 2 and b["mean"] == pytest.approx(0.375)
    assert b["ci_high"] - b["mean"] == pytest.approx(1.58825, abs=2e-4)
    one = rows[("a", "sft")]
    assert (one["runs"], one["mean"], one["sd"], one["ci_low"], one["ci_high"]) == (1, 1.0, None, None, None)
    macro = rows[("macro", "prefix_rft")]
    assert macro["runs"] == 2 and macro["mean"] == pytest.approx(0.5) and macro["sd"] == 0.0
    assert rows[("macro", "sft")]["mean"] == pytest.approx(0.5)

# ------------------------------------------------------------------------ figures
def test_training_curves_one_panel_per_logged_metric():
    runs = {"r1": {"run_id": "r1", "history": {"loss": [(2, 0.5), (1, 0.9)],
                                                "reward/mean": [(1, 0.1), (2, 0.2)]}},
            "r2": {"run_id": "r2", "history": {"loss": [(1, 1.0), (2, 0.7)]}}}
    t = FakeTracker(runs, {}, {})
    hist = report.training_histories(t, [rec("r1", "prefix_rft-1"), rec("r2", "sft-2")])
    assert hist == {"prefix_rft-1": {"reward/mean": [(1, 0.1), (2, 0.2)],
                                     "loss": [(2, 0.5), (1, 0.9)]},
                    "sft-2": {"loss": [(1, 1.0), (2, 0.7)]}}
    fig = report.training_curves_figure(hist)
    # reward/mean, demo/nll, loss, prefix/advantage: only the two that were logged, in order
    assert [ax.get_title() for ax in fig.axes] == ["reward/mean", "loss"]
    assert [len(ax.lines) for ax in fig.axes] == [1, 2]
    assert list(fig.axes[1].lines[0].get_xdata()) == [1, 2]  # sorted by step
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.9, 0.5]
    assert fig.axes[1].get_xlabel() == "training step"
    with pytest.raises(UserError, match="no training curves: none of the runs \\(x\\) logged any of loss"):
        report.training_curves_figure({"x": {"reward/mean": [(1, 0.0)]}}, keys=["loss"])



def test_training_curves_grouped_mean_and_band_over_seeds():
    # two prefix_rft seeds: reward (1: 0.0, 2: 0.4) and (1: 0.2, 2: 0.8, 3: 0.9)
    #   mean per step: 1 -> 0.1, 2 -> 0.6, 3 -> 0.9 (only seed 2 logged step 3);
    #   band: min 0.0 / 0.4 / 0.9, max 0.2 / 0.8 / 0.9
    # one sft run alone: a line without a band
    hist = {"prefix_rft s1": {"reward/mean": [(2, 0.4), (1, 0.0)]},
            "prefix_rft s2": {"reward/mean": [(1, 0.2), (2, 0.8), (3, 0.9)]},
            "sft s1": {"loss": [(1, 1.0), (2, 0.5)]}}
    groups = {"prefix_rft s1": "prefix_rft", "prefix_rft s2": "prefix_rft", "sft s1": "sft"}
    fig = report.training_curves_figure(hist, groups=groups)
    reward, loss = fig.axes
    (line,) = reward.lines
    assert line.get_label() == "prefix_rft (2 runs)"
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx([0.1, 0.6, 0.9])
    (band,) = reward.collections
    ys = sorted({round(float(y), 6) for _, y in band.get_paths()[0].vertices})
    assert ys == [0.0, 0.2, 0.4, 0.8, 0.9]
    assert [ln.get_label() for ln in loss.lines] == ["sft (1 run)"] and not loss.collections
    assert line.get_color() != loss.lines[0].get_color()  # one colour per group
    # five logged metrics, at most 3 a row: 2 rows, the unused sixth axis removed
    five = {"r": {k: [(1, 1.0)] for k in ("a", "b", "c", "d", "e")}}
    fig5 = report.training_curves_figure(five, keys=("a", "b", "c", "d", "e"), max_columns=3)
    assert [ax.get_title() for ax in fig5.axes] == ["a", "b", "c", "d", "e"]
    assert fig5.axes[3].get_subplotspec().rowspan.start == 1

def test_comparison_figure_bars_with_intervals(tmp_path):
    fig = report.comparison_figure([A, B], n_boot=100)
    (ax,) = fig.axes
    assert len(ax.patches) == 3  # A: amc, math; B: amc
    assert [t.get_text() for t in ax.get_xticklabels()] == ["amc", "math"]
    fig.savefig(tmp_path / "f.png")  # a plain Figure saves without pyplot
    assert (tmp_path / "f.png").stat().st_size > 1000
    with pytest.raises(UserError, match="no evaluation results to plot"):
        report.comparison_figure([RunResults("e", {})])
