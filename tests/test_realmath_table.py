"""studies/realmath_table.py on tiny inputs written by the real writers: eval output directories
by `protocol.write_results` (the files `prefix-rft eval` writes), run rows by studies/study.sh's
row format completed by studies/realmath_log.py itself against a real (sqlite) MLflow store.

Two methods (sft_then_rft, the reference, and prefix_rft) x 2 seeds x 2 post-flow benchmarks
(aime24 with 2 samples a problem, math500 with 1) x 3 problems, plus a one-seed luffy run without
post-flow results and a failed run. The four runs with post-flow results also have the flow's
greedy `heldout` evaluation of 10 problems as child runs, logged by the flow's own code
(`steps.evaluate._log_cell`), which realmath_log.py copies beside the post-flow results. Every
expected number is worked out in the comments."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import tempfile
from pathlib import Path

import pytest

from prefix_rft.eval import metrics as em
from prefix_rft.eval.metrics import summarize
from prefix_rft.eval.protocol import (
    PROTOCOLS,
    SAMPLES_FILE,
    BenchmarkResult,
    grading_failures,
    per_problem,
    write_results,
)
from prefix_rft.io import run_layout
from prefix_rft.io.tracking import Tracker
from steps import evaluate as seval
from steps.flow_config import load_flow_config

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RT, ST, LOG = _module("realmath_table"), _module("study_table"), _module("realmath_log")

# post-flow samples: (method, seed) -> benchmark -> problem -> correct per sample
POST = {
    ("sft_then_rft", 1): {"aime24": {"p0": [1, 1], "p1": [1, 0], "p2": [0, 0]},   # 1, .5, 0
                          "math500": {"p0": [1], "p1": [0], "p2": [0]}},            # 1/3
    ("sft_then_rft", 2): {"aime24": {"p0": [1, 0], "p1": [0, 0], "p2": [0, 0]},   # .5, 0, 0
                          "math500": {"p0": [1], "p1": [1], "p2": [0]}},            # 2/3
    # p3 of aime24 in seed 1 only: left out of the seed average (not in every seed)
    ("prefix_rft", 1): {"aime24": {"p0": [1, 1], "p1": [1, 1], "p2": [1, 0], "p3": [0, 0]},
                        "math500": {"p0": [0], "p1": [0], "p2": [0], "p3": [1]}},   # .25
    # p3 of math500 in both seeds but not in the reference's: dropped from the pairing
    ("prefix_rft", 2): {"aime24": {"p0": [1, 1], "p1": [0, 1], "p2": [0, 0]},     # 1, .5, 0
                        "math500": {"p0": [1], "p1": [0], "p2": [0], "p3": [1]}},   # .5
}
HELDOUT = {("sft_then_rft", 1): 0.4, ("sft_then_rft", 2): 0.5, ("prefix_rft", 1): 0.3,
           ("prefix_rft", 2): 0.2, ("luffy", 1): 0.35}
POST_PROTOCOL = dataclasses.replace(PROTOCOLS["paper"], max_new_tokens=1024,
                                    n_per_benchmark={"aime24": 2})
# the flow's greedy held-out cell at the last epoch (1): problem h<i> right where digit i is 1;
# the share of ones is the row's heldout score (HELDOUT). Seed averages on h0..h9:
#   sft_then_rft 1, 1, .5, .5, .5, .5, .5, 0, 0, 0 (mean .45)
#   prefix_rft   1, .5, .5, 0, 0, 0, 0, 0, 0, .5  (mean .25)
FLOW_HELDOUT = {("sft_then_rft", 1): "1111000000", ("sft_then_rft", 2): "1100111000",
                ("prefix_rft", 1): "1010000001", ("prefix_rft", 2): "1100000000"}
HELDOUT_PROTOCOL = dataclasses.replace(PROTOCOLS["paper"], temperature=0.0, top_p=1.0,
                                       max_new_tokens=1024)


def bench_result(bench: str, probs: dict, protocol, model: str) -> BenchmarkResult:
    """One benchmark's records and summary as `protocol.evaluate_benchmark` returns them."""
    records = [{"benchmark": bench, "problem_id": pid, "sample": k, "completion": "\\boxed{1}",
                "extracted": "1", "correct": bool(c), "status": "correct" if c else "wrong",
                "finish_reason": "stop", "num_tokens": 5}
               for pid, cs in probs.items() for k, c in enumerate(cs)]
    summary = {"benchmark": bench, "metric": f"avg_at_{protocol.n_for(bench)}",
               **summarize([[bool(c) for c in cs] for cs in probs.values()]),
               "no_answer_frac": 0.0, **grading_failures(records), "mean_tokens": 5.0,
               "protocol": protocol.to_dict(), "model": model}
    return BenchmarkResult(bench, records, summary)


def write_eval(out: Path, tables: dict, protocol, model: str) -> dict:
    """An eval output directory as `prefix-rft eval` writes it (records, summary per benchmark)."""
    results = [bench_result(bench, probs, protocol, model) for bench, probs in tables.items()]
    return write_results(out, results, extra={"model": model, "engine": "vllm",
                                              "protocol": protocol.to_dict(), "source": "default"})


def log_flow_heldout(tracker, tracking: dict, epoch: int, digits: str, shards: int = 1) -> None:
    """The flow's `heldout` cell of one epoch as its eval tasks log it (`_log_cell`: a child run
    per shard holding samples.parquet), shard k taking problems k, k + shards, ... as
    `eval_task` does; the summary has the keys `eval_task` gives it."""
    cfg = load_flow_config(ROOT / "configs" / "realmath" / "prefix_rft.yaml")
    probs = [(f"h{i}", [d == "1"]) for i, d in enumerate(digits)]
    for shard in range(shards):
        res = bench_result("heldout", dict(probs[shard::shards]), HELDOUT_PROTOCOL, "ckpt")
        s = res.summary
        summary = {"epoch": epoch, "benchmark": "heldout", "n": 1, "value": s["avg_at_n"],
                   "metric": run_layout.metric_key("heldout", 1), "ci": [s["ci_low"], s["ci_high"]],
                   "num_problems": s["num_problems"], "no_answer_frac": 0.0,
                   "grading_timeouts": 0, "grading_errors": 0, "checkpoint_uri": "ckpt",
                   "engine": "vllm", "protocol": HELDOUT_PROTOCOL.to_dict(), "shard": shard,
                   "shards": shards}
        with tempfile.TemporaryDirectory() as tmp:
            seval._log_cell(cfg, tracker, tracking, summary, res, Path(tmp))


def study_row(method: str, seed: int, run_id: str | None, rc: int = 0) -> dict:
    """A row as studies/study.sh writes it (the flow's eval cell scored `heldout` at epoch 1)."""
    h = HELDOUT.get((method, seed))
    return {"config": f"configs/realmath/{method}.yaml", "seed": seed, "rc": rc, "wall_s": 500,
            "card": "NVIDIA H100 80GB HBM3", "date": f"2026-12-0{seed}T10:00:00+00:00", "jobs": 1,
            "set": "", "mlflow_run_id": run_id, "metaflow_run_id": f"17{seed}", "method": method,
            "status": "FINISHED" if rc == 0 else "FAILED",
            "scores": {} if rc else {"heldout": {"1": {"metric": "avg_at_1", "value": h,
                                                       "ci": [h - 0.1, h + 0.1]}}}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Summaries a.json and b.json (one row in both), post dirs, a stale post dir, MLflow file
    (artifacts beside it). The flow's heldout cell of sft_then_rft seed 2 is in two shards;
    sft_then_rft seed 1 also has an all-wrong epoch-0 cell, which is not the last epoch."""
    d = tmp_path_factory.mktemp("realmath")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    tracker = Tracker(uri)
    client = tracker.client
    exp = tracker.experiment_id("realmath")
    rows = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for method, seed in HELDOUT:
            run_id = client.create_run(exp).info.run_id
            for step in (1, 2):  # a training curve for --curves
                client.log_metric(run_id, "reward/mean", 0.1 * step + seed / 100, step=step)
            row_path = d / "rows" / f"{method}-seed{seed}.json"
            row_path.parent.mkdir(exist_ok=True)
            row_path.write_text(json.dumps(study_row(method, seed, run_id)))
            if (method, seed) in POST:
                tracking = {"run_id": run_id, "experiment": "realmath"}
                if (method, seed) == ("sft_then_rft", 1):
                    log_flow_heldout(tracker, tracking, 0, "0" * 10)
                log_flow_heldout(tracker, tracking, 1, FLOW_HELDOUT[method, seed],
                                 shards=2 if (method, seed) == ("sft_then_rft", 2) else 1)
                model = f"/tmp/realmath/checkpoints/{method}-seed{seed}/F/l/17{seed}/step-000010"
                write_eval(d / "post" / f"{method}-seed{seed}", POST[method, seed], POST_PROTOCOL,
                           model)
                assert LOG.main(str(d / "post" / f"{method}-seed{seed}" / "summary.json"), run_id,
                                str(row_path)) == 0
            rows[method, seed] = json.loads(row_path.read_text())
    # another session's run of prefix_rft seed 2 (another checkpoint): must not be matched
    write_eval(d / "post_old" / "prefix_rft-seed2", {"aime24": {"p0": [0, 0]}}, POST_PROTOCOL,
               "/tmp/realmath/checkpoints/prefix_rft-seed2/F/l/999/step-000010")
    failed = study_row("rft", 1, None, rc=1)
    (d / "a.json").write_text(json.dumps([rows["sft_then_rft", 1], rows["prefix_rft", 1], failed]))
    (d / "b.json").write_text(json.dumps([rows["sft_then_rft", 1], rows["sft_then_rft", 2],
                                          rows["prefix_rft", 2], rows["luffy", 1]]))
    return d, rows


def _render(d: Path, **kw) -> str:
    rows = ST.load([d / "a.json", d / "b.json"])
    return RT.render(rows, [d / "post", d / "post_old"], kw.get("base", []))


def test_realmath_log_rows_carry_the_post_flow_scores(study):
    _, rows = study
    r = rows["prefix_rft", 1]
    # aime24 of prefix_rft seed 1: 1, 1, .5, 0 -> 0.625, logged at the run's last epoch (1)
    assert r["scores"]["aime24"]["1"]["value"] == 0.625
    assert r["scores"]["aime24"]["1"]["metric"] == "avg_at_2"
    assert r["post_eval"]["model"].endswith("prefix_rft-seed1/F/l/171/step-000010")


def test_realmath_log_copies_the_flow_heldout_samples(study):
    d, _ = study
    for (method, seed), digits in FLOW_HELDOUT.items():
        path = d / "post" / f"{method}-seed{seed}" / "flow_heldout" / SAMPLES_FILE
        # the last epoch's cell (not sft_then_rft seed 1's all-wrong epoch 0), both shards of
        # sft_then_rft seed 2 joined: every problem once, as the flow scored it
        assert per_problem(path) == {"heldout": {f"h{i}": float(c == "1")
                                                 for i, c in enumerate(digits)}}


def test_post_flow_benchmarks_are_evaluation_child_runs_the_notebook_reads(study):
    """realmath_log.py logs each post-flow benchmark as an evaluation child run, so the reader
    behind notebooks/compare_runs.py (`report.load_pipeline_run`) sees it at the last epoch
    beside the flow's own heldout cell: prefix_rft seed 1's per-problem accuracies are POST's
    (aime24 1, 1, .5, 0 with n 2; math500 0, 0, 0, 1 with n 1) and FLOW_HELDOUT's digits."""
    from prefix_rft.eval.report import load_pipeline_run

    d, rows = study
    tracker = Tracker(f"sqlite:///{d / 'mlflow.db'}")
    res = load_pipeline_run(tracker, rows["prefix_rft", 1]["mlflow_run_id"])
    assert res.epoch == 1 and res.incomplete == []
    assert res.per_problem == {
        "aime24": {"p0": 1.0, "p1": 1.0, "p2": 0.5, "p3": 0.0},
        "math500": {"p0": 0.0, "p1": 0.0, "p2": 0.0, "p3": 1.0},
        "heldout": {f"h{i}": float(c == "1") for i, c in enumerate("1010000001")}}
    assert res.n == {"aime24": 2, "math500": 1, "heldout": 1}


def test_realmath_log_without_a_flow_heldout_file(study, capsys):
    """A run with no heldout child run, one whose child run lacks samples.parquet, one with a
    shard missing: one line each, exit 0, the post-flow scores logged, a stale copy removed."""
    d, _ = study
    tracker = Tracker(f"sqlite:///{d / 'mlflow.db'}")
    post = d / "post_extra" / "luffy-seed1"
    write_eval(post, {"math500": {"p0": [1], "p1": [0]}}, POST_PROTOCOL, "/tmp/ckpt/luffy")
    row_path = d / "post_extra" / "row.json"
    cases = {None: "no evaluation child run of heldout under run {}: no samples copied",
             "0/1": f"no {SAMPLES_FILE} of heldout epoch 1 in run {{}} (",
             "0/2": "epoch 1 of heldout lacks a shard in run {}: no samples copied"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracker.uri)
        for shard, line in cases.items():
            run_id = tracker.create_run("realmath", "luffy", {})
            if shard:  # a heldout child run that logged no samples (its task died after starting)
                tracker.create_run("realmath", run_layout.eval_run_name("heldout", 1), {
                    run_layout.EPOCH: 1, run_layout.BENCHMARK: "heldout",
                    run_layout.SHARD: shard}, parent_run_id=run_id)
            row_path.write_text(json.dumps(study_row("luffy", 1, run_id)))
            stale = post / "flow_heldout" / SAMPLES_FILE  # from an earlier run of this name
            stale.parent.mkdir(exist_ok=True)
            stale.write_bytes((d / "post" / "prefix_rft-seed1" / "flow_heldout" /
                               SAMPLES_FILE).read_bytes())
            assert LOG.main(str(post / "summary.json"), run_id, str(row_path)) == 0
            out = capsys.readouterr().out.splitlines()
            assert out[0].startswith("  math500: eval/math500/avg_at_1 = 0.5000")
            assert out[1] == "  evaluation child runs for the notebook: 1"
            assert len(out) == 3 and out[2].startswith("  heldout: " + line.format(run_id))
            assert out[2].endswith(": no samples copied")
            assert not (post / "flow_heldout").exists()
            assert json.loads(row_path.read_text())["scores"]["math500"]["1"]["value"] == 0.5
            assert tracker.metric_history(run_id, "eval/math500/avg_at_1") == [(1, 0.5)]


def test_per_run_table(study):
    d, rows = study
    text = _render(d)
    lo, hi = em.bootstrap_ci([1, 1, 0.5, 0])  # prefix_rft seed 1, aime24 (summarize's CI)
    run = rows["prefix_rft", 1]["mlflow_run_id"]
    # heldout 0.3 [0.2, 0.4]; aime24 0.625; aime25, amc not evaluated: "-"; math500 0.25
    m_lo, m_hi = em.bootstrap_ci([0, 0, 0, 1])
    assert (f"| prefix_rft | 1 | 0.300 [0.200, 0.400] | 0.625 [{lo:.3f}, {hi:.3f}] | - | - | "
            f"0.250 [{m_lo:.3f}, {m_hi:.3f}] | NVIDIA H100 80GB HBM3 | 2026-12-01 10:00 | `{run}` "
            "| `bash studies/realmath.sh prefix_rft:1` |") in text
    lines = text.splitlines()
    # the row in both summary files is counted once; the failed run is listed apart
    assert sum(line.startswith("| sft_then_rft | 1 | 0.400") for line in lines) == 1
    assert "- configs/realmath/rft.yaml seed 1: rc 1, FAILED (2026-12-01T10:00:00+00:00)" in text
    assert f"- prefix_rft seed 1 (`{run}`): no final score on aime25, amc" in text


def test_per_method_and_welch_tables(study):
    d, _ = study
    text = _render(d)
    # sft_then_rft: heldout .4, .5 -> 0.450; aime24 .5, 1/6 -> 0.333; math500 1/3, 2/3 -> 0.500;
    # no mean of benchmarks (aime25 and amc missing)
    assert ("| sft_then_rft | 2 | 0.450 (0.400-0.500) | 0.333 (0.167-0.500) | - | - | "
            "0.500 (0.333-0.667) | - | - | - |") in text
    # prefix_rft: heldout .3, .2 -> 0.250; aime24 .625, .5 -> 0.562 (0.5625); math500 .25, .5
    assert ("| prefix_rft | 2 | 0.250 (0.200-0.300) | 0.562 (0.500-0.625) | - | - | "
            "0.375 (0.250-0.500) | - | - | - |") in text
    assert "| luffy | 1 | 0.350 | - | - | - | - | - | - | - |" in text
    assert "| heldout | aime24 | aime25 | amc | math500 | mean of benchmarks, per seed" in text
    # Welch, sft_then_rft minus prefix_rft on heldout: 0.45 - 0.25 = +0.200; SE^2 = .0025 * 2,
    # df 2, t_{0.975,2} = 4.303: 0.2 -+ 4.303 * 0.0707 = [-0.104, +0.504]
    aime = em.welch_difference([0.625, 0.5], [0.5, 1 / 6])  # 0.3333 - 0.5625 = -0.229
    math = em.welch_difference([0.25, 0.5], [1 / 3, 2 / 3])  # 0.5 - 0.375 = +0.125
    assert (f"| prefix_rft | 2 vs 2 | +0.200 [-0.104, +0.504] | {aime.diff:+.3f} "
            f"[{aime.ci[0]:+.3f}, {aime.ci[1]:+.3f}] | - | - | {math.diff:+.3f} "
            f"[{math.ci[0]:+.3f}, {math.ci[1]:+.3f}] | - | - |") in text
    assert round(aime.diff, 3) == -0.229 and round(math.diff, 3) == 0.125
    assert "- luffy: 1 seed, so no CI over seeds and no Welch difference" in text


def test_paired_per_problem_differences(study):
    d, rows = study
    text = _render(d)
    # aime24, seed averages on p0..p2 (p3 is in one prefix_rft seed only):
    #   sft_then_rft .75, .25, 0 (mean 1/3); prefix_rft 1, .75, .25 (mean 2/3)
    #   differences .25, .5, .25 -> +0.333; prefix_rft better on all 3; none dropped
    a = em.paired_comparison({"p0": .75, "p1": .25, "p2": 0}, {"p0": 1, "p1": .75, "p2": .25})
    assert 0.25 <= a.ci_low <= a.diff <= a.ci_high <= 0.5
    assert 0.2 < a.p_value < 0.3  # 2 of the 8 sign patterns are as extreme
    assert (f"| aime24 | prefix_rft | 2 vs 2 | 0.667 | 0.333 | +0.333 [{a.ci_low:+.3f}, "
            f"{a.ci_high:+.3f}] | {a.p_value:.3f} | 3 (0) | 3 / 0 / 0 |") in text
    # math500: sft_then_rft 1, .5, 0 (mean .5); prefix_rft .5, 0, 0, (p3 1: not in the
    # reference, dropped) -> mean 1/6 on the 3 common problems; differences -.5, -.5, 0
    m = em.paired_comparison({"p0": 1, "p1": .5, "p2": 0}, {"p0": .5, "p1": 0, "p2": 0})
    assert m.ci_low <= m.diff <= m.ci_high and round(m.diff, 3) == -0.333
    assert (f"| math500 | prefix_rft | 2 vs 2 | 0.167 | 0.500 | -0.333 [{m.ci_low:+.3f}, "
            f"{m.ci_high:+.3f}] | {m.p_value:.3f} | 3 (1) | 0 / 2 / 1 |") in text
    # heldout, from the flow's samples (FLOW_HELDOUT): prefix_rft minus sft_then_rft per problem
    # 0, -.5, 0, -.5, -.5, -.5, -.5, 0, 0, +.5 -> -0.200 (= the per-run means .25 - .45);
    # better on h9, worse on h1, h3..h6, tied on h0, h2, h7, h8
    ref = {f"h{i}": v for i, v in enumerate([1, 1, .5, .5, .5, .5, .5, 0, 0, 0])}
    mine = {f"h{i}": v for i, v in enumerate([1, .5, .5, 0, 0, 0, 0, 0, 0, .5])}
    h = em.paired_comparison(ref, mine)
    assert round(h.diff, 3) == -0.2 and -0.5 < h.ci_low <= h.diff <= h.ci_high <= 0
    assert 0.15 < h.p_value < 0.3  # 14 of the 64 sign patterns of the six non-zero ones: .219
    assert (f"| heldout | prefix_rft | 2 vs 2 | 0.250 | 0.450 | -0.200 [{h.ci_low:+.3f}, "
            f"{h.ci_high:+.3f}] | {h.p_value:.3f} | 10 (0) | 1 / 5 / 4 |") in text
    lines = [x.split(" | ")[0] for x in text.splitlines() if "| prefix_rft | 2 vs 2 | 0." in x]
    assert lines == ["| heldout", "| aime24", "| math500"]  # the held-out part first
    # luffy has no post-flow eval in its row; the stale prefix_rft-seed2 dir was not used
    luffy = rows["luffy", 1]["mlflow_run_id"]
    assert f"- luffy seed 1 (`{luffy}`): its row has no post-flow eval" in text
    assert "post_old" not in text


def test_a_run_whose_post_dir_is_missing_is_a_note(study, tmp_path):
    d, rows = study
    only = ST.load([d / "a.json", d / "b.json"])
    text = RT.render(only, [d / "post_old"], [])  # none of the runs' own dirs
    run = rows["prefix_rft", 2]["mlflow_run_id"]
    assert f"- prefix_rft seed 2 (`{run}`): no --post directory of its checkpoint" in text
    assert "post_old/prefix_rft-seed2)" in text  # the candidate it looked at, rejected
    assert "- paired differences: no post-flow results of sft_then_rft" in text
    assert "problem by problem" not in text  # no paired table


def test_base_table(tmp_path):
    default = PROTOCOLS["default"].replace(n=2, max_new_tokens=4096)
    paper = dataclasses.replace(PROTOCOLS["paper"], max_new_tokens=4096,
                                n_per_benchmark={"aime24": 2})
    m = "qwen2.5-coder-1.5b-instruct"
    base = tmp_path / "base"
    b1 = write_eval(base / "b1_default", {"aime24": {"a0": [1, 0], "a1": [0, 0], "a2": [1, 1]}},
                    default, m)                                                 # .5, 0, 1 -> .5
    write_eval(base / "b1_paper", {"math500": {"m0": [1], "m1": [0], "m2": [1]},   # 2/3
                                   "realmath_train": {"t0": [0], "t1": [1], "t2": [0], "t3": [0]}},
               paper, m)                                                        # 1/4
    write_eval(base / "b3_paper1024", {"aime24": {"a0": [0, 0], "a1": [0, 0], "a2": [1, 0]}},
               dataclasses.replace(paper, max_new_tokens=1024), m)              # 1/6
    # `--protocol default --n 1 --temperature 0`: labelled greedy, not default
    write_eval(base / "b3_greedy1024", {"realmath_heldout": {"h0": [1], "h1": [0], "h2": [0],
                                                             "h3": [0], "h4": [1]}},
               default.replace(n=1, temperature=0.0, max_new_tokens=1024), m)  # 2/5
    write_eval(base / "b4_default", {"olympiadbench_a": {"o0": [1, 1], "o1": [0, 0]}}, default, m)
    write_eval(base / "b5_default", {"olympiadbench_b": {"o2": [1, 0]}}, default, m)
    dirs = [base / n for n in ("b1_default", "b1_paper", "b3_paper1024", "b3_greedy1024",
                               "b4_default", "b5_default")]
    text = RT.render([], [], dirs)
    ci = b1["benchmarks"]["aime24"]  # the table's CI is the one `prefix-rft eval` wrote
    assert (f"| aime24 | default@4096 | 0.500 [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] | 2 | 3 "
            "| b1_default |") in text
    # paper and default sample AIME24 alike at 4096 (both n 2 here): the same samples
    assert (f"| aime24 | paper@4096 | 0.500 [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}] | 2 | 3 "
            "| b1_default (= default@4096) |") in text
    lo, hi = em.bootstrap_ci([0, 0, 0.5])
    assert f"| aime24 | paper@1024 | 0.167 [{lo:.3f}, {hi:.3f}] | 2 | 3 | b3_paper1024 |" in text
    # the two OlympiadBench halves are one benchmark: 1, 0, .5 -> 0.5 over 3 problems
    lo, hi = em.bootstrap_ci([1, 0, 0.5])
    assert (f"| olympiadbench | default@4096 | 0.500 [{lo:.3f}, {hi:.3f}] | 2 | 3 "
            "| b4_default, b5_default |") in text
    lo, hi = em.bootstrap_ci([0, 1, 0, 0])
    assert (f"| real-math train part (the policy's own success rate) | paper@4096 | 0.250 "
            f"[{lo:.3f}, {hi:.3f}] | 1 | 4 | b1_paper |") in text
    lo, hi = em.bootstrap_ci([1, 0, 0, 0, 1])
    assert (f"| real-math held-out part | greedy@1024 | 0.400 [{lo:.3f}, {hi:.3f}] | 1 | 5 "
            "| b3_greedy1024 |") in text
    # math500 is sampled differently by the two protocols (n 1 vs 2): not copied
    assert "| math500 | default@4096" not in text and "| math500 | paper@4096 | 0.667" in text
    lines = [x for x in text.splitlines() if x.startswith("| ")]
    assert [x.split(" | ")[0] for x in lines[1:]] == [
        "| aime24", "| aime24", "| aime24", "| math500", "| olympiadbench",
        "| real-math train part (the policy's own success rate)", "| real-math held-out part"]
    assert "- base: no results under" not in text  # all four protocols present
    assert "- no run rows: no per-run, per-method or paired tables" in text


def test_main_curves_and_errors(study, tmp_path, capsys):
    d, _ = study
    fig = tmp_path / "curves.png"
    assert RT.main([str(d / "a.json"), str(d / "b.json"), "--post", str(d / "post"),
                    "--db", str(d / "mlflow.db"), "--curves", str(fig)]) == 0
    assert fig.stat().st_size > 0 and "| prefix_rft | 2 vs 2 |" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"config\": 1}]")
    assert RT.main([str(bad)]) == 2
    assert capsys.readouterr().err == f"error: {bad}: row 0 lacks date, rc, card\n"
    broken = tmp_path / "post" / "sft_then_rft-seed1"
    broken.mkdir(parents=True)
    good = d / "post" / "sft_then_rft-seed1" / "summary.json"
    (broken / "summary.json").write_text(good.read_text())
    (broken / "samples.parquet").write_text("not parquet")
    assert RT.main([str(d / "a.json"), "--post", str(tmp_path / "post")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken / 'samples.parquet'}: not a readable")
    assert RT.main(["--base", str(tmp_path / "nothing")]) == 2
    assert str(tmp_path / "nothing" / "summary.json") in capsys.readouterr().err


def test_study_table_levels_are_a_parameter(tmp_path):
    """--levels picks the score columns; the default stays the three synthetic levels."""
    row = study_row("luffy", 1, "l1")
    row["scores"]["other"] = {"1": {"metric": "avg_at_1", "value": 0.5, "ci": [0.25, 0.75]}}
    (tmp_path / "s.json").write_text(json.dumps([row]))
    assert ST.levels_arg("heldout, other") == ("heldout", "other")
    text = ST.tables(ST.load([tmp_path / "s.json"]), "luffy", ("other",), RT.command, "benchmarks")
    assert text.splitlines()[0].startswith("| method | seed | other final | card |")
    assert "| luffy | 1 | 0.500 [0.250, 0.750] | NVIDIA" in text
    assert "`bash studies/realmath.sh luffy:1` |" in text
    assert "mean of benchmarks [95% CI over seeds]" in text
    assert ST.tables(ST.load([tmp_path / "s.json"])).splitlines()[0].startswith(
        "| method | seed | synthetic_add final | synthetic_mul final | synthetic_word final |")
