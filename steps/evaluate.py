"""plan_eval -> eval_task (one per epoch x benchmark) -> join_eval.

Each evaluation runs in its own task (its own process and, on a cluster, its own GPU), so a
broken benchmark or a crash loses only that cell: the flow catches it and `join_eval` reports it.
A benchmark is `heldout` (the lineage's held-out set from `data.test`) or a problems file
(.jsonl/.json/.parquet with problem/answer fields). Epoch 0 is the starting model.

MLflow: the parent run gets `eval/<benchmark>/avg_at_<n>` at `step=epoch`; each task opens a
nested child run `eval-<benchmark>-epoch<e>` with the protocol as params, the summary metrics,
a table of sample completions and the per-sample results (parquet). `join_eval` logs the score
table (Markdown), the learning-curve figure and registers the best epoch's checkpoint in the
model registry under the alias `best`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from prefix_rft.config import Config
from prefix_rft.errors import UserError
from prefix_rft.store import open_store
from steps.common import fetch_into, log
from steps.data import read_data

HELDOUT = "heldout"


def benchmark_name(spec: str) -> str:
    return spec if spec == HELDOUT else Path(spec).stem


def metric_key(benchmark: str, n: int) -> str:
    return f"eval/{benchmark}/avg_at_{n}"  # MLflow metric names cannot contain '@'


def plan_eval(cfg: Config, epochs_done: list[dict], warm_start: dict | None) -> list[dict]:
    """The (epoch, checkpoint, benchmark) cells to evaluate, one task each."""
    items = []
    cells: list[tuple[int, dict | None]] = []
    if cfg.pipeline.eval_base:
        cells.append((0, warm_start))
    trained = epochs_done if cfg.pipeline.eval_epochs == "all" else epochs_done[-1:]
    cells += [(e["epoch"], e["checkpoint"]) for e in trained]
    for epoch, ref in cells:
        for spec in cfg.pipeline.benchmarks:
            items.append({"epoch": epoch, "checkpoint": ref, "benchmark": benchmark_name(spec),
                          "spec": spec})
    return items


def _problems(cfg: Config, spec: str, data_ref: dict):
    from prefix_rft.data.readers import read_problems

    if spec == HELDOUT:
        problems = read_data(data_ref)[1]
        if not problems:
            raise UserError("benchmark 'heldout': the config has no held-out set (data.test)")
    else:
        if not Path(spec).exists():
            raise UserError(f"pipeline.benchmarks: {spec}: no such file")
        problems = read_problems(spec, split="test", require_demos=False)
    return problems[: cfg.eval.num_problems] if cfg.eval.num_problems else problems


def _model(cfg: Config, ref: dict | None, scratch: Path):
    from prefix_rft import models

    if ref is not None:
        d = fetch_into(ref, scratch) / "model"
        tok = models.load_tokenizer(str(d))
        return models.load_policy(str(d), dtype=cfg.model.dtype,
                                  attn_implementation=cfg.model.attn_implementation), tok
    tok = models.load_tokenizer(cfg.model.name_or_path, chat_template=cfg.model.chat_template)
    if cfg.model.random_init:  # seeded by its own `seed` key: the same weights as training's
        return models.tiny_random_model(len(tok), **dict(cfg.model.random_init)), tok
    return models.load_policy(cfg.model.name_or_path, dtype=cfg.model.dtype,
                              attn_implementation=cfg.model.attn_implementation), tok


def eval_task(cfg: Config, item: dict, *, data_ref: dict, tracker=None, tracking: dict | None = None,
              device: str | None = None) -> dict:
    import torch

    from prefix_rft.engines.hf import HFEngine
    from prefix_rft.evaluation import evaluate_problems
    from prefix_rft.prompting import stop_token_ids
    from prefix_rft.reward import RewardGrader

    epoch, bench = item["epoch"], item["benchmark"]
    problems = _problems(cfg, item["spec"], data_ref)
    with tempfile.TemporaryDirectory(prefix="prefix-rft-eval-") as tmp:
        model, tok = _model(cfg, item["checkpoint"], Path(tmp))
        dev = device or ("cuda" if torch.cuda.is_available() and cfg.model.device in ("auto", "cuda")
                         else "cpu" if cfg.model.device == "auto" else cfg.model.device)
        model.to(dev).eval()
        engine = HFEngine(model, tok, stop_token_ids(tok), max_batch_size=cfg.rollout.max_batch_size)
        grader = RewardGrader(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s,
                              think_tags=cfg.model.think_tags)
        try:
            res = evaluate_problems(engine, tok, problems, grader, cfg.eval,
                                    think_tags=cfg.model.think_tags, seed=cfg.seed)
        finally:
            grader.close()
        n = cfg.eval.n_samples
        key = metric_key(bench, n)
        summary = {
            "epoch": epoch, "benchmark": bench, "metric": key, "value": res["eval/accuracy"],
            "n": n, "num_problems": res["eval/num_problems"],
            "no_answer_frac": res["eval/no_answer_frac"],
            "checkpoint_uri": item["checkpoint"]["uri"] if item["checkpoint"] else cfg.model.name_or_path,
            "protocol": {"n": n, "temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p,
                         "max_new_tokens": cfg.eval.max_new_tokens, "grader": "math-verify",
                         "chat_template": cfg.model.chat_template or "tokenizer", "seed": cfg.seed,
                         "engine": "hf"},
        }
        log.info("epoch %d %s: %s = %.4f over %d problems", epoch, bench, key, summary["value"],
                 summary["num_problems"])
        if tracker is not None and tracking:
            parent = tracking["run_id"]
            tracker.log_metrics(parent, {key: summary["value"],
                                         f"eval/{bench}/no_answer_frac": summary["no_answer_frac"]},
                                step=epoch)
            child = tracker.create_run(tracking["experiment"], f"eval-{bench}-epoch{epoch}", {
                "epoch": epoch, "benchmark": bench, "checkpoint": summary["checkpoint_uri"],
            }, parent_run_id=parent)
            tracker.log_params(child, {f"protocol.{k}": v for k, v in summary["protocol"].items()}
                               | {"benchmark": bench, "epoch": epoch})
            tracker.log_metrics(child, {"avg_at_n": summary["value"], key: summary["value"],
                                        "num_problems": summary["num_problems"],
                                        "no_answer_frac": summary["no_answer_frac"]}, step=epoch)
            rows = [{k: s[k] for k in ("problem_id", "sample", "completion", "extracted", "correct")}
                    for s in res["samples"]]
            tracker.log_table(child, rows[: cfg.tracking.log_samples], "samples_preview.json")
            path = Path(tmp) / "samples.parquet"
            _write_parquet(rows, path)
            tracker.log_artifact(child, path)
            tracker.terminate(child, "FINISHED")
            summary["child_run_id"] = child
        return summary


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


# --------------------------------------------------------------------------------- join
def score_table(results: list[dict]) -> tuple[list[int], list[str], dict]:
    epochs = sorted({r["epoch"] for r in results})
    benches = sorted({r["benchmark"] for r in results})
    cell = {(r["epoch"], r["benchmark"]): r["value"] for r in results}
    return epochs, benches, cell


def best_epoch(results: list[dict]) -> tuple[int | None, float | None, list[str]]:
    """The trained epoch (>= 1) with the highest macro average over the benchmarks that every
    trained epoch has a result for; (None, None, []) when there is none."""
    epochs, benches, cell = score_table([r for r in results if r["epoch"] >= 1])
    common = [b for b in benches if all((e, b) in cell for e in epochs)]
    if not epochs or not common:
        return None, None, []
    macro = {e: sum(cell[e, b] for b in common) / len(common) for e in epochs}
    best = max(epochs, key=lambda e: (macro[e], e))  # ties: the later epoch
    return best, macro[best], common


def markdown_table(results: list[dict], failures: list[dict]) -> str:
    epochs, benches, cell = score_table(results)
    metric = {r["benchmark"]: r["metric"].split("/")[-1] for r in results}
    head = "| epoch | " + " | ".join(f"{b} ({metric[b]})" for b in benches) + " | macro |"
    lines = [head, "|" + "---|" * (len(benches) + 2)]
    for e in epochs:
        vals = [cell.get((e, b)) for b in benches]
        got = [v for v in vals if v is not None]
        macro = f"{sum(got) / len(got):.4f}" if got and len(got) == len(vals) else "-"
        lines.append(f"| {e} | " + " | ".join("failed" if v is None else f"{v:.4f}" for v in vals)
                     + f" | {macro} |")
    if failures:
        lines += ["", "Failed evaluation tasks:"]
        lines += [f"- epoch {f['epoch']} {f['benchmark']}: {f['error']}" for f in failures]
    return "\n".join(lines) + "\n"


def learning_curves(tracker, run_id: str, results: list[dict]):
    """Training reward/loss per step and evaluation scores per epoch, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes[:2], ("reward/mean", "loss")):
        hist = tracker.metric_history(run_id, key) if tracker else []
        if hist:
            steps, vals = zip(*sorted(hist))
            ax.plot(steps, vals, marker=".")
        ax.set_title(f"train {key}")
        ax.set_xlabel("training step")
    epochs, benches, cell = score_table(results)
    for b in benches:
        xs = [e for e in epochs if (e, b) in cell]
        axes[2].plot(xs, [cell[e, b] for e in xs], marker="o", label=b)
    axes[2].set_title("evaluation")
    axes[2].set_xlabel("epoch")
    if benches:
        axes[2].legend()
    fig.tight_layout()
    return fig


def join_eval(cfg: Config, results: list[dict], failures: list[dict], epochs_done: list[dict], *,
              lineage_prefix: str, tracker=None, tracking: dict | None = None) -> dict:
    best, score, common = best_epoch(results)
    refs = {e["epoch"]: e["checkpoint"] for e in epochs_done}
    out = {"results": results, "failures": failures, "best_epoch": best, "best_score": score,
           "best_benchmarks": common, "best_checkpoint": refs.get(best, {}).get("uri") if best else None,
           "table": markdown_table(results, failures), "registered": None, "pruned": []}
    if tracker is not None and tracking:
        run_id = tracking["run_id"]
        tags = {"eval.failed_tasks": len(failures), "eval.tasks": len(results) + len(failures)}
        if best is not None:
            tags |= {"best_epoch": best, "best_checkpoint": out["best_checkpoint"]}
            tracker.log_metrics(run_id, {"eval/best_macro": score}, step=best)
        tracker.set_tags(run_id, tags)
        tracker.log_text(run_id, out["table"], "eval/summary.md")
        fig = learning_curves(tracker, run_id, results)
        tracker.log_figure(run_id, fig, "learning_curves.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        name = cfg.tracking.registered_model
        if name and best is not None:
            name = name.format(method=cfg.method)
            source = out["best_checkpoint"] + "/model"
            if not source.startswith("s3://") and tracker.uri.startswith(("http://", "https://")):
                # A tracking server cannot point at this machine's disk: register a copy.
                log.warning("checkpoints are local but MLflow is a server: uploading the best "
                            "model to the run's artifacts to register it (use an s3:// "
                            "pipeline.checkpoint_root to avoid the copy)")
                with tempfile.TemporaryDirectory() as tmp:
                    tracker.log_artifacts(run_id, fetch_into(refs[best], Path(tmp)) / "model",
                                          "best_model")
                source = tracker.run_info(run_id).info.artifact_uri.rstrip("/") + "/best_model"
            version = tracker.register(name, source, run_id, alias="best",
                                       tags={"epoch": str(best), "macro_score": f"{score:.6f}",
                                             "benchmarks": ",".join(common)})
            out["registered"] = {"name": name, "version": version, "alias": "best", "source": source}
    if cfg.pipeline.keep_epochs == "best_and_last" and epochs_done:
        keep = {refs[epochs_done[-1]["epoch"]]["uri"]} | ({out["best_checkpoint"]} if best else set())
        for e in epochs_done:
            uri = e["checkpoint"]["uri"]
            if uri not in keep:
                open_store(uri.rsplit("/", 1)[0]).delete(uri)
                out["pruned"].append(uri)
    return out


def nan_to_none(x):
    return None if isinstance(x, float) and math.isnan(x) else x
