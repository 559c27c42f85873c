"""Log a `prefix-rft eval` result into a flow run: `python studies/realmath_log.py SUMMARY RUN ROW`.

SUMMARY is the eval's summary.json, RUN the flow's MLflow run id (MLFLOW_TRACKING_URI names the
store), ROW the run's summary row of studies/study.sh. Each benchmark's avg@n and its bootstrap CI
go into the run as `eval/<benchmark>/avg_at_<n>`, `ci_low`, `ci_high`, `no_answer_frac` at the
step of the run's last epoch (the names the flow's eval cells use, so the notebook and
study_table.py read them alike), the run gets the tag `realmath.post_eval` = the protocol, and
the row's `scores` get the same numbers.
"""

from __future__ import annotations

import json
import os
import sys

from prefix_rft.io import run_layout


def main(summary_path: str, run_id: str, row_path: str) -> int:
    from mlflow import MlflowClient

    summary = json.load(open(summary_path))
    row = json.load(open(row_path))
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
