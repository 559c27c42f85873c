"""studies/realmath_table.py on tiny inputs written by the real writers: the flow's evaluation
cells logged by the flow's own code (`steps.evaluate._log_cell`) into a real (sqlite) MLflow
store, copied out by studies/realmath_samples.py itself, run rows in studies/study.sh's format,
and base eval directories by `protocol.write_results` (the files `prefix-rft eval` writes).

Two methods (sft_then_rft, the reference, and prefix_rft) x 2 seeds, each with the flow's greedy
`heldout` cell of 10 problems and its `paper` cells of aime24 (2 samples a problem) and math500
(1) on 3 problems, plus a one-seed luffy run with no cells and a failed run. Every expected
number is worked out in the comments."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
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


RT, ST, SAMPLES = (_module("realmath_table"), _module("study_table"),
                   _module("realmath_samples"))

# the flow's paper cells at the last epoch: (method, seed) -> benchmark -> problem -> correct
# per sample
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


def log_flow_cell(tracker, tracking: dict, bench: str, epoch: int, probs: dict, protocol,
                  shards: int = 1) -> None:
    """One benchmark of one epoch as the flow's eval task logs it (`_log_cell`: the parent's
    metrics when unsharded, a child run per shard holding samples.parquet), shard k taking
    problems k, k + shards, ... as `eval_task` does; the summary has the keys it gives it."""
    cfg = load_flow_config(ROOT / "configs" / "realmath" / "prefix_rft.yaml")
    items, n = list(probs.items()), protocol.n_for(bench)
    for shard in range(shards):
        res = bench_result(bench, dict(items[shard::shards]), protocol, "ckpt")
        s = res.summary
        summary = {"epoch": epoch, "benchmark": bench, "n": n, "value": s["avg_at_n"],
                   "metric": run_layout.metric_key(bench, n), "ci": [s["ci_low"], s["ci_high"]],
                   "num_problems": s["num_problems"], "no_answer_frac": 0.0,
                   "grading_timeouts": 0, "grading_errors": 0, "checkpoint_uri": "ckpt",
                   "engine": "vllm", "protocol": protocol.to_dict(), "shard": shard,
                   "shards": shards}
        with tempfile.TemporaryDirectory() as tmp:
            seval._log_cell(cfg, tracker, tracking, summary, res, Path(tmp))


def log_flow_heldout(tracker, tracking: dict, epoch: int, digits: str, shards: int = 1) -> None:
    """The flow's greedy `heldout` cell: problem h<i> right where digit i is 1."""
    log_flow_cell(tracker, tracking, "heldout", epoch,
                  {f"h{i}": [d == "1"] for i, d in enumerate(digits)}, HELDOUT_PROTOCOL, shards)


def study_row(method: str, seed: int, run_id: str | None, rc: int = 0) -> dict:
    """A row as studies/study.sh writes it from the run's metrics: the flow's eval task scored
    `heldout` (HELDOUT) and, where POST has them, aime24 and math500 at epoch 1."""
    h = HELDOUT.get((method, seed))
    scores = {} if rc else {"heldout": {"1": {"metric": "avg_at_1", "value": h,
                                              "ci": [h - 0.1, h + 0.1]}}}
    for bench, probs in ({} if rc else POST.get((method, seed), {})).items():
        s = summarize([[bool(c) for c in cs] for cs in probs.values()])
        scores[bench] = {"1": {"metric": f"avg_at_{POST_PROTOCOL.n_for(bench)}",
                               "value": s["avg_at_n"], "ci": [s["ci_low"], s["ci_high"]]}}
    return {"config": f"configs/realmath/{method}.yaml", "seed": seed, "rc": rc, "wall_s": 500,
            "card": "NVIDIA H100 80GB HBM3", "date": f"2026-12-0{seed}T10:00:00+00:00", "jobs": 1,
            "set": "", "mlflow_run_id": run_id, "metaflow_run_id": f"17{seed}", "method": method,
            "status": "FINISHED" if rc == 0 else "FAILED", "scores": scores}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Summaries a.json and b.json (one row in both), sample dirs written by
    realmath_samples.py, a stale sample dir of another run, MLflow file (artifacts beside it).
    The heldout cell of sft_then_rft seed 2 is in two shards; sft_then_rft seed 1 also has an
    all-wrong epoch-0 cell, which is not the last epoch."""
    d = tmp_path_factory.mktemp("realmath")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    tracker = Tracker(uri)
    client = tracker.client
    exp = tracker.experiment_id("realmath")
    rows, lines = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for method, seed in HELDOUT:
            run_id = client.create_run(exp).info.run_id
            for step in (1, 2):  # a training curve for --curves
                client.log_metric(run_id, "reward/mean", 0.1 * step + seed / 100, step=step)
            rows[method, seed] = study_row(method, seed, run_id)
            if (method, seed) in POST:
                tracking = {"run_id": run_id, "experiment": "realmath"}
                if (method, seed) == ("sft_then_rft", 1):
                    log_flow_heldout(tracker, tracking, 0, "0" * 10)
                log_flow_heldout(tracker, tracking, 1, FLOW_HELDOUT[method, seed],
                                 shards=2 if (method, seed) == ("sft_then_rft", 2) else 1)
                for bench, probs in POST[method, seed].items():
                    log_flow_cell(tracker, tracking, bench, 1, probs, POST_PROTOCOL)
                out = d / "samples" / f"{method}-seed{seed}"
                with contextlib.redirect_stdout(io.StringIO()) as said:
                    assert SAMPLES.main(run_id, str(out)) == 0
                lines[method, seed] = said.getvalue().splitlines()
        # another session's run of prefix_rft seed 2: same directory name, other run; not matched
        other = client.create_run(exp).info.run_id
        log_flow_cell(tracker, {"run_id": other, "experiment": "realmath"}, "aime24", 1,
                      {"p0": [0, 0]}, POST_PROTOCOL)
        with contextlib.redirect_stdout(io.StringIO()):
            assert SAMPLES.main(other, str(d / "samples_old" / "prefix_rft-seed2")) == 0
    failed = study_row("rft", 1, None, rc=1)
    (d / "a.json").write_text(json.dumps([rows["sft_then_rft", 1], rows["prefix_rft", 1], failed]))
    (d / "b.json").write_text(json.dumps([rows["sft_then_rft", 1], rows["sft_then_rft", 2],
                                          rows["prefix_rft", 2], rows["luffy", 1]]))
    return d, rows, lines


def _render(d: Path, **kw) -> str:
    rows = ST.load([d / "a.json", d / "b.json"])
    return RT.render(rows, [d / "samples", d / "samples_old"], kw.get("base", []))


def test_realmath_samples_copies_every_benchmark_of_the_last_epoch(study):
    d, rows, lines = study
    for (method, seed), digits in FLOW_HELDOUT.items():
        out = d / "samples" / f"{method}-seed{seed}"
        run_id = rows[method, seed]["mlflow_run_id"]
        assert json.loads((out / "run.json").read_text()) == {
            "mlflow_run_id": run_id, "benchmarks": ["aime24", "heldout", "math500"]}
        # the last epoch's cell (not sft_then_rft seed 1's all-wrong epoch 0), both shards of
        # sft_then_rft seed 2 joined: every problem once, as the flow scored it
        assert per_problem(out / "flow_heldout" / SAMPLES_FILE) == {
            "heldout": {f"h{i}": float(c == "1") for i, c in enumerate(digits)}}
        n = POST_PROTOCOL.n_for("aime24")
        assert per_problem(out / "flow_aime24" / SAMPLES_FILE) == {"aime24": {
            p: sum(cs) / n for p, cs in POST[method, seed]["aime24"].items()}}
        assert [x.split(":")[0] for x in lines[method, seed]] == ["  aime24", "  heldout", "  math500"]
    assert lines["sft_then_rft", 2][1].startswith("  heldout: 10 samples of epoch 1 (child runs ")


def test_the_flows_cells_are_what_the_notebook_reads(study):
    """The reader behind notebooks/compare_runs.py (`report.load_pipeline_run`) sees the flow's
    five-benchmark cell layout: prefix_rft seed 1's per-problem accuracies are POST's (aime24
    1, 1, .5, 0 with n 2; math500 0, 0, 0, 1 with n 1) and FLOW_HELDOUT's digits."""
    from prefix_rft.eval.report import load_pipeline_run

    d, rows, _ = study
    tracker = Tracker(f"sqlite:///{d / 'mlflow.db'}")
    res = load_pipeline_run(tracker, rows["prefix_rft", 1]["mlflow_run_id"])
    assert res.epoch == 1 and res.incomplete == []
    assert res.per_problem == {
        "aime24": {"p0": 1.0, "p1": 1.0, "p2": 0.5, "p3": 0.0},
        "math500": {"p0": 0.0, "p1": 0.0, "p2": 0.0, "p3": 1.0},
        "heldout": {f"h{i}": float(c == "1") for i, c in enumerate("1010000001")}}
    assert res.n == {"aime24": 2, "math500": 1, "heldout": 1}


def test_realmath_samples_without_samples(study, tmp_path, capsys):
    """A run with no evaluation child run, one whose child run lacks samples.parquet (its task
    died after starting), one with a shard missing: one line each, and exit 1 when nothing was
    copied; what an earlier run left in the directory is removed."""
    d, _, _ = study
    tracker = Tracker(f"sqlite:///{d / 'mlflow.db'}")
    out = tmp_path / "luffy-seed1"
    cases = {None: "  no evaluation child run with samples under run {}",
             "0/1": f"  heldout: no {SAMPLES_FILE} of heldout epoch 1 in run {{}} (",
             "0/2": "  heldout: epoch 1 of heldout lacks a shard in run {}: no samples copied"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracker.uri)
        for shard, line in cases.items():
            run_id = tracker.create_run("realmath", "luffy", {})
            if shard:
                tracker.create_run("realmath", run_layout.eval_run_name("heldout", 1), {
                    run_layout.EPOCH: 1, run_layout.BENCHMARK: "heldout",
                    run_layout.SHARD: shard}, parent_run_id=run_id)
            stale = out / "flow_aime24" / SAMPLES_FILE  # from an earlier run of this name
            stale.parent.mkdir(parents=True, exist_ok=True)
            stale.write_bytes(b"old")
            assert SAMPLES.main(run_id, str(out)) == 1
            said = capsys.readouterr().out.splitlines()
            assert said[0].startswith(line.format(run_id))
            assert said[-1] == f"  no evaluation child run with samples under run {run_id}"
            assert sorted(p.name for p in out.iterdir()) == ["run.json"]
            assert json.loads((out / "run.json").read_text())["benchmarks"] == []


def test_per_run_table(study):
    d, rows, _ = study
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
    d, _, _ = study
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
    d, rows, _ = study
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
    # luffy has no sample directory; the stale prefix_rft-seed2 dir (another run) was not used
    luffy = rows["luffy", 1]["mlflow_run_id"]
    assert f"- luffy seed 1 (`{luffy}`): no --samples directory of this run" in text


def test_a_run_whose_sample_dir_is_missing_is_a_note(study, tmp_path):
    d, rows, _ = study
    only = ST.load([d / "a.json", d / "b.json"])
    text = RT.render(only, [d / "samples_old"], [])  # another run's dir under the same name
    run = rows["prefix_rft", 2]["mlflow_run_id"]
    assert f"- prefix_rft seed 2 (`{run}`): no --samples directory of this run" in text
    assert "- paired differences: no samples of sft_then_rft" in text
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
    # two of OlympiadBench's four parts are one benchmark: 1, 0, .5 -> 0.5 over 3 problems, and
    # a note names the parts not yet run
    lo, hi = em.bootstrap_ci([1, 0, 0.5])
    assert (f"| olympiadbench | default@4096 | 0.500 [{lo:.3f}, {hi:.3f}] | 2 | 3 "
            "| b4_default, b5_default |") in text
    assert ("- base, olympiadbench under default@4096: 3 problems, from olympiadbench_a, "
            "olympiadbench_b; olympiadbench_c, olympiadbench_d not yet run (left out of the "
            "mean of the six)") in text
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


def test_the_mean_of_the_six_waits_for_every_part_of_a_split_benchmark(tmp_path):
    """realmath_base.sh scores the default protocol's MATH-500 in two parts and OlympiadBench in
    four (one device call each): the six-benchmark mean appears only once every part is in, and
    a benchmark given whole and in parts at once is refused (its problems repeat)."""
    default = PROTOCOLS["default"].replace(n=1, max_new_tokens=4096)
    m, base = "qwen2.5-coder-1.5b-instruct", tmp_path / "base"
    write_eval(base / "b1_default", {"aime24": {"a0": [1], "a1": [0]},      # .5
                                     "aime25": {"e0": [0], "e1": [0]},      # 0
                                     "amc": {"c0": [1], "c1": [1]},         # 1
                                     "minerva": {"v0": [0], "v1": [1]}},    # .5
               default, m)
    write_eval(base / "b2_default", {"math500_a": {"m0": [1], "m1": [1]}}, default, m)
    write_eval(base / "b8_default", {"math500_b": {"m2": [0], "m3": [1]}}, default, m)  # 3/4
    for call, part, pid, ok in (("b4", "a", "o0", 1), ("b5", "b", "o1", 0), ("b9", "c", "o2", 0)):
        write_eval(base / f"{call}_default", {f"olympiadbench_{part}": {pid: [ok]}}, default, m)
    dirs = [base / n for n in ("b1_default", "b2_default", "b8_default", "b4_default",
                               "b5_default", "b9_default")]
    text = RT.render([], [], dirs)
    assert "| math500 | default@4096 | 0.750 " in text and "| 1 | 4 | b2_default, b8_default |" in text
    assert "| olympiadbench | default@4096 | 0.333 " in text
    assert "olympiadbench_d not yet run (left out of the mean of the six)" in text
    assert "math500 under default@4096: " not in text  # both halves are in
    assert "| mean of the six benchmarks | default@4096 |" not in text
    write_eval(base / "b10_default", {"olympiadbench_d": {"o3": [1]}}, default, m)  # 2/4
    text = RT.render([], [], [*dirs, base / "b10_default"])
    # (.5 + 0 + 1 + .75 + .5 + .5) / 6 = 3.25 / 6
    assert "| mean of the six benchmarks | default@4096 | 0.542 | - | - | - |" in text
    assert "not yet run" not in text
    write_eval(base / "whole", {"math500": {"m0": [1]}}, default, m)
    with pytest.raises(RT.UserError, match="math500 under default@4096 repeats problems"):
        RT.render([], [], [*dirs, base / "whole"])


def test_paired_differences_against_the_untrained_model(study, tmp_path):
    """Table (e): every method minus epoch 0, which the base directories scored with the flow's
    protocols (paper@1024 on aime24, greedy@1024 on the held-out part); the cells the base lacks
    (aime25, amc, math500 here) are notes, and a base run at another length is not used."""
    d, _, _ = study
    paper = dataclasses.replace(PROTOCOLS["paper"], max_new_tokens=1024,
                                n_per_benchmark={"aime24": 2})
    m, base = "qwen2.5-coder-1.5b-instruct", tmp_path / "base"
    write_eval(base / "b3_paper1024", {"aime24": {"p0": [1, 0], "p1": [0, 0], "p2": [0, 0]}},
               paper, m)                                                         # .5, 0, 0
    write_eval(base / "b3_greedy1024", {"realmath_heldout": {f"h{i}": [i == 0] for i in range(10)}},
               HELDOUT_PROTOCOL, m)                                              # h0 only: .1
    # math500 at 4,096 tokens: not the flow's protocol (paper@1024), so no epoch-0 math500
    write_eval(base / "b1_paper", {"math500": {"p0": [1], "p1": [1], "p2": [1]}},
               dataclasses.replace(paper, max_new_tokens=4096), m)
    text = _render(d, base=[base / "b3_paper1024", base / "b3_greedy1024", base / "b1_paper"])
    assert "Each method minus the untrained model (epoch 0" in text
    table = text.split("Each method minus the untrained model")[1]

    def line(bench, method, base_acc, mine, better_worse_tied):
        c = em.paired_comparison(base_acc, mine)
        return (f"| {bench} | {method} | 2 vs 1 | {sum(mine.values()) / len(mine):.3f} | "
                f"{sum(base_acc.values()) / len(base_acc):.3f} | {c.diff:+.3f} [{c.ci_low:+.3f}, "
                f"{c.ci_high:+.3f}] | {c.p_value:.3f} | {len(mine)} (0) | {better_worse_tied} |")

    # heldout: epoch 0 right on h0 only; seed averages as in the reference table's test
    #   prefix_rft 1, .5, .5, 0 x 6, .5: differences 0, .5, .5, 0 x 6, .5 -> +0.15, 3 / 0 / 7
    #   sft_then_rft 1, 1, .5 x 5, 0 x 3: differences 0, 1, .5 x 5, 0 x 3 -> +0.35, 6 / 0 / 4
    h0 = {f"h{i}": float(i == 0) for i in range(10)}
    pr = dict(zip(h0, [1, .5, .5, 0, 0, 0, 0, 0, 0, .5]))
    sr = dict(zip(h0, [1, 1, .5, .5, .5, .5, .5, 0, 0, 0]))
    assert round(em.paired_comparison(h0, pr).diff, 3) == 0.15
    assert round(em.paired_comparison(h0, sr).diff, 3) == 0.35
    assert line("heldout", "prefix_rft", h0, pr, "3 / 0 / 7") in table
    assert line("heldout", "sft_then_rft", h0, sr, "6 / 0 / 4") in table
    # aime24: epoch 0 .5, 0, 0; prefix_rft 1, .75, .25 -> +0.5 (p3, in one seed only, is out of
    # the seed average); sft_then_rft .75, .25, 0 -> +0.167, tied on p2
    a0 = {"p0": .5, "p1": 0, "p2": 0}
    assert round(em.paired_comparison(a0, {"p0": 1, "p1": .75, "p2": .25}).diff, 3) == 0.5
    assert line("aime24", "prefix_rft", a0, {"p0": 1, "p1": .75, "p2": .25}, "3 / 0 / 0") in table
    assert line("aime24", "sft_then_rft", a0, {"p0": .75, "p1": .25, "p2": 0}, "2 / 0 / 1") in table
    rows = [x.split(" | ")[:2] for x in table.splitlines() if x.startswith("| ") and "vs 1" in x]
    assert rows == [["| heldout", "sft_then_rft"], ["| heldout", "prefix_rft"],
                    ["| aime24", "sft_then_rft"], ["| aime24", "prefix_rft"]]
    for lv in ("aime25", "amc"):
        assert f"- paired differences against epoch 0, {lv}: no base results under paper@1024" in text
    assert "- paired differences against epoch 0, math500: no base results under paper@1024" in text
    assert "| math500 |" not in table  # b1_paper's 4,096-token math500 is not epoch 0's cell
    assert "- paired differences against epoch 0, heldout" not in text


def test_main_curves_and_errors(study, tmp_path, capsys):
    d, rows, _ = study
    fig = tmp_path / "curves.png"
    assert RT.main([str(d / "a.json"), str(d / "b.json"), "--samples", str(d / "samples"),
                    "--db", str(d / "mlflow.db"), "--curves", str(fig)]) == 0
    assert fig.stat().st_size > 0 and "| prefix_rft | 2 vs 2 |" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"config\": 1}]")
    assert RT.main([str(bad)]) == 2
    assert capsys.readouterr().err == f"error: {bad}: row 0 lacks date, rc, card\n"
    broken = tmp_path / "samples" / "sft_then_rft-seed1"
    (broken / "flow_heldout").mkdir(parents=True)
    (broken / "run.json").write_text(json.dumps({"mlflow_run_id": rows["sft_then_rft", 1]["mlflow_run_id"]}))
    (broken / "flow_heldout" / SAMPLES_FILE).write_text("not parquet")
    assert RT.main([str(d / "a.json"), "--samples", str(tmp_path / "samples")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken / 'flow_heldout' / SAMPLES_FILE}: not a readable")
    (broken / "run.json").write_text("{}")
    assert RT.main([str(d / "a.json"), "--samples", str(tmp_path / "samples")]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {broken / 'run.json'}: expected the JSON object studies/realmath_samples.py writes")
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


def test_expand_takes_paths_and_quoted_globs_and_names_what_is_missing(tmp_path):
    """The one glob expansion of the real-math scripts' file options (realmath_table.py --steps,
    realmath_mlflow.py rebuild --summary/--steps/--samples): a path, or a glob the shell left;
    folders only with dirs; nothing matching is an error naming the option and the argument."""
    for name in ("a_steps.json", "b_steps.json", "odd[1]_steps.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "c_steps.json").mkdir()  # a folder: not a file
    got = RT.expand([str(tmp_path / "*_steps.json")], "--steps")
    assert [p.name for p in got] == ["a_steps.json", "b_steps.json", "odd[1]_steps.json"]
    odd = tmp_path / "odd[1]_steps.json"
    assert RT.expand([str(odd)], "--steps") == [odd]  # as a glob, [1] would match "odd1_..."
    assert RT.expand([str(tmp_path / "c_*")], "--samples", dirs=True) == [tmp_path / "c_steps.json"]
    assert RT.expand([], "--steps") == []
    for args, what, dirs, message in (
            ([str(tmp_path / "none.json")], "--steps", False, "--steps {}/none.json: no such file"),
            ([str(tmp_path / "z*")], "--summary", False, "--summary {}/z*: no such file"),
            ([str(tmp_path / "a_*")], "--samples", True, "--samples {}/a_*: no such folder")):
        with pytest.raises(RT.UserError) as e:
            RT.expand(args, what, dirs=dirs)
        assert str(e.value) == message.format(tmp_path)
