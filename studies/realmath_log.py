"""Log a `prefix-rft eval` result into a flow run: `python studies/realmath_log.py SUMMARY RUN ROW`.

SUMMARY is the eval's summary.json, RUN the flow's MLflow run id (MLFLOW_TRACKING_URI names the
store), ROW the run's summary row of studies/study.sh. Each benchmark's avg@n and its bootstrap CI
go into the run as `eval/<benchmark>/avg_at_<n>`, `ci_low`, `ci_high`, `no_answer_frac` at the
step of the run's last epoch (the names the flow's eval cells use, so the notebook and
study_table.py read them alike), the run gets the tag `realmath.post_eval` = the protocol, and
the row's `scores` get the same numbers. Each benchmark also becomes an evaluation child run of
the flow's run in the layout of the flow's eval cells (its samples as samples.parquet), so the
comparison notebook shows it beside the flow's own `heldout`.

Then the per-sample results of the flow's own `heldout` evaluation at its last epoch (the
evaluation child runs' samples.parquet, shards joined) are copied beside SUMMARY as
flow_heldout/samples.parquet, so realmath_table.py can pair the held-out part problem by problem
as it pairs the post-flow benchmarks. A run without such a child run or file gets one line
saying so; the scores logged before are kept either way.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from prefix_rft.io import run_layout

FLOW_BENCH = "heldout"  # the benchmark the real-math flow scores itself (configs/realmath/)


def main(summary_path: str, run_id: str, row_path: str) -> int:
    from prefix_rft.io.tracking import Tracker, resolve_uri

    summary = json.load(open(summary_path))
    row = json.load(open(row_path))
    tracker = Tracker(resolve_uri(None))
    client = tracker.client
    epoch = max((int(e) for s in (row.get("scores") or {}).values() for e in s), default=1)
    protocol = summary.get("protocol", {})
    for bench, s in summary["benchmarks"].items():
        n = protocol.get("n_per_benchmark", {}).get(bench, protocol.get("n", 1))
        key = run_layout.metric_key(bench, n)
        client.log_metric(run_id, key, s["avg_at_n"], step=epoch)
        for stat in ("ci_low", "ci_high", "no_answer_frac"):
            client.log_metric(run_id, run_layout.eval_metric(bench, stat), s[stat], step=epoch)
        row.setdefault("scores", {}).setdefault(bench, {})[str(epoch)] = {
            "metric": f"avg_at_{n}", "value": s["avg_at_n"], "ci": [s["ci_low"], s["ci_high"]]}
        print(f"  {bench}: {key} = {s['avg_at_n']:.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}]")
    client.set_tag(run_id, "realmath.post_eval", json.dumps(protocol, sort_keys=True))
    row["post_eval"] = {"protocol": protocol, "model": summary.get("model")}
    json.dump(row, open(row_path, "w"), indent=1)
    children = log_post_cells(tracker, run_id, epoch, summary, Path(summary_path).parent)
    print(f"  evaluation child runs for the notebook: {len(children)}")
    print(f"  {FLOW_BENCH}: {copy_flow_samples(tracker, run_id, Path(summary_path).parent)}")
    return 0


def log_post_cells(tracker, run_id: str, epoch: int, summary: dict, post_dir: Path) -> list[str]:
    """One evaluation child run per post-flow benchmark, logged by the flow's own
    `steps.evaluate.log_eval_child` (the layout of the flow's eval cells: tags, the benchmark's
    protocol, its scores, a preview and its rows of samples.parquet), so that
    notebooks/compare_runs.py and `report.load_pipeline_run` see these benchmarks at the run's
    last epoch next to the flow's own. Returns the child run ids."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from prefix_rft.eval.protocol import SAMPLES_FILE, BenchmarkResult
    from steps.evaluate import log_eval_child
    from steps.flow_config import TrackingConfig

    experiment = tracker.client.get_experiment(
        tracker.client.get_run(run_id).info.experiment_id).name
    tracking = {"run_id": run_id, "experiment": experiment}
    samples = pq.read_table(post_dir / SAMPLES_FILE)
    children = []
    with tempfile.TemporaryDirectory(prefix="realmath-log-") as tmp:
        for bench, s in summary["benchmarks"].items():
            records = samples.filter(pc.equal(samples["benchmark"], bench)).to_pylist()
            cell = {"epoch": epoch, "benchmark": bench, "shard": 0, "shards": 1,
                    "engine": summary.get("engine", ""), "n": s["n"],
                    "metric": run_layout.metric_key(bench, s["n"]),
                    "checkpoint_uri": summary.get("model"),
                    "protocol": s.get("protocol") or summary.get("protocol", {})}
            children.append(log_eval_child(tracker, tracking, cell,
                                           BenchmarkResult(bench, records, s), Path(tmp) / bench,
                                           log_samples=TrackingConfig().log_samples))
    return children


def copy_flow_samples(tracker, run_id: str, post_dir: Path, bench: str = FLOW_BENCH) -> str:
    """Write the samples of the run's last-epoch evaluation child runs of `bench` (the newest
    run of each shard, shards joined) to post_dir/flow_<bench>/samples.parquet; returns a line
    saying what was done or why nothing was. A copy from an earlier run of the same post
    directory is removed first: it belongs to another run."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.exceptions import MlflowException

    from prefix_rft.eval.protocol import SAMPLES_FILE
    from prefix_rft.eval.report import complete_cells, latest_cells

    dst = post_dir / f"flow_{bench}"
    shutil.rmtree(dst, ignore_errors=True)
    cells = latest_cells([e for e in tracker.eval_runs(run_id) if e["benchmark"] == bench])
    if not cells:
        return f"no evaluation child run of {bench} under run {run_id}: no samples copied"
    epoch = max(c["epoch"] for c in cells)
    parts = complete_cells([c for c in cells if c["epoch"] == epoch])[0].get(bench)
    if not parts:
        return f"epoch {epoch} of {bench} lacks a shard in run {run_id}: no samples copied"
    try:
        with tempfile.TemporaryDirectory(prefix="realmath-log-") as tmp:
            table = pa.concat_tables([pq.read_table(tracker.download_artifact(
                c["run_id"], SAMPLES_FILE, Path(tmp) / c["run_id"])) for c in parts])
    except (MlflowException, OSError, pa.ArrowException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (f"no {SAMPLES_FILE} of {bench} epoch {epoch} in run {run_id} "
                f"({first}): no samples copied")
    dst.mkdir(parents=True)
    pq.write_table(table, dst / SAMPLES_FILE)
    runs = ", ".join(c["run_id"] for c in parts)
    return (f"{table.num_rows} samples of epoch {epoch} (child run{'s' * (len(parts) > 1)} {runs}) "
            f"-> {dst / SAMPLES_FILE}")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
