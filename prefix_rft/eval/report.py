"""Comparing evaluation results of several runs: a Markdown table and a figure.

A run is an `eval` output directory (`summary.json` + `samples.parquet`) or `mlflow:RUN_ID`, a
pipeline run whose evaluation child runs carry `samples.parquet` (the last evaluated epoch, or
`epoch=`). Per benchmark the table shows avg@n with its bootstrap 95% CI for every run, and for
every run after the first the paired difference to the first on the problems both evaluated
(bootstrap CI of the mean per-problem difference and a sign-flip permutation p-value), so "B is
better than A" is backed by problems, not by two overlapping intervals.

The second half serves notebooks/compare_runs.py (the runs of an MLflow experiment side by
side): an overview of the runs, their training curves, the evaluation table with CIs, the paired
differences to a baseline run, and sample completions. Reading MLflow goes through
`prefix_rft.io.tracking.Tracker` (the only module that imports mlflow); the tables are lists of
plain dicts and the figures plain matplotlib `Figure`s.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prefix_rft.errors import UserError
from prefix_rft.io import run_layout


@dataclass
class RunResults:
    name: str
    per_problem: dict[str, dict[str, float]]  # benchmark -> problem id -> accuracy
    n: dict[str, int] = field(default_factory=dict)  # benchmark -> samples per problem
    # pipeline runs (MLflow) only:
    run_id: str | None = None
    method: str | None = None
    epoch: int | None = None
    samples: list[dict] = field(default_factory=list)  # samples.parquet rows, when asked for
    incomplete: list[str] = field(default_factory=list)  # benchmarks left out: shards missing


def load_run(source: str, *, tracking_uri: str | None = None, epoch: int | None = None) -> RunResults:
    if source.startswith("mlflow:"):
        return _load_mlflow(source[len("mlflow:"):], tracking_uri, epoch)
    return _load_dir(Path(source))


def _load_dir(d: Path) -> RunResults:
    from prefix_rft.eval.protocol import SAMPLES_FILE, SUMMARY_FILE, per_problem

    if not (d / SAMPLES_FILE).exists():
        raise UserError(f"{d}: no {SAMPLES_FILE} (expected the output directory of `prefix-rft eval`)")
    n = {}
    if (d / SUMMARY_FILE).exists():
        summary = json.loads((d / SUMMARY_FILE).read_text())
        n = {b: s.get("n") for b, s in summary.get("benchmarks", {}).items()}
    return RunResults(d.name, per_problem(d / SAMPLES_FILE), n)


def _load_mlflow(run_id: str, tracking_uri: str | None, epoch: int | None) -> RunResults:
    from prefix_rft.io.tracking import Tracker, resolve_uri

    res = load_pipeline_run(Tracker(resolve_uri(tracking_uri)), run_id,
                            epoch="last" if epoch is None else epoch)
    res.name = f"{res.name}@epoch{res.epoch}"
    return res


def _fmt(x: float) -> str:
    return f"{100 * x:.1f}"


def comparison_rows(runs: list[RunResults], *, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """One row per benchmark (and 'macro'): each run's mean and CI, each later run's paired
    difference to the first."""
    from prefix_rft.eval.metrics import bootstrap_ci, paired_comparison

    benches = sorted(set().union(*(r.per_problem for r in runs)))
    rows = []
    for b in benches:
        row = {"benchmark": b, "runs": [], "diffs": []}
        for r in runs:
            vals = list(r.per_problem.get(b, {}).values())
            if vals:
                lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
                row["runs"].append({"mean": sum(vals) / len(vals), "ci": (lo, hi), "n": r.n.get(b),
                                    "problems": len(vals)})
            else:
                row["runs"].append(None)
        base = runs[0].per_problem.get(b, {})
        for r in runs[1:]:
            other = r.per_problem.get(b, {})
            if base and other and set(base) & set(other):
                row["diffs"].append(paired_comparison(base, other, n_boot=n_boot, seed=seed))
            else:
                row["diffs"].append(None)
        rows.append(row)
    return rows


def comparison_markdown(runs: list[RunResults], *, names: list[str] | None = None,
                        n_boot: int = 10000, seed: int = 0) -> str:
    names = names or [r.name for r in runs]
    if len(names) != len(runs):
        raise UserError(f"--names: {len(names)} names for {len(runs)} runs")
    rows = comparison_rows(runs, n_boot=n_boot, seed=seed)
    head = ["benchmark"] + [f"{nm} (95% CI)" for nm in names] + [
        f"{nm} - {names[0]} (95% CI, p)" for nm in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    macro = [[] for _ in runs]
    for row in rows:
        cells = [row["benchmark"]]
        for i, cell in enumerate(row["runs"]):
            if cell is None:
                cells.append("-")
                continue
            macro[i].append(cell["mean"])
            n = f" avg@{cell['n']}" if cell.get("n") else ""
            cells.append(f"{_fmt(cell['mean'])} [{_fmt(cell['ci'][0])}, {_fmt(cell['ci'][1])}]{n}")
        for d in row["diffs"]:
            cells.append("-" if d is None else
                         f"{100 * d.diff:+.1f} [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}], "
                         f"p={d.p_value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > 1:
        cells = ["macro"] + [_fmt(sum(m) / len(m)) if m and len(m) == len(rows) else "-"
                             for m in macro]
        cells += ["-"] * (len(runs) - 1)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Scores in %. Paired differences use the problems both runs evaluated "
                 "(per-problem accuracy over samples); CI: bootstrap over problems; p: two-sided "
                 "sign-flip permutation test.")
    return "\n".join(lines) + "\n"


def comparison_figure(runs: list[RunResults], *, names: list[str] | None = None, n_boot: int = 2000,
                      seed: int = 0):
    """Bars of each run's score per benchmark with their bootstrap 95% CIs. A plain matplotlib
    `Figure` (no pyplot state, any backend): `.savefig(path)`, or display it in a notebook."""
    from matplotlib.figure import Figure

    names = names or [r.name for r in runs]
    rows = comparison_rows(runs, n_boot=n_boot, seed=seed)
    if not rows:
        raise UserError(f"no evaluation results to plot in runs {', '.join(names)}")
    fig = Figure(figsize=(max(6, 1.6 * len(rows) * len(runs) / 2 + 2), 4))
    ax = fig.subplots()
    width = 0.8 / len(runs)
    for i, nm in enumerate(names):
        xs, ys, err = [], [], [[], []]
        for j, row in enumerate(rows):
            cell = row["runs"][i]
            if cell is None:
                continue
            xs.append(j + i * width)
            ys.append(100 * cell["mean"])
            err[0].append(100 * (cell["mean"] - cell["ci"][0]))
            err[1].append(100 * (cell["ci"][1] - cell["mean"]))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=nm)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([r["benchmark"] for r in rows])
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------- pipeline runs (MLflow)
# What notebooks/compare_runs.py shows. Reading MLflow goes through `prefix_rft.io.tracking.Tracker`
# (any object with its `pipeline_runs`, `eval_runs`, `run_info`, `download_artifact` and
# `metric_history` methods); everything below that is plain data in, plain data out. The tag,
# param and metric names are `prefix_rft.io.run_layout`'s, the ones the pipeline's steps write.

KEY_PARAMS = (run_layout.METHOD_PARAM, "model.name_or_path", "data.train", "seed", "pipeline.epochs",
              "sft.epochs", "rl.steps", "sft.optim.lr", "rl.optim.lr", "rollout.group_size",
              "rollout.n_prefixed", "eval.n_samples")


def locate_tracking_uri(uri: str | None, roots) -> str:
    """The tracking URI to read: `uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db`
    (what `make demo` writes). A relative sqlite path is looked for under each of `roots` in
    order; a sqlite file that does not exist is an error here, because MLflow would silently
    create an empty database and report an empty experiment."""
    import os

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri[len("sqlite:///"):])
    candidates = [path] if path.is_absolute() else [Path(r) / path for r in roots]
    for c in candidates:
        if c.is_file():
            return f"sqlite:///{c.resolve()}"
    raise UserError(f"no MLflow database at {' or '.join(str(c) for c in candidates)} "
                    "(run `make demo` first, or set tracking_uri)")


def run_labels(runs: list[dict]) -> list[str]:
    """Each run's name (`<method>-<metaflow run id>` by default), with the first 8 characters
    of its run id appended where names repeat, so every label is unique."""
    names = [r.get("name") or r["run_id"][:8] for r in runs]
    return [f"{nm} ({r['run_id'][:8]})" if names.count(nm) > 1 else nm
            for nm, r in zip(names, runs)]


def _iso(ms: int | None) -> str | None:
    import datetime as dt

    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def runs_overview(runs: list[dict], params=KEY_PARAMS) -> list[dict]:
    """One row per run (records of `Tracker.pipeline_runs`): label, id (and the original id of
    a run rebuilt from a committed record, when some run is one), method, status, start, best
    epoch and its macro score, and the `params` that at least one run has."""
    present = [p for p in params
               if p != run_layout.METHOD_PARAM and any(p in r["params"] for r in runs)]
    original = run_layout.ORIGINAL_RUN_ID_TAG
    rebuilt = any(original in r["tags"] for r in runs)
    rows = []
    for label, r in zip(run_labels(runs), runs):
        rows.append({"run": label, "run_id": r["run_id"]}
                    | ({original: r["tags"].get(original)} if rebuilt else {})
                    | {"method": r["params"].get(run_layout.METHOD_PARAM),
                       "status": r["status"], "started": _iso(r.get("start_time")),
                       "best_epoch": _best_epoch(r),
                       "best_macro": r["metrics"].get(run_layout.BEST_MACRO_METRIC)}
                    | {p: r["params"].get(p) for p in present})
    return rows


def _best_epoch(run: dict) -> int | None:
    """A run record's best epoch (its `best_epoch` tag), None before its evaluation is joined."""
    best = run["tags"].get(run_layout.BEST_EPOCH_TAG)
    return int(best) if best not in (None, "") else None


def find_run(runs: list[dict], key: str) -> int:
    """Index of the run whose id, else label, else method (the first such run) is `key`."""
    labels = run_labels(runs)
    for matches in (lambda i: runs[i]["run_id"] == key, lambda i: labels[i] == key,
                    lambda i: runs[i]["params"].get(run_layout.METHOD_PARAM) == key):
        for i in range(len(runs)):
            if matches(i):
                return i
    raise UserError(f"no run {key!r} among {', '.join(labels)} (give a run id, run name or method)")


def latest_cells(evals: list[dict]) -> list[dict]:
    """One evaluation child run per (epoch, benchmark, shard): the newest, since an evaluation
    that ran again (`resume plan_eval`) supersedes the older one."""
    keep: dict[tuple, dict] = {}
    for e in sorted(evals, key=lambda e: e.get("start_time") or 0):
        keep[e["epoch"], e["benchmark"], e["shard"]] = e
    return sorted(keep.values(), key=lambda e: (e["epoch"], e["benchmark"], e["shard"]))


def choose_epoch(epochs, which: str | int, *, best: int | None, run: str) -> int:
    """`which`: "last" (the highest evaluated epoch), "best" (the run's `best_epoch` tag) or an
    epoch number; it must be among the evaluated `epochs`."""
    epochs = sorted(set(epochs))
    if not epochs:
        raise UserError(f"run {run}: no evaluation child runs")
    if which == "last":
        return epochs[-1]
    if which == "best":
        if best is None:
            raise UserError(f"run {run}: no best epoch (tag best_epoch); evaluated: {epochs}")
        want = best
    else:
        want = int(which)
    if want not in epochs:
        raise UserError(f"run {run}: no evaluation of epoch {want} (evaluated: {epochs})")
    return want


def complete_cells(cells: list[dict]) -> tuple[dict[str, list[dict]], list[str]]:
    """benchmark -> its child runs, for the benchmarks whose shards ("k/n") are all there;
    and the benchmarks left out because some shard is missing (its task failed)."""
    by_bench: dict[str, list[dict]] = {}
    for c in cells:
        by_bench.setdefault(c["benchmark"], []).append(c)
    ok, missing = {}, []
    for bench, parts in sorted(by_bench.items()):
        shards = run_layout.shard_count(parts[0]["shard"])
        if len({p["shard"] for p in parts}) == shards:
            ok[bench] = parts
        else:
            missing.append(bench)
    return ok, missing


def load_pipeline_run(tracker, run: dict | str, *, epoch: str | int = "last",
                      name: str | None = None, samples: bool = False) -> RunResults:
    """One pipeline run's evaluation at `epoch` ("last", "best" or a number): per-problem
    accuracy per benchmark from its evaluation child runs' `samples.parquet` (shards merged;
    re-run evaluations supersede older ones), with all sample rows when `samples`."""
    import pyarrow.parquet as pq

    from prefix_rft.eval.protocol import SAMPLES_FILE, problem_accuracy
    from prefix_rft.io.tracking import run_record

    if isinstance(run, str):
        run = run_record(tracker.run_info(run))
    name = name or run["name"] or run["run_id"]
    cells = latest_cells(tracker.eval_runs(run["run_id"]))
    want = choose_epoch([c["epoch"] for c in cells], epoch, best=_best_epoch(run), run=name)
    by_bench, missing = complete_cells([c for c in cells if c["epoch"] == want])
    columns = None if samples else ["benchmark", "problem_id", "correct"]
    records, n = [], {}
    with tempfile.TemporaryDirectory(prefix="prefix-rft-report-") as tmp:
        for bench, parts in by_bench.items():
            for c in parts:
                path = tracker.download_artifact(c["run_id"], SAMPLES_FILE, Path(tmp) / c["run_id"])
                records += pq.read_table(path, columns=columns).to_pylist()
            n[bench] = int(parts[0]["params"].get(run_layout.protocol_param("n"), 0) or 0) or None
    return RunResults(name, problem_accuracy(records), n, run_id=run["run_id"],
                      method=run["params"].get(run_layout.METHOD_PARAM), epoch=want,
                      samples=records if samples else [], incomplete=missing)


def eval_table(runs: list[RunResults], *, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """One row per (benchmark, run): mean per-problem accuracy (avg@n), its bootstrap 95% CI
    over problems, the number of problems and of samples per problem; then, with more than one
    benchmark, a `macro` row per run (unweighted mean over the benchmarks it has all of)."""
    rows = comparison_rows(runs, n_boot=n_boot, seed=seed)
    out = []
    for row in rows:
        for r, cell in zip(runs, row["runs"]):
            if cell is not None:
                out.append({"benchmark": row["benchmark"], "run": r.name, "method": r.method,
                            "epoch": r.epoch, "avg": cell["mean"], "ci_low": cell["ci"][0],
                            "ci_high": cell["ci"][1], "problems": cell["problems"],
                            "n": cell["n"]})
    if len(rows) > 1:
        for i, r in enumerate(runs):
            means = [row["runs"][i]["mean"] for row in rows if row["runs"][i] is not None]
            if len(means) == len(rows):
                out.append({"benchmark": "macro", "run": r.name, "method": r.method,
                            "epoch": r.epoch, "avg": sum(means) / len(means), "ci_low": None,
                            "ci_high": None, "problems": None, "n": None})
    return out


def method_table(runs: list[RunResults], *, alpha: float = 0.05) -> list[dict]:
    """Runs of the same method (its seeds) pooled: one row per (benchmark, method) with the
    number of runs, each run's avg@n, their mean, SD and Student's t CI over runs
    (`eval_metrics.seed_summary`; one run: no SD or CI); then, with more than one benchmark, a
    `macro` row per method over the runs that have every benchmark (each run's unweighted mean
    over benchmarks, as in `eval_table`). Methods in order of first appearance."""
    from prefix_rft.eval.metrics import seed_summary

    benches = sorted(set().union(*(r.per_problem for r in runs)))
    keys = [*benches, "macro"] if len(benches) > 1 else benches
    per_run = []  # (method, {benchmark or "macro": the run's avg@n})
    for r in runs:
        avgs = {b: sum(v) / len(v) for b in benches
                if (v := list(r.per_problem.get(b, {}).values()))}
        if len(benches) > 1 and len(avgs) == len(benches):
            avgs["macro"] = sum(avgs.values()) / len(avgs)
        per_run.append((r.method or r.name, avgs))

    out = []
    for key in keys:
        for m in dict.fromkeys(m for m, _ in per_run):
            values = [avgs[key] for mm, avgs in per_run if mm == m and key in avgs]
            if values:
                s = seed_summary(values, alpha=alpha)
                out.append({"benchmark": key, "method": m, "runs": s.n,
                            "per_run": ", ".join(f"{v:.4f}" for v in values), "mean": s.mean,
                            "sd": s.sd, "ci_low": s.ci[0] if s.ci else None,
                            "ci_high": s.ci[1] if s.ci else None})
    return out


def paired_table(runs: list[RunResults], baseline: int = 0, *, n_boot: int = 10000,
                 seed: int = 0) -> list[dict]:
    """Every other run against `runs[baseline]`, benchmark by benchmark, on the problems both
    evaluated (`eval_metrics.paired_comparison`): diff = other - baseline, its bootstrap 95% CI,
    the sign-flip p-value and the problems each run did better on."""
    from prefix_rft.eval.metrics import paired_comparison

    base = runs[baseline]
    out = []
    for bench in sorted(set().union(*(r.per_problem for r in runs))):
        a = base.per_problem.get(bench, {})
        for i, r in enumerate(runs):
            b = r.per_problem.get(bench, {})
            if i == baseline or not (set(a) & set(b)):
                continue
            d = paired_comparison(a, b, n_boot=n_boot, seed=seed)
            out.append({"benchmark": bench, "run": r.name, "baseline": base.name,
                        "run_avg": d.mean_b, "baseline_avg": d.mean_a, "diff": d.diff,
                        "ci_low": d.ci_low, "ci_high": d.ci_high, "p_value": d.p_value,
                        "problems": d.n_problems, "run_better": d.wins_b,
                        "baseline_better": d.wins_a, "ties": d.ties})
    return out


def sample_rows(runs: list[RunResults], *, problems: int = 3, chars: int = 500) -> list[dict]:
    """Completions side by side: per benchmark, up to `problems` problem ids that every run has
    (those the runs disagree on first, then by id), each run's first sample of it (completion
    cut to `chars` characters, extracted answer, correct). Runs whose samples carry no
    completion text (slim copies: benchmark, problem_id and correct only) are an error naming
    them."""
    bare = [r.name for r in runs if r.samples and "completion" not in r.samples[0]]
    if bare:
        others = ("; leave them out (`run_ids`) to see the other runs' completions"
                  if len(bare) < len(runs) else "")
        raise UserError(f"no completions to show: the samples of {', '.join(bare)} carry no "
                        "completion text (slim copies with only benchmark, problem_id and "
                        f"correct, as in runs rebuilt from docs/results){others}")
    out = []
    benches = sorted(set().union(*({s["benchmark"] for s in r.samples} for r in runs)))
    for bench in benches:
        first: list[dict[str, dict]] = []  # per run: problem id -> its lowest-index sample
        for r in runs:
            got: dict[str, dict] = {}
            for s in r.samples:
                if s["benchmark"] == bench:
                    pid = s["problem_id"]
                    if pid not in got or s["sample"] < got[pid]["sample"]:
                        got[pid] = s
            first.append(got)
        common = set.intersection(*(set(g) for g in first)) if first else set()
        pick = sorted(common, key=lambda p: (len({bool(g[p]["correct"]) for g in first}) == 1, p))
        for pid in pick[:problems]:
            for r, g in zip(runs, first):
                s = g[pid]
                text = s["completion"] or ""
                out.append({"benchmark": bench, "problem_id": pid, "run": r.name,
                            "sample": s["sample"], "correct": bool(s["correct"]),
                            "extracted": s["extracted"],
                            "completion": text if len(text) <= chars else text[:chars] + " [...]"})
    return out


def training_histories(tracker, runs: list[dict],
                       keys=run_layout.TRAINING_CURVES) -> dict[str, dict]:
    """label -> metric -> [(training step, value)] for each run (records of
    `Tracker.pipeline_runs`) and each key in `keys` it logged."""
    out = {}
    for label, r in zip(run_labels(runs), runs):
        out[label] = {k: h for k in keys if (h := tracker.metric_history(r["run_id"], k))}
    return out


def training_curves_figure(histories: dict[str, dict[str, list[tuple[int, float]]]],
                           keys=run_layout.TRAINING_CURVES, *, groups: dict[str, str] | None = None,
                           max_columns: int = 4):
    """One panel per metric of `keys` that some run logged (x = training step; at most
    `max_columns` panels a row), one line per run, in the same colour in every panel.

    `groups` (run label -> group, e.g. the method) draws one line per group instead: the mean
    over its runs at each step (of the runs that logged that step) with a band from their minimum
    to their maximum, labelled "group (n runs)". Runs not in `groups` are their own group.
    A plain matplotlib `Figure`."""
    from matplotlib.figure import Figure

    present = [k for k in keys if any(h.get(k) for h in histories.values())]
    if not present:
        raise UserError(f"no training curves: none of the runs ({', '.join(histories) or 'none'}) "
                        f"logged any of {', '.join(keys)}")
    members: dict[str, list[str]] = {}
    for label in histories:
        members.setdefault((groups or {}).get(label, label), []).append(label)
    colour = {g: f"C{i % 10}" for i, g in enumerate(members)}
    ncols = min(len(present), max_columns)
    nrows = -(-len(present) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(present):]:
        fig.delaxes(ax)
    for ax, key in zip(axes, present):
        for g, labels in members.items():
            by_step: dict[int, list[float]] = {}
            for label in labels:
                for step, value in histories[label].get(key) or []:
                    by_step.setdefault(step, []).append(value)
            if not by_step:
                continue
            steps = sorted(by_step)
            mean = [sum(by_step[t]) / len(by_step[t]) for t in steps]
            name = g if groups is None else f"{g} ({len(labels)} run{'s' * (len(labels) > 1)})"
            ax.plot(steps, mean, marker="." if groups is None else None, label=name, color=colour[g])
            if groups is not None and len(labels) > 1:
                ax.fill_between(steps, [min(by_step[t]) for t in steps],
                                [max(by_step[t]) for t in steps], color=colour[g], alpha=0.2,
                                linewidth=0)
        ax.set_title(key)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig
