"""The real-math study's MLflow experiment, rebuilt from the text committed under docs/results/.

The study's MLflow file is kept outside git and may be lost (it was, on 2026-12-08); its record
is the committed text: per run one row of a summary file (realmath_sN_summary.json), one steps
file (realmath_sN_steps.json) and one slim samples folder (realmath_samples*/<config>-seed<N>/).
This writes an MLflow experiment from those files alone, laid out as the flow lays out a run
(prefix_rft/io/run_layout.py), so that prefix_rft.io.tracking, prefix_rft.eval.report and
notebooks/compare_runs.py read it as they read the flow's runs:

    python studies/realmath_mlflow.py rebuild --out /tmp/realmath-mlflow

writes /tmp/realmath-mlflow/mlflow.db (sqlite) and /tmp/realmath-mlflow/mlartifacts/ (the
artifacts; the database names them by absolute path, so rebuild where you will read it). Then
open the notebook with the parameters
    tracking_uri = "sqlite:////tmp/realmath-mlflow/mlflow.db"
    experiment = "prefix-rft-realmath"

One parent run per committed run (a run in several summary files is counted once, by its MLflow
run id, as studies/realmath_table.py counts it), with:
  name      <method>-<Metaflow run id>, as the flow names it (the run that started it: the
            row's resumed_from for a resumed run, else its metaflow_run_id)
  tags      method, config_hash, the Metaflow run ids (metaflow.run_id and, for a resumed run,
            metaflow.resumed, metaflow.latest_run_id, metaflow.resume.<id>), best_epoch;
            original_run_id (the run id the flow gave it; MLflow gives the copy a new one),
            rebuilt_from (the files and the git commit they were read at), and a description
            (mlflow.note.content) saying the same
  params    the row's config file resolved as the flow resolves it (steps.start), with the row's
            seed and `set` overrides, at the checkout the rebuild runs in (the run's own params
            are lost; the flow's pipeline.checkpoint_root override is not recorded and keeps
            its default)
  metrics   every per-step metric of the steps file at its training steps (eval/accuracy at
            eval_accuracy_steps), and the row's final scores as the flow's eval cells log them
            at step = epoch (eval/<benchmark>/avg_at_<n>, ci_low, ci_high; eval/best_macro)
  times     the row's date is the end, minus its wall_s the start; metric timestamps are placed
            in between (start + step seconds; eval metrics at the end), not recorded ones
and one FINISHED evaluation child run per benchmark of the run's samples folder
(eval-<benchmark>-epoch<e>; tags epoch, benchmark, shard 0/1; params protocol.n, benchmark,
epoch; metrics avg_at_n, eval/<benchmark>/avg_at_<n>, ci_low, ci_high, num_problems at step
= epoch) whose artifact samples.parquet is the committed slim copy (benchmark, problem_id,
correct: no completions). The samples must agree with the row: each problem has n samples, n
is the row's avg_at_<n>, and their mean per-problem accuracy is the row's score.

Not rebuilt (lost with the MLflow file): system metrics, data/* metrics, the checkpoint tags,
LoggedModels, dataset inputs, the parent run's artifacts, the full evaluation protocol and the
completions. A run of the summaries without a steps file or a samples folder is rebuilt
without what is missing, with a note. Every input is read and checked before anything is
written (a wrong one: exit 2, nothing written); DIR must not hold mlflow.db or mlartifacts/
yet (--replace deletes them first).

Deterministic except for what MLflow randomises (the run ids, and the artifact folders named by
them). Uses the MLflow client (log_batch with explicit steps and timestamps), never SQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "studies"))
import realmath_table as rt  # noqa: E402
import study_table as st  # noqa: E402
from realmath_steps import EXPERIMENT  # noqa: E402

from prefix_rft.errors import UserError  # noqa: E402
from prefix_rft.io import run_layout  # noqa: E402

SUMMARIES = "docs/results/realmath_s*_summary.json"
STEPS = "docs/results/realmath_s*_steps.json"
SAMPLES = "docs/results/realmath_samples*/"
NOTE_TAG = "mlflow.note.content"  # MLflow's run description (mlflow.utils.mlflow_tags)
SCRIPT = "studies/realmath_mlflow.py"


def rel(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def commit_of(paths: list[Path]) -> str:
    """"commit <sha>" of the checkout, with "+ uncommitted changes to ..." when an input file
    differs from it or is not in git, and "+ files outside the repository: ..."; "no git
    commit" where git cannot say."""
    inside = [rel(p) for p in paths if Path(p).resolve().is_relative_to(ROOT)]
    outside = [str(p) for p in paths if not Path(p).resolve().is_relative_to(ROOT)]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", *inside], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout if inside else ""
    except (OSError, subprocess.CalledProcessError):
        return "no git commit"
    dirty = sorted({line[3:] for line in changed.splitlines() if line.strip()})
    return (f"commit {sha}" + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")
            + (f" + files outside the repository: {', '.join(outside)}" if outside else ""))


def ms(iso: str) -> int:
    """Milliseconds since the epoch of an ISO date (a summary row's `date`)."""
    try:
        return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)
    except (TypeError, ValueError):
        raise UserError(f"date {iso!r}: not an ISO date") from None


def flow_config(row: dict):
    """The row's config resolved as the flow resolves it (`steps.start.resolve_flow_config`)
    with the row's seed and `set` overrides."""
    import yaml

    from steps.start import resolve_flow_config

    path = ROOT / row["config"]
    if not path.is_file():
        raise UserError(f"run {row.get('mlflow_run_id')}: no config file {row['config']}")
    return resolve_flow_config(yaml.safe_load(path.read_text()) or {}, seed=row.get("seed"),
                               overrides=row.get("set") or None, source=row["config"])


def trained_epochs(row: dict) -> list[int]:
    return sorted({int(e) for s in (row.get("scores") or {}).values() for e in s if int(e) >= 1})


def cell_samples(path: Path, bench: str) -> dict:
    """A slim samples.parquet of one benchmark: its rows, samples per problem (n), the mean
    per-problem accuracy and the number of problems; a file that is not one is a UserError."""
    import pyarrow.parquet as pq

    from prefix_rft.eval.protocol import problem_accuracy

    try:
        records = pq.read_table(path, columns=["benchmark", "problem_id", "correct"]).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types; all mean a bad file
        raise UserError(f"{path}: not a readable samples file ({e})") from None
    if {r["benchmark"] for r in records} != {bench}:
        raise UserError(f"{path}: expected only benchmark {bench} (its folder's name), found "
                        f"{sorted({str(r['benchmark']) for r in records})}")
    counts: dict[str, int] = {}
    for r in records:
        counts[r["problem_id"]] = counts.get(r["problem_id"], 0) + 1
    if len(set(counts.values())) != 1:
        raise UserError(f"{path}: problems with different numbers of samples "
                        f"({sorted(set(counts.values()))})")
    acc = problem_accuracy(records)[bench]
    return {"n": next(iter(counts.values())), "avg": sum(acc.values()) / len(acc),
            "problems": len(acc), "correct": sum(bool(r["correct"]) for r in records)}


def child_cells(row: dict, folder: Path | None, default_epoch: int) -> list[dict]:
    """The evaluation cells of a run's samples folder (flow_<benchmark>/samples.parquet),
    checked against the row's scores: benchmark, epoch, n, file, avg, problems, ci."""
    from prefix_rft.eval.protocol import SAMPLES_FILE

    if folder is None:
        return []
    cells = []
    for path in sorted(folder.glob(f"flow_*/{SAMPLES_FILE}")):
        bench = path.parent.name.removeprefix("flow_")
        got = cell_samples(path, bench)
        scores = (row.get("scores") or {}).get(bench) or {}
        trained = [int(e) for e in scores if int(e) >= 1]
        epoch = max(trained) if trained else default_epoch
        s = scores.get(str(epoch))
        if s is not None:
            want_n = s.get("metric", "").removeprefix("avg_at_")
            if want_n != str(got["n"]) or abs(s["value"] - got["avg"]) > 1e-9:
                raise UserError(f"{path}: avg_at_{got['n']} = {got['avg']!r} over "
                                f"{got['problems']} problems, but run {row['mlflow_run_id']}'s "
                                f"row says {s.get('metric')} = {s['value']!r} for {bench} "
                                f"epoch {epoch}: not this run's samples")
        cells.append(got | {"benchmark": bench, "epoch": epoch, "file": path,
                            "ci": s["ci"] if s else None})
    return cells


def first_metaflow_run(row: dict) -> str | None:
    return row.get("resumed_from") or row.get("metaflow_run_id")


def parent_tags(row: dict, cfg, source: str, note: str) -> dict:
    tags = {run_layout.METHOD_TAG: row.get("method") or cfg.method,
            run_layout.CONFIG_HASH_TAG: cfg.config_hash(),
            run_layout.ORIGINAL_RUN_ID_TAG: row["mlflow_run_id"],
            run_layout.REBUILT_FROM_TAG: source, NOTE_TAG: note,
            "metaflow.run_id": first_metaflow_run(row)}
    if row.get("resumed_from") and row.get("metaflow_run_id"):  # as steps.common.mark_resumed
        latest = row["metaflow_run_id"]
        tags |= {"metaflow.resumed": "true", "metaflow.latest_run_id": latest,
                 f"metaflow.resume.{latest}": f"origin={row['resumed_from']}"}
    return {k: v for k, v in tags.items() if v is not None}


def final_scores(row: dict) -> list[dict]:
    """The row's scores as the flow's eval cells: epoch, benchmark, metric, value, ci."""
    return [{"epoch": int(e), "benchmark": b, "metric": s["metric"], "value": s["value"],
             "ci": s.get("ci")}
            for b, by_epoch in sorted((row.get("scores") or {}).items())
            for e, s in sorted(by_epoch.items(), key=lambda x: int(x[0]))]


def plan(summaries: list[Path], steps: list[Path], samples: list[Path]
         ) -> tuple[list[dict], list[str]]:
    """Every committed run read and checked before anything is written, oldest first: its row,
    resolved config, per-step histories (None without a steps file), evaluation cells (checked
    against the row) and the files it comes from; and notes on what is missing."""
    rows = st.load(summaries)  # a run in several files counted once, by its MLflow run id
    where: dict[str, Path] = {}
    for path in summaries:
        for r in st.read_rows(path):
            if r.get("mlflow_run_id"):
                where.setdefault(r["mlflow_run_id"], path)
    curves = rt.StepsCurves(steps)  # run id -> (steps file, metric -> [(step, value)])
    folders = rt.sample_dirs(samples)  # run id -> its samples folder
    runs, notes = [], []
    for row in sorted(rows, key=lambda r: (r["date"], r.get("mlflow_run_id") or "")):
        rid = row.get("mlflow_run_id")
        if not rid:
            notes.append(f"{row['config']} seed {row.get('seed')} ({row['date']}): no MLflow "
                         "run id in its row: not rebuilt")
            continue
        steps_file, hist = curves.runs.get(rid, (None, None))
        if hist is None:
            notes.append(f"run {rid}: no steps file, so no training metrics")
        if rid not in folders:
            notes.append(f"run {rid}: no samples folder, so no evaluation child runs")
        cfg = flow_config(row)
        if (row.get("method") or cfg.method) != cfg.method:
            raise UserError(f"run {rid}: the row's method {row['method']} is not "
                            f"{row['config']}'s {cfg.method}")
        epochs = trained_epochs(row)
        cells = child_cells(row, folders.get(rid), epochs[-1] if epochs else cfg.pipeline.epochs)
        files = [f for f in (where[rid], steps_file, folders.get(rid)) if f is not None]
        runs.append({"row": row, "cfg": cfg, "hist": hist, "cells": cells, "files": files})
    return runs, notes


def write_run(tracker, exp_id: str, run: dict, commit: str) -> dict:
    """One planned run (`plan`) as a parent run and its evaluation child runs; what was
    written: run_id, original_run_id, method, seed, metrics, steps, benchmarks."""
    from prefix_rft.core.dicts import flatten
    from prefix_rft.io.redact import redact_data
    from prefix_rft.io.tracking import metric_items
    from steps.evaluate import best_epoch

    row, cfg, hist, cells = run["row"], run["cfg"], run["hist"] or {}, run["cells"]
    rid, method = row["mlflow_run_id"], cfg.method
    end = ms(row["date"])
    start = end - 1000 * int(row.get("wall_s") or 0)
    origin = f"{', '.join(rel(p) for p in run['files'])} at {commit}"
    note = (f"Rebuilt by {SCRIPT} from the study's committed record ({origin}); not logged by "
            f"the flow. The flow's MLflow run was {rid} (Metaflow run "
            f"{first_metaflow_run(row)}"
            + (f", resumed as {row['metaflow_run_id']}" if row.get("resumed_from") else "")
            + f", finished {row['date']}). Params: {row['config']} resolved with seed "
            f"{row.get('seed')}"
            + (f" and --set {row['set']!r}" if row.get("set") else "")
            + " at that commit (pipeline.checkpoint_root: not recorded, the default). Training "
            "metrics from the steps file, final scores from the summary row; metric timestamps "
            "are placed (start + step seconds), not recorded. Each evaluation child run's "
            "samples.parquet is the slim copy (benchmark, problem_id, correct): no completions. "
            "Lost with the MLflow file: system and data metrics, checkpoint tags, LoggedModels, "
            "dataset inputs, the parent run's artifacts, the evaluation protocols.")
    run_id = tracker.client.create_run(
        exp_id, start_time=start, run_name=cfg.tracking.run_name
        or f"{method}-{first_metaflow_run(row)}", tags=parent_tags(row, cfg, origin, note)
    ).info.run_id
    tracker.log_params(run_id, redact_data(flatten(cfg.to_dict())))
    items = []
    for key, values in sorted(hist.items()):  # the trainer's rows at their steps
        items += [{"key": key, "value": v, "timestamp": start + 1000 * step, "step": step}
                  for step, v in values]
    scores = final_scores(row)
    for cell in scores:  # what the flow's eval cells log on the parent run (steps.evaluate)
        b, e = cell["benchmark"], cell["epoch"]
        vals = {run_layout.eval_metric(b, cell["metric"]): cell["value"]}
        if cell["ci"]:
            vals |= {run_layout.eval_metric(b, "ci_low"): cell["ci"][0],
                     run_layout.eval_metric(b, "ci_high"): cell["ci"][1]}
        items += [m | {"timestamp": end} for m in metric_items(vals, e)]
    best, macro, _ = best_epoch(scores)
    if best is not None:
        items += [m | {"timestamp": end}
                  for m in metric_items({run_layout.BEST_MACRO_METRIC: macro}, best)]
        tracker.set_tags(run_id, {run_layout.BEST_EPOCH_TAG: best})
    tracker.log_metric_items(run_id, items)

    for i, c in enumerate(cells):  # one child per (epoch, benchmark), as steps.evaluate logs it
        b, e, n = c["benchmark"], c["epoch"], c["n"]
        t = end - 1000 * (len(cells) - i)
        src = f"{rel(c['file'])} at {commit}"
        child = tracker.client.create_run(exp_id, start_time=t, run_name=run_layout.eval_run_name(
            b, e), tags={run_layout.PARENT_TAG: run_id, run_layout.EPOCH: str(e),
                         run_layout.BENCHMARK: b, run_layout.SHARD: run_layout.UNSHARDED,
                         run_layout.REBUILT_FROM_TAG: src,
                         NOTE_TAG: f"Rebuilt by {SCRIPT} from {src} (a slim copy: benchmark, "
                         f"problem_id, correct; no completions), for run {rid}."}).info.run_id
        tracker.log_params(child, run_layout.protocol_params({"n": n}) | {
            run_layout.BENCHMARK: b, run_layout.EPOCH: e})
        vals = {"avg_at_n": c["avg"], run_layout.metric_key(b, n): c["avg"],
                "num_problems": c["problems"]}
        if c["ci"]:
            vals |= {"ci_low": c["ci"][0], "ci_high": c["ci"][1]}
        tracker.log_metric_items(child, [m | {"timestamp": t} for m in metric_items(vals, e)])
        tracker.log_artifact(child, c["file"])  # samples.parquet, at the artifact root
        tracker.client.set_terminated(child, "FINISHED", end_time=t + 500)
    status = row.get("status") or ("FINISHED" if row.get("rc") == 0 else "FAILED")
    if status != "RUNNING":
        tracker.client.set_terminated(run_id, status, end_time=end)
    return {"run_id": run_id, "original_run_id": rid, "method": method, "seed": row.get("seed"),
            "metrics": len(hist), "steps": max((len(v) for v in hist.values()), default=0),
            "benchmarks": [c["benchmark"] for c in cells]}


def rebuild(out: Path, summaries: list[Path], steps: list[Path], samples: list[Path], *,
            experiment: str = EXPERIMENT, replace: bool = False) -> tuple[list[dict], list[str]]:
    """Write out/mlflow.db and out/mlartifacts from the committed files (all read and checked
    first: nothing is written when one is wrong). Returns one dict per run (`write_run`'s) and
    notes on what was missing."""
    from prefix_rft.io.tracking import Tracker

    runs, notes = plan(summaries, steps, samples)
    db, arts = out / "mlflow.db", out / "mlartifacts"
    there = [p for p in (db, arts) if p.exists()]
    if there and not replace:
        raise UserError(f"{', '.join(map(str, there))} already there: rebuild into an empty "
                        "folder, or pass --replace to delete them first")
    for p in there:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    commit = commit_of([*summaries, *steps, *samples])
    out.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(f"sqlite:///{db.resolve()}", check=False)
    exp_id = tracker.experiment_id(experiment)  # artifacts in out/mlartifacts
    tracker.client.set_experiment_tag(exp_id, NOTE_TAG, (
        f"The real-math study (configs/realmath/README.md), rebuilt by {SCRIPT} from the text "
        f"committed under docs/results/ at {commit}. Run ids are new; each run's tag "
        f"{run_layout.ORIGINAL_RUN_ID_TAG} is the id the flow gave it."))
    return [write_run(tracker, exp_id, run, commit) for run in runs], notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rebuild", help="write DIR/mlflow.db and DIR/mlartifacts from the "
                       "committed files", description="Write DIR/mlflow.db and DIR/mlartifacts "
                       "(experiment prefix-rft-realmath) from the committed summary, steps and "
                       "samples files; see `realmath_mlflow.py --help` for what each run holds.")
    r.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="the folder to write (mlflow.db and mlartifacts/ must not be there yet)")
    r.add_argument("--summary", action="append", default=[], metavar="FILE",
                   help=f"a summary file of studies/realmath.sh, or a quoted glob; repeatable "
                   f"(default: {SUMMARIES})")
    r.add_argument("--steps", action="append", default=[], metavar="FILE",
                   help=f"a steps file of studies/realmath_steps.py, or a quoted glob; "
                   f"repeatable (default: {STEPS})")
    r.add_argument("--samples", action="append", default=[], metavar="DIR",
                   help=f"a folder of samples folders (<config>-seed<N>/ with run.json), or a "
                   f"quoted glob; repeatable (default: {SAMPLES})")
    r.add_argument("--experiment", default=EXPERIMENT,
                   help="the MLflow experiment to write (default %(default)s)")
    r.add_argument("--replace", action="store_true",
                   help="delete DIR/mlflow.db and DIR/mlartifacts first")
    args = ap.parse_args(argv)
    try:
        done, notes = rebuild(args.out, rt.expand(args.summary, "--summary", default=SUMMARIES),
                       rt.expand(args.steps, "--steps", default=STEPS),
                       rt.expand(args.samples, "--samples", default=SAMPLES, dirs=True),
                       experiment=args.experiment, replace=args.replace)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in done:
        print(f"{d['method']} seed {d['seed']}: MLflow run {d['run_id']} (originally "
              f"{d['original_run_id']}), {d['metrics']} training metrics over {d['steps']} "
              f"steps, evaluation child runs: {', '.join(d['benchmarks']) or 'none'}")
    for n in notes:
        print(f"note: {n}")
    db = args.out.resolve() / "mlflow.db"
    print(f"{len(done)} run(s) in experiment {args.experiment!r} of {db}; notebook parameters: "
          f"tracking_uri = \"sqlite:///{db}\", experiment = \"{args.experiment}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
