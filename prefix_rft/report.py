"""Comparing evaluation results of several runs: a Markdown table and a figure.

A run is an `eval` output directory (`summary.json` + `samples.parquet`) or `mlflow:RUN_ID`, a
pipeline run whose evaluation child runs carry `samples.parquet` (the last evaluated epoch, or
`epoch=`). Per benchmark the table shows avg@n with its bootstrap 95% CI for every run, and for
every run after the first the paired difference to the first on the problems both evaluated
(bootstrap CI of the mean per-problem difference and a sign-flip permutation p-value), so "B is
better than A" is backed by problems, not by two overlapping intervals.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prefix_rft.errors import UserError


@dataclass
class RunResults:
    name: str
    per_problem: dict[str, dict[str, float]]  # benchmark -> problem id -> accuracy
    n: dict[str, int] = field(default_factory=dict)  # benchmark -> samples per problem


def load_run(source: str, *, tracking_uri: str | None = None, epoch: int | None = None) -> RunResults:
    if source.startswith("mlflow:"):
        return _load_mlflow(source[len("mlflow:"):], tracking_uri, epoch)
    return _load_dir(Path(source))


def _load_dir(d: Path) -> RunResults:
    from prefix_rft.benchmark_eval import SAMPLES_FILE, SUMMARY_FILE, per_problem

    if not (d / SAMPLES_FILE).exists():
        raise UserError(f"{d}: no {SAMPLES_FILE} (expected the output directory of `prefix-rft eval`)")
    n = {}
    if (d / SUMMARY_FILE).exists():
        summary = json.loads((d / SUMMARY_FILE).read_text())
        n = {b: s.get("n") for b, s in summary.get("benchmarks", {}).items()}
    return RunResults(d.name, per_problem(d / SAMPLES_FILE), n)


def _load_mlflow(run_id: str, tracking_uri: str | None, epoch: int | None) -> RunResults:
    from mlflow import MlflowClient

    from prefix_rft.benchmark_eval import per_problem
    from prefix_rft.tracking import resolve_uri

    client = MlflowClient(resolve_uri(tracking_uri))
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run_id}'")
    children = [c for c in children if "epoch" in c.data.tags and "benchmark" in c.data.tags]
    if not children:
        raise UserError(f"mlflow:{run_id}: no evaluation child runs")
    epochs = sorted({int(c.data.tags["epoch"]) for c in children})
    want = epochs[-1] if epoch is None else epoch
    if want not in epochs:
        raise UserError(f"mlflow:{run_id}: no evaluation of epoch {want} (evaluated: {epochs})")
    out: dict[str, dict[str, float]] = {}
    n: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in children:
            if int(c.data.tags["epoch"]) != want:
                continue
            path = client.download_artifacts(c.info.run_id, "samples.parquet", tmp + "/" + c.info.run_id)
            bench = c.data.tags["benchmark"]
            out[bench] = per_problem(path).get(bench, {})
            n[bench] = int(c.data.params.get("protocol.n", 0) or 0)
    return RunResults(f"{parent.info.run_name}@epoch{want}", out, n)


def _fmt(x: float) -> str:
    return f"{100 * x:.1f}"


def comparison_rows(runs: list[RunResults], *, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """One row per benchmark (and 'macro'): each run's mean and CI, each later run's paired
    difference to the first."""
    from prefix_rft.eval_metrics import bootstrap_ci, paired_comparison

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


def comparison_figure(runs: list[RunResults], *, names: list[str] | None = None, n_boot: int = 2000):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = names or [r.name for r in runs]
    rows = comparison_rows(runs, n_boot=n_boot)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows) * len(runs) / 2 + 2), 4))
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
    ax.legend()
    fig.tight_layout()
    return fig
