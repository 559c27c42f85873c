"""end and the exit hook: close the lineage's MLflow run as FINISHED or FAILED, and say where
the results are.

Both wait for a tracking server that is down (restarting, a network outage): they retry with
exponential back-off for a bounded time (`prefix_rft.io.tracking.RetryPolicy.from_env`, 15
minutes by default), so the run's final status is set once the server is back instead of the
run staying RUNNING."""

from __future__ import annotations

from prefix_rft.io.redact import redact
from prefix_rft.io.tracking import with_retries
from steps.common import tracker_for


def where_to_look(tracking: dict) -> str:
    uri = redact(tracking["uri"])
    lines = [f"MLflow tracking URI: {uri}",
             f"MLflow run: {tracking['run_id']} (experiment '{tracking['experiment']}', "
             f"id {tracking['experiment_id']})"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"open: {uri.rstrip('/')}/#/experiments/{tracking['experiment_id']}/runs/"
                     f"{tracking['run_id']}")
    elif uri.startswith("sqlite:///"):
        lines.append(f"open the UI with: mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")
    return "\n".join(lines)


def end(tracking: dict, summary: dict | None = None) -> str:
    terminate(tracking, "FINISHED")
    text = [where_to_look(tracking)]
    if summary:
        if summary.get("table"):
            text.append(summary["table"].rstrip())
        if summary.get("best_epoch") is not None:
            text.append(f"best epoch: {summary['best_epoch']} (macro {summary['best_score']:.4f}) "
                        f"-> {summary['best_checkpoint']}")
        text += registered_lines(summary.get("registered"), summary.get("registered_last"))
        if summary.get("failures"):
            text.append(f"WARNING: {len(summary['failures'])} evaluation task(s) failed; the run "
                        "finished with the others (see the table above)")
    return "\n".join(text)


def registered_lines(best: dict | None, last: dict | None) -> list[str]:
    """Where the registered models are and the one-liner that loads them."""
    lines = []
    for r in (best, last):
        if r and not (r is last and best and r["version"] == best["version"]):
            lines.append(f"registered model: models:/{r['name']}@{r['alias']} "
                         f"(version {r['version']})")
        elif r:
            lines[-1] += f"; @{r['alias']} is the same version"
    if best:
        uri = f"models:/{best['name']}@{best['alias']}"
        lines.append(f"load it: prefix_rft.io.tracking.load_registered({uri!r}) (an HF directory) "
                     f"or mlflow.pyfunc.load_model({uri!r}).predict([prompt])")
    return lines


def mark_failed(tracking: dict | None) -> None:
    """For the exit hook: a run that did not reach `end` is FAILED in MLflow."""
    if not tracking:
        return
    terminate(tracking, "FAILED")


def terminate(tracking: dict, status: str) -> None:
    """Set the lineage's MLflow run to `status`, retrying while the server is down."""
    tracker = tracker_for(tracking)  # waits for the server
    with_retries(lambda: tracker.terminate(tracking["run_id"], status),
                 f"marking MLflow run {tracking['run_id']} {status}")


def exit_hook_mark_failed(run=None) -> None:
    """Metaflow exit hook (on error): the lineage's MLflow run is FAILED when the Metaflow run
    did not finish. `run` is the Client API's Run; named by its import path in the flow so the
    hook also works when the flow file was given by a relative path."""
    try:
        tracking = run["start"].task.data.tracking
    except Exception:  # the run failed before `start` created the MLflow run
        print("no MLflow run to mark (the run failed before `start` finished)")
        return
    try:
        mark_failed(tracking)
    except Exception as e:  # the server stayed down past the retries: say so, by name
        print(redact(f"MLflow run {tracking['run_id']} could NOT be marked FAILED "
                     f"({tracking['uri']}): {e}; it stays RUNNING there"))
        raise
    print(f"MLflow run {tracking['run_id']} marked FAILED ({redact(tracking['uri'])})")
