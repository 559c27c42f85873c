"""A real-math run's per-problem results out of MLflow, for realmath_table.py's paired
differences: `python studies/realmath_samples.py RUN_ID DIR` (MLFLOW_TRACKING_URI names the store).

The flow's eval task scores the final checkpoint on the held-out part and on AIME24, AIME25, AMC
and MATH-500 (configs/realmath/base.yaml); each benchmark is an evaluation child run of the run
holding its samples.parquet (`steps.evaluate`). For every benchmark of the run's last evaluated
epoch this writes DIR/flow_<benchmark>/samples.parquet (shards joined), and DIR/run.json names the
run, so realmath_table.py matches the directory to its row by MLflow run id (a directory name
alone may be another session's run of the same config and seed). DIR is emptied first: what is
there belongs to an earlier run. One line per benchmark; exit status 1 when none was copied.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

RUN_FILE = "run.json"


def main(run_id: str, out_dir: str) -> int:
    from prefix_rft.io.tracking import Tracker, resolve_uri

    tracker = Tracker(resolve_uri(None))
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    evals = tracker.eval_runs(run_id)  # one search for every benchmark
    copied = []
    for bench in sorted({e["benchmark"] for e in evals}):
        line = copy_flow_samples(tracker, run_id, [e for e in evals if e["benchmark"] == bench],
                                 out, bench)
        print(f"  {bench}: {line}")
        if (out / f"flow_{bench}").is_dir():
            copied.append(bench)
    (out / RUN_FILE).write_text(json.dumps({"mlflow_run_id": run_id, "benchmarks": copied}) + "\n")
    if not copied:
        print(f"  no evaluation child run with samples under run {run_id}")
        return 1
    return 0


def copy_flow_samples(tracker, run_id: str, evals: list[dict], out_dir: Path, bench: str) -> str:
    """Write the samples of the run's last-epoch evaluation child runs of `bench` (`evals`: the
    run's `tracker.eval_runs` of that benchmark; the newest run of each shard, shards joined) to
    out_dir/flow_<bench>/samples.parquet; returns a line saying what was done or why nothing was."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.exceptions import MlflowException

    from prefix_rft.eval.protocol import SAMPLES_FILE
    from prefix_rft.eval.report import complete_cells, latest_cells

    dst = out_dir / f"flow_{bench}"
    shutil.rmtree(dst, ignore_errors=True)
    cells = latest_cells(evals)
    if not cells:
        return f"no evaluation child run of {bench} under run {run_id}: no samples copied"
    epoch = max(c["epoch"] for c in cells)
    parts = complete_cells([c for c in cells if c["epoch"] == epoch])[0].get(bench)
    if not parts:
        return f"epoch {epoch} of {bench} lacks a shard in run {run_id}: no samples copied"
    try:
        with tempfile.TemporaryDirectory(prefix="realmath-samples-") as tmp:
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
