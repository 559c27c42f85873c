"""Helpers of perf/gpu/e2e_flow.sh (the end-to-end pipeline run): the training data, the load of
the registered model, the summary. Each subcommand prints one line per result and exits non-zero
with a one-line reason.

    python perf/gpu/e2e_flow.py data URL [--rows 48]       raw OpenR1 rows as parquet -> s3://...
    python perf/gpu/e2e_flow.py load URI --out FILE.json   load_registered(URI) + one answer
    python perf/gpu/e2e_flow.py summary --log FLOW.log --out DIR [--phases FILE] [--profile gpu]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
from pathlib import Path

PROBLEM = "What is 12 + 30? Put the final answer in \\boxed{}."


def openr1_rows(count: int) -> list[dict]:
    """`count` rows in the raw OpenR1-Math-220k schema (every column of the hub files), short
    enough to pass a small `rollout.max_response_len`. So that the filter has something to
    filter, every 6th row's first trace is wrong (the second, correct one is kept), every 8th
    row has no correct trace (dropped) and every 10th row repeats an earlier problem
    (dropped as a duplicate)."""
    rows = []
    for i in range(count):
        a, b = 3 + 7 * i % 41, 2 + 5 * i % 37
        if i % 10 == 9:
            a, b = 3 + 7 * (i - 1) % 41, 2 + 5 * (i - 1) % 37
        answer = str(a + b)
        good = f"<think>\n{a} plus {b} is {answer}.\n</think>\nSo the answer is \\boxed{{{answer}}}."
        bad = f"<think>\n{a} plus {b} is {a + b + 1}.\n</think>\nSo the answer is \\boxed{{{a + b + 1}}}."
        gens, correct = [good], [True]
        if i % 6 == 5:
            gens, correct = [bad, good], [False, True]
        if i % 8 == 7:
            gens, correct = [bad], [False]
        problem = f"Compute ${a} + {b}$."
        rows.append({
            "problem": problem, "solution": f"Add the numbers: {answer}", "answer": answer,
            "problem_type": "Algebra", "question_type": "math-word-problem",
            "source": "e2e-synthetic", "uuid": f"e2e-{i:04d}",
            "is_reasoning_complete": [True] * len(gens), "generations": gens,
            "correctness_math_verify": correct, "correctness_llama": None,
            "finish_reasons": None, "correctness_count": sum(correct),
            "messages": [{"role": "user", "content": problem},
                         {"role": "assistant", "content": gens[-1]}],
        })
    return rows


def cmd_data(args) -> int:
    """Write the rows as parquet to an s3:// URL on the configured endpoint (or a local path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(openr1_rows(args.rows)), buf)
    if not args.url.startswith("s3://"):
        Path(args.url).parent.mkdir(parents=True, exist_ok=True)
        Path(args.url).write_bytes(buf.getvalue())
    else:
        import boto3

        bucket, _, key = args.url[len("s3://"):].partition("/")
        boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")).put_object(
            Bucket=bucket, Key=key, Body=buf.getvalue())
    print(f"data: {args.rows} raw OpenR1 rows, {len(buf.getvalue())} bytes -> {args.url}")
    return 0


def cmd_load(args) -> int:
    """The documented one-liner, then one greedy answer from the loaded directory."""
    from prefix_rft.io.tracking import CheckpointPredictor, load_registered

    t0 = time.time()
    model_dir = load_registered(args.uri)
    t1 = time.time()
    answer = CheckpointPredictor(model_dir).predict([PROBLEM], params={"max_new_tokens": args.tokens})[0]
    t2 = time.time()
    result = {"uri": args.uri, "model_dir": str(model_dir), "load_s": round(t1 - t0, 1),
              "generate_s": round(t2 - t1, 1), "prompt": PROBLEM, "answer": answer}
    if args.pyfunc:
        import mlflow

        result["pyfunc_answer"] = mlflow.pyfunc.load_model(args.uri).predict(
            [PROBLEM], params={"max_new_tokens": args.tokens})[0]
        result["pyfunc_s"] = round(time.time() - t2, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"load: {args.uri} -> {model_dir} in {result['load_s']} s; answer: {answer[:200]!r}")
    return 0


def _mlflow_facts(run_id: str, registered: str | None) -> dict:
    """What the run left in MLflow: eval metrics, LoggedModels, dataset inputs, aliases."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    facts = {"run_id": run_id, "status": run.info.status,
             "experiment_id": run.info.experiment_id,
             "eval_metrics": {k: v for k, v in sorted(run.data.metrics.items())
                              if k.startswith("eval/") and k.endswith(("avg_at_1", "avg_at_32"))
                              or k.startswith("eval/macro")},
             "dataset_inputs": [{"name": d.dataset.name, "digest": d.dataset.digest,
                                 "source": d.dataset.source[:200]}
                                for d in run.inputs.dataset_inputs]}
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    facts["logged_models"] = [{"name": m.name, "id": m.model_id,
                               "step": m.params.get("step"), "epoch": m.params.get("epoch"),
                               "checkpoint_uri": m.tags.get("checkpoint.uri")}
                              for m in models if m.source_run_id == run_id]
    if registered:
        name, _, alias = registered[len("models:/"):].partition("@")
        version = client.get_model_version_by_alias(name, alias)
        facts["registered"] = {"uri": registered, "version": version.version,
                               "source": version.source}
    return facts


def cmd_summary(args) -> int:
    """summary.json + summary.md in --out from the flow's log, the phases and MLflow."""
    log = Path(args.log).read_text(errors="replace") if Path(args.log).exists() else ""
    run = re.search(r"MLflow run ([0-9a-f]{32})", log)
    registered = re.search(r"registered model: (models:/\S+@best)", log)
    summary = {"profile": args.profile, "command": args.command,
               "flow_ok": "Done!" in log,
               "metaflow_run": (re.findall(r"PrefixRFTFlow/(\d+)", log) or [None])[0]}
    if args.phases and Path(args.phases).exists():
        summary["phases"] = json.loads(Path(args.phases).read_text())
    if args.load and Path(args.load).exists():
        summary["load"] = json.loads(Path(args.load).read_text())
    if run:
        try:
            summary["mlflow"] = _mlflow_facts(run.group(1), registered and registered.group(1))
        except Exception as e:  # the summary reports, it never hides the run's own outcome
            summary["mlflow_error"] = f"{type(e).__name__}: {e}"
    out = Path(args.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    md = [f"# e2e flow run ({summary['profile']})", "", f"flow finished: {summary['flow_ok']}",
          f"metaflow run: {summary['metaflow_run']}", "", "| phase | seconds | status |", "|---|---|---|"]
    md += [f"| {p['name']} | {p['seconds']} | {p['status']} |" for p in summary.get("phases", [])]
    ml = summary.get("mlflow", {})
    md += ["", f"LoggedModels: {len(ml.get('logged_models', []))}",
           f"registered: {ml.get('registered')}", f"datasets: {ml.get('dataset_inputs')}", "",
           "| metric | value |", "|---|---|"]
    md += [f"| {k} | {v:.4f} |" for k, v in ml.get("eval_metrics", {}).items()]
    if "load" in summary:
        md += ["", f"answer of the registered model: {summary['load']['answer'][:300]!r}"]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("url")
    d.add_argument("--rows", type=int, default=48)
    ld = sub.add_parser("load")
    ld.add_argument("uri")
    ld.add_argument("--out", required=True)
    ld.add_argument("--tokens", type=int, default=64)
    ld.add_argument("--pyfunc", action="store_true", help="also mlflow.pyfunc.load_model(URI)")
    s = sub.add_parser("summary")
    s.add_argument("--log", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--phases")
    s.add_argument("--load")
    s.add_argument("--command", default="")
    s.add_argument("--profile", default="gpu", help="the E2E_PROFILE the run used (gpu or cpu)")
    args = p.parse_args(argv)
    return {"data": cmd_data, "load": cmd_load, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
