"""plan_eval -> eval_task (one per epoch x benchmark, or per epoch) -> join_eval.

By default each evaluation runs in its own task (its own process and, on a cluster, its own GPU),
so a broken benchmark or a crash loses only that cell: the flow catches it and `join_eval`
reports it. `pipeline.eval_task_per: checkpoint` evaluates every benchmark of a checkpoint in one
task with one engine (`eval_item`): one vLLM start instead of one per benchmark; a benchmark
whose file or prompts are a user error is a failure row of that task, found before the engine
starts, and the others are still scored.
A benchmark is `heldout` (the lineage's held-out set from `data.test`), a synthetic level's
held-out split (`synthetic:add`, `synthetic:mul`, `synthetic:word`: one cell each, filed as
`synthetic_add` ...), a named benchmark or a problems file (.jsonl/.json/.parquet with
problem/answer fields). `heldout` and the synthetic levels use the config's `eval` section
(samples, temperature, top_p, new tokens, `eval.num_problems`); the others use
`pipeline.eval_protocol`. Epoch 0 is the starting model.

MLflow: the parent run gets `eval/<benchmark>/avg_at_<n>` at `step=epoch`, logged against the
evaluated checkpoint's LoggedModel (so its page in the UI lists them); each task opens a nested
child run `eval-<benchmark>-epoch<e>` that takes that model as an input, with the protocol as
params, the summary metrics, a table of sample completions and the per-sample results
(parquet). `join_eval` logs the score table (Markdown), the learning-curve figure and registers
the best epoch's LoggedModel in the model registry under the alias `best` (the last epoch's
under `last`). Every name is from `prefix_rft.io.run_layout`, which the
readers (`prefix_rft.io.tracking`, `prefix_rft.eval.report`) use too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefix_rft.errors import UserError
from prefix_rft.io import run_layout
from prefix_rft.io.store import is_s3, open_store
from steps.common import RunContext, fetch_into, log, use_cpus
from steps.data import read_data
from steps.flow_config import FlowConfig
from steps.start import registered_model_name

HELDOUT = "heldout"


def benchmark_name(spec: str) -> str:
    from prefix_rft.eval.benchmarks import benchmark_label

    return spec if spec == HELDOUT else benchmark_label(spec)


def plan_eval(cfg: FlowConfig, epochs_done: list[dict], warm_start: dict | None) -> list[dict]:
    """The evaluation items, one task each, epoch-major. `pipeline.eval_task_per` benchmark: one
    item per (epoch, benchmark, shard) with `benchmark` and `spec`; checkpoint: one item per
    (epoch, shard) whose `benchmarks` lists every [benchmark, spec] (its `benchmark` is their
    names joined with '+', for logs and the Metaflow UI)."""
    items = []
    cells: list[tuple[int, dict | None]] = []
    if cfg.pipeline.eval_base:
        cells.append((0, warm_start))
    trained = epochs_done if cfg.pipeline.eval_epochs == "all" else epochs_done[-1:]
    cells += [(e["epoch"], e["checkpoint"]) for e in trained]
    shards = cfg.pipeline.eval_shards
    named = [[benchmark_name(spec), spec] for spec in cfg.pipeline.benchmarks]
    for epoch, ref in cells:
        if cfg.pipeline.eval_task_per == "checkpoint":
            items += [{"epoch": epoch, "checkpoint": ref, "benchmark": "+".join(n for n, _ in named),
                       "benchmarks": named, "shard": shard, "shards": shards}
                      for shard in range(shards)]
            continue
        for name, spec in named:
            for shard in range(shards):
                items.append({"epoch": epoch, "checkpoint": ref, "benchmark": name,
                              "spec": spec, "shard": shard, "shards": shards})
    return items


def error_line(err: BaseException) -> str:
    """The line of an exception a failure row shows: its message's last line."""
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def item_failures(item: dict, error: str) -> list[dict]:
    """The failure rows of an eval item that produced no result (its task failed after its
    retries): one per benchmark it held, naming the shard when the item is one of several."""
    shard = f" (shard {item['shard']}/{item['shards']})" if item.get("shards", 1) > 1 else ""
    names = [n for n, _ in item["benchmarks"]] if "benchmarks" in item else [item["benchmark"]]
    return [{"epoch": item["epoch"], "benchmark": n, "error": error + shard} for n in names]


def uses_eval_section(spec: str) -> bool:
    """heldout and the synthetic levels' held-out splits are evaluated with the `eval` section."""
    from prefix_rft.eval.benchmarks import is_synthetic

    return spec == HELDOUT or is_synthetic(spec)


def protocol_for(cfg: FlowConfig, spec: str):
    """heldout and synthetic:LEVEL: the config's `eval` section (protocol name 'heldout'); a named
    benchmark/file: pipeline.eval_protocol with the pipeline.eval_* overrides."""
    from prefix_rft.eval.protocol import Protocol, get_protocol

    if uses_eval_section(spec):
        e = cfg.eval
        return Protocol("heldout", n=e.n_samples, temperature=e.temperature, top_p=e.top_p,
                        max_new_tokens=e.max_new_tokens, seed=cfg.seed)
    pl = cfg.pipeline
    return get_protocol(pl.eval_protocol).replace(n=pl.eval_n, max_new_tokens=pl.eval_max_new_tokens,
                                                  seed=cfg.seed)


def _problems(cfg: FlowConfig, spec: str, data_ref: dict):
    from prefix_rft.eval.benchmarks import is_synthetic, load_benchmark

    if spec == HELDOUT:
        problems = read_data(data_ref)[1]
        if not problems:
            raise UserError("benchmark 'heldout': the config has no held-out set (data.test)")
        return problems[: cfg.eval.num_problems] if cfg.eval.num_problems else problems
    if is_synthetic(spec):  # the level's test split, fixed order: the first eval.num_problems
        problems = load_benchmark(spec)
        return problems[: cfg.eval.num_problems] if cfg.eval.num_problems else problems
    problems = load_benchmark(spec, source=cfg.pipeline.eval_source)  # names the file/row on errors
    k = cfg.pipeline.eval_max_problems
    return problems[:k] if k else problems


def _engine(cfg: FlowConfig, ref: dict | None, scratch: Path, check=None):
    """(engine, tokenizer, engine kind) for a checkpoint ref, or for the starting model.
    `check(tokenizer, model config or directory)` runs before the engine is made."""
    from prefix_rft import models
    from prefix_rft.rollout.engines.factory import EngineSpec, make_engine

    if ref is not None:
        model_dir = str(fetch_into(ref, scratch, only="model/") / "model")
        tok = models.load_tokenizer(model_dir)
    else:
        model_dir = cfg.model.name_or_path
        tok = models.load_tokenizer(model_dir, chat_template=cfg.model.chat_template)
        if cfg.model.random_init:  # tests/throughput: the same seeded weights training started from
            model = models.tiny_random_model(len(tok), **dict(cfg.model.random_init)).eval()
            if check is not None:
                check(tok, model.config)
            engine, kind = make_engine("hf", EngineSpec(
                tok, model=model, max_batch_size=cfg.rollout.max_batch_size,
                decoding=cfg.model.decoding))
            return engine, tok, kind
        model_dir = models.resolve_model_path(model_dir)
    if check is not None:
        check(tok, model_dir)
    engine, kind = make_engine(cfg.pipeline.eval_engine, EngineSpec(
        tok, model_dir=model_dir, dtype=eval_dtype(cfg), device=cfg.model.device,
        max_batch_size=cfg.rollout.max_batch_size, seed=cfg.seed, decoding=cfg.model.decoding,
        enforce_eager=cfg.pipeline.eval_vllm_eager), key="pipeline.eval_engine")
    return engine, tok, kind


def eval_dtype(cfg: FlowConfig) -> str:
    """The dtype an eval cell decodes in: `model.dtype`, except that vLLM (pipeline.eval_engine
    vllm) decodes float32 master weights in bfloat16, as the training rollouts and `prefix-rft
    eval` do (vLLM in float32 is slow and has no FlashAttention kernel)."""
    if cfg.pipeline.eval_engine == "vllm" and cfg.model.dtype == "float32":
        return "bfloat16"
    return cfg.model.dtype


def _prompt_check(cfg: FlowConfig, bench: str, problems, protocol):
    """A `check` for `_engine`: the cell's prompts against the model's context minus the
    protocol's new tokens (`prefix_rft.data.lengths`), before the engine is made."""
    from prefix_rft.data.lengths import PromptLimit, check_prompt_lengths, model_context

    def check(tok, config_or_dir) -> None:
        context = model_context(config_or_dir)
        if context:
            check_prompt_lengths(problems, tok, PromptLimit(
                context, protocol.max_new_tokens, "the model's max_position_embeddings",
                "the protocol's max_new_tokens"), think_tags=cfg.model.think_tags,
                what=f"benchmark {bench}")
    return check


def budget_note(summary: dict, max_new_tokens: int) -> str:
    """How the samples of a benchmark ended, for its log line: no answer / cut by the budget."""
    return (f"no answer in {100 * summary['no_answer_frac']:.0f}% of samples, "
            f"{100 * summary['truncated_frac']:.0f}% cut at {max_new_tokens} new tokens")


def budget_warning(summary: dict, max_new_tokens: int) -> str | None:
    """A warning when half or more of the samples ran out of tokens: the score then says more
    about `pipeline.eval_max_new_tokens` than about the model (e.g. 0.0 on every benchmark
    with a 256-token budget, where the model's reasoning is longer)."""
    if summary["truncated_frac"] < 0.5:
        return None
    return (f"{100 * summary['truncated_frac']:.0f}% of the samples reached the "
            f"{max_new_tokens}-token budget before they ended; raise "
            "pipeline.eval_max_new_tokens for a score of the model, not of the budget")


def eval_task(cfg: FlowConfig, item: dict, *, data_ref: dict, tracker=None, tracking: dict | None = None,
              n_boot: int = 2000) -> dict:
    """One checkpoint on one benchmark (an item of `pipeline.eval_task_per: benchmark`): its
    summary. A user error (unreadable file, prompts too long) is raised before the engine starts."""
    return eval_item(cfg, item, data_ref=data_ref, tracker=tracker, tracking=tracking,
                     n_boot=n_boot)[0][0]


def eval_item(cfg: FlowConfig, item: dict, *, data_ref: dict, tracker=None,
              tracking: dict | None = None, n_boot: int = 2000) -> tuple[list[dict], list[dict]]:
    """What the flow's eval_task runs: (summaries, failure rows) of one item, every benchmark it
    holds (one, or all of them for `pipeline.eval_task_per: checkpoint`) evaluated with one
    engine. A benchmark whose problems or prompts are a user error becomes a failure row before
    the engine starts and the rest go on; when that leaves none (always so for a one-benchmark
    item), the first error is raised, so the flow records it without a retry. Any other error
    fails the whole task."""
    from prefix_rft.rollout.reward import RewardGrader

    use_cpus(cfg.pipeline.eval.cpus)
    shard, shards = item.get("shard", 0), item.get("shards", 1)
    cells = item["benchmarks"] if "benchmarks" in item else [[item["benchmark"], item["spec"]]]
    failures: list[dict] = []
    errors: list[UserError] = []
    ready = []  # (benchmark, problems, protocol)

    def fail(bench: str, err: UserError) -> None:
        errors.append(err)
        failures.extend(item_failures({**item, "benchmarks": [[bench, None]]}, error_line(err)))
        log.error("epoch %d %s: %s", item["epoch"], bench, error_line(err))

    for bench, spec in cells:
        try:
            ready.append((bench, _problems(cfg, spec, data_ref)[shard::shards], protocol_for(cfg, spec)))
        except UserError as err:
            fail(bench, err)

    def check(tok, config_or_dir) -> None:  # every benchmark's prompts, before the engine starts
        for cell in list(ready):
            try:
                _prompt_check(cfg, *cell)(tok, config_or_dir)
            except UserError as err:
                ready.remove(cell)
                fail(cell[0], err)
        if not ready:
            raise errors[0]

    if not ready:
        raise errors[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="prefix-rft-eval-") as tmp:
        engine, tok, kind = _engine(cfg, item["checkpoint"], Path(tmp), check=check)
        try:
            with RewardGrader(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s,
                              think_tags=cfg.model.think_tags) as grader:
                for bench, problems, protocol in ready:
                    results.append(_score(cfg, item, bench, problems, protocol, (engine, tok, kind),
                                          grader, tracker=tracker, tracking=tracking,
                                          scratch=Path(tmp), n_boot=n_boot))
        finally:
            engine.close()
    return results, failures


def _score(cfg: FlowConfig, item: dict, bench: str, problems, protocol, made, grader, *,
           tracker, tracking: dict | None, scratch: Path, n_boot: int) -> dict:
    """Evaluate `problems` of `bench` with the made (engine, tokenizer, kind), log the cell to
    MLflow when tracking, and return its summary."""
    from prefix_rft.eval.protocol import evaluate_benchmark, problem_accuracy

    engine, tok, kind = made
    epoch, shard, shards = item["epoch"], item.get("shard", 0), item.get("shards", 1)
    label = item["checkpoint"]["uri"] if item["checkpoint"] else cfg.model.name_or_path
    res = evaluate_benchmark(engine, tok, bench, problems, protocol, grader,
                             think_tags=cfg.model.think_tags, model=label,
                             chat_template=cfg.model.chat_template, n_boot=n_boot)
    n = protocol.n_for(bench)
    key = run_layout.metric_key(bench, n)
    s = res.summary
    summary = {
        "epoch": epoch, "benchmark": bench, "metric": key, "value": s["avg_at_n"], "n": n,
        "num_problems": s["num_problems"], "no_answer_frac": s["no_answer_frac"],
        "grading_timeouts": s["grading_timeouts"], "grading_errors": s["grading_errors"],
        "ci": [s["ci_low"], s["ci_high"]], "pass_at_k": s["pass_at_k"],
        "maj_at_n": s.get("maj_at_n"), "checkpoint_uri": label, "engine": kind,
        "protocol": protocol.to_dict(), "shard": shard, "shards": shards,
        "per_problem": problem_accuracy(res.records)[bench],
    }
    log.info("epoch %d %s: %s = %.4f [%.4f, %.4f] over %d problems (%s engine); %s", epoch, bench,
             key, s["avg_at_n"], s["ci_low"], s["ci_high"], s["num_problems"], kind,
             budget_note(s, protocol.max_new_tokens))
    warning = budget_warning(s, protocol.max_new_tokens)
    if warning:
        log.warning("epoch %d %s: %s", epoch, bench, warning)
    if s["grading_timeouts"] or s["grading_errors"]:
        log.warning("epoch %d %s: %d grading timeouts and %d grading errors (scored 0, counted "
                    "in grading_timeouts / grading_errors)", epoch, bench,
                    s["grading_timeouts"], s["grading_errors"])
    if tracker is not None and tracking:
        if item["checkpoint"]:  # the evaluated checkpoint's LoggedModel (made if missing)
            summary["model_id"] = tracker.checkpoint_model(
                tracking["experiment_id"], tracking["run_id"], item["checkpoint"])
        summary["child_run_id"] = _log_cell(cfg, tracker, tracking, summary, res, scratch)
    return summary


def _log_cell(cfg: FlowConfig, tracker, tracking: dict, summary: dict, res, scratch: Path) -> str:
    """Log one evaluated cell (`summary` as eval_task returns it, `res` its BenchmarkResult):
    the parent run's metrics (unless the cell is sharded: join_eval logs it once all shards are
    in) and its child run (`log_eval_child`). Returns the child run's id."""
    if summary["shards"] == 1:
        tracker.log_metrics(tracking["run_id"], _cell_metrics(summary), step=summary["epoch"],
                            model_id=summary.get("model_id"))
    return log_eval_child(tracker, tracking, summary, res, scratch,
                          log_samples=cfg.tracking.log_samples)


def log_eval_child(tracker, tracking: dict, summary: dict, res, scratch: Path, *,
                   log_samples: int) -> str:
    """The FINISHED evaluation child run of one cell under `tracking["run_id"]` (in
    `tracking["experiment"]`): tags epoch/benchmark/checkpoint/engine/shard, the protocol as
    params (its `n` = the cell's samples per problem, `summary["n"]`), the scores, a preview of
    `log_samples` samples and the per-sample results (samples.parquet, summary.json). `summary`
    needs epoch, benchmark, shard, shards, engine, n, metric, checkpoint_uri, protocol and may name
    a model_id; `res` is the cell's BenchmarkResult. The layout `report.load_pipeline_run` and
    notebooks/compare_runs.py read. Returns the child run's id."""
    from prefix_rft.eval.protocol import SAMPLES_FILE, SUMMARY_FILE, write_results

    parent, epoch, bench = tracking["run_id"], summary["epoch"], summary["benchmark"]
    shard, shards, kind, n = summary["shard"], summary["shards"], summary["engine"], summary["n"]
    model_id = summary.get("model_id")
    name = run_layout.eval_run_name(bench, epoch, shard, shards)
    child = tracker.create_run(tracking["experiment"], name, {
        run_layout.EPOCH: epoch, run_layout.BENCHMARK: bench,
        run_layout.CHECKPOINT: summary["checkpoint_uri"], run_layout.ENGINE: kind,
        run_layout.SHARD: run_layout.shard_value(shard, shards),
    }, parent_run_id=parent)
    if model_id:
        tracker.link_model_input(child, model_id)
    tracker.log_params(child, run_layout.protocol_params(summary["protocol"] | {"n": n}) | {
        run_layout.BENCHMARK: bench, run_layout.EPOCH: epoch, run_layout.ENGINE: kind})
    s = res.summary
    child_metrics = {"avg_at_n": s["avg_at_n"], summary["metric"]: s["avg_at_n"],
                     "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                     "num_problems": s["num_problems"], "no_answer_frac": s["no_answer_frac"],
                     "grading_timeouts": s["grading_timeouts"],
                     "grading_errors": s["grading_errors"], "mean_tokens": s["mean_tokens"]}
    child_metrics |= {f"pass_at_{k}": v for k, v in s["pass_at_k"].items()}
    if s.get("maj_at_n") is not None:
        child_metrics[f"maj_at_{n}"] = s["maj_at_n"]
    tracker.log_metrics(child, child_metrics, step=epoch)
    preview = [{k: r[k] for k in ("problem_id", "sample", "completion", "extracted", "correct")}
               for r in res.records[:log_samples]]
    tracker.log_table(child, preview, run_layout.SAMPLES_PREVIEW_ARTIFACT)
    out = scratch / "results"
    write_results(out, [res])
    tracker.log_artifact(child, out / SAMPLES_FILE)
    tracker.log_artifact(child, out / SUMMARY_FILE)
    tracker.terminate(child, "FINISHED")
    return child


def _cell_metrics(cell: dict) -> dict[str, float]:
    """What the parent run gets for one (epoch, benchmark) result, at step=epoch."""
    b = cell["benchmark"]
    return {cell["metric"]: cell["value"], run_layout.eval_metric(b, "ci_low"): cell["ci"][0],
            run_layout.eval_metric(b, "ci_high"): cell["ci"][1],
            run_layout.eval_metric(b, "no_answer_frac"): cell["no_answer_frac"],
            run_layout.eval_metric(b, "grading_timeouts"): cell.get("grading_timeouts", 0),
            run_layout.eval_metric(b, "grading_errors"): cell.get("grading_errors", 0)}


# --------------------------------------------------------------------------------- join
def merge_shards(results: list[dict], failures: list[dict], *, n_boot: int = 2000,
                 seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """Combine the shards of each (epoch, benchmark) cell into one result (mean and bootstrap CI
    over all its problems). A cell with a failed shard becomes a failure. Returns (results,
    failures, merged cells that join_eval still has to log)."""
    from prefix_rft.eval.metrics import bootstrap_ci

    failed = {(f["epoch"], f["benchmark"]) for f in failures}
    cells: dict[tuple[int, str], list[dict]] = {}
    for r in results:
        cells.setdefault((r["epoch"], r["benchmark"]), []).append(r)
    out, to_log, more_failures = [], [], []
    for key, parts in sorted(cells.items()):
        shards = parts[0].get("shards", 1)
        if shards == 1:
            out.append(parts[0])
            continue
        if key in failed:
            continue  # the cell is reported through its failed shard
        if len(parts) != shards:
            more_failures.append({"epoch": key[0], "benchmark": key[1],
                                  "error": f"{len(parts)} of {shards} shards reported"})
            continue
        per = {}
        for prt in parts:
            per.update(prt["per_problem"])
        vals = list(per.values())
        lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
        merged = {**parts[0], "value": sum(vals) / len(vals), "num_problems": len(vals),
                  "ci": [lo, hi], "per_problem": per, "shard": None,
                  "no_answer_frac": sum(p["no_answer_frac"] * p["num_problems"] for p in parts)
                  / len(vals),
                  **{k: sum(p.get(k, 0) for p in parts)
                     for k in ("grading_timeouts", "grading_errors")}}
        for k in ("pass_at_k", "maj_at_n", "child_run_id"):
            merged.pop(k, None)
        out.append(merged)
        to_log.append(merged)
    return out, failures + more_failures, to_log


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
    metric = {r["benchmark"]: run_layout.metric_stat(r["metric"]) for r in results}
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
    for ax, key in zip(axes[:2], (run_layout.REWARD_MEAN, run_layout.LOSS)):
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


def join_eval(cfg: FlowConfig, results: list[dict], failures: list[dict], epochs_done: list[dict], *,
              lineage_prefix: str, tracker=None, tracking: dict | None = None) -> dict:
    results, failures, merged = merge_shards(results, failures, seed=cfg.seed)
    if tracker is not None and tracking:
        for m in merged:
            tracker.log_metrics(tracking["run_id"], _cell_metrics(m), step=m["epoch"],
                                model_id=m.get("model_id"))
    results = [{k: v for k, v in r.items() if k != "per_problem"} for r in results]
    best, score, common = best_epoch(results)
    refs = {e["epoch"]: e["checkpoint"] for e in epochs_done}
    out = {"results": results, "failures": failures, "best_epoch": best, "best_score": score,
           "best_benchmarks": common, "best_checkpoint": refs.get(best, {}).get("uri") if best else None,
           "table": markdown_table(results, failures), "registered": None,
           "registered_last": None, "pruned": []}
    if tracker is not None and tracking:
        run_id = tracking["run_id"]
        tags = {run_layout.EVAL_FAILED_TASKS_TAG: len(failures),
                run_layout.EVAL_TASKS_TAG: len(results) + len(failures)}
        if best is not None:
            tags |= {run_layout.BEST_EPOCH_TAG: best,
                     run_layout.BEST_CHECKPOINT_TAG: out["best_checkpoint"]}
            tracker.log_metrics(run_id, {run_layout.BEST_MACRO_METRIC: score}, step=best)
        tracker.set_tags(run_id, tags)
        tracker.log_text(run_id, out["table"], run_layout.EVAL_TABLE_ARTIFACT)
        fig = learning_curves(tracker, run_id, results)
        tracker.log_figure(run_id, fig, run_layout.LEARNING_CURVES_ARTIFACT)
        import matplotlib.pyplot as plt

        plt.close(fig)
        # the name start resolved (project/branch included); a run started before start
        # recorded it (resumed at plan_eval) had no project: the name without one
        name = (tracking["registered_model"] if "registered_model" in tracking
                else registered_model_name(cfg, RunContext()))
        if name and best is not None:
            out["registered"], out["registered_last"] = register_best_and_last(
                tracker, tracking, name, refs, best=best,
                last=epochs_done[-1]["epoch"],
                tags=run_layout.registered_version_tags(best, score, common))
    if cfg.pipeline.keep_epochs == "best_and_last" and epochs_done:
        keep = {refs[epochs_done[-1]["epoch"]]["uri"]} | ({out["best_checkpoint"]} if best else set())
        for e in epochs_done:
            uri = e["checkpoint"]["uri"]
            if uri not in keep:
                open_store(uri.rsplit("/", 1)[0]).delete(uri)
                out["pruned"].append(uri)
        if out["pruned"] and tracker is not None and tracking:
            tracker.mark_checkpoints_deleted(tracking["experiment_id"], out["pruned"])
    return out


def _model_with_weights(tracker, tracking: dict, ref: dict) -> tuple[str, str]:
    """(LoggedModel id, where its weights are) of a checkpoint. A tracking server's clients
    cannot read this machine's disk: a local checkpoint's `model/` is then copied into the
    LoggedModel's artifacts (once); S3 checkpoints (and a local MLflow) are only pointed at."""
    model_id = tracker.checkpoint_model(tracking["experiment_id"], tracking["run_id"], ref)
    source = ref["uri"] + "/model"
    if is_s3(ref["uri"]) or not tracker.uri.startswith(("http://", "https://")):
        return model_id, source
    model = tracker.logged_model(model_id)
    if model["tags"].get(run_layout.MODEL_WEIGHTS_TAG) != "copied":
        log.warning("checkpoints are local but MLflow is a server: copying %s/model into the "
                    "LoggedModel's artifacts to register it (an s3:// "
                    "pipeline.checkpoint_root avoids the copy)", ref["uri"])
        with tempfile.TemporaryDirectory() as tmp:
            tracker.attach_weights(model_id, fetch_into(ref, Path(tmp), only="model/") / "model")
    return model_id, model["artifact_location"].rstrip("/") + "/model"


def register_best_and_last(tracker, tracking: dict, name: str, refs: dict[int, dict], *,
                             best: int, last: int, tags: dict[str, str]) -> tuple[dict, dict]:
    """Register the best epoch's checkpoint model as a version of `name` with the alias `best`
    and the last epoch's with `last` (one version with both when they are the same epoch).
    Returns a record per alias: name, version, alias, model_id, source (the weights), uri."""
    def register(epoch: int, aliases: tuple[str, ...], version_tags: dict) -> dict:
        model_id, source = _model_with_weights(tracker, tracking, refs[epoch])
        version = tracker.register_model(name, model_id, aliases=aliases, tags=version_tags)
        return {"name": name, "version": version, "alias": aliases[0], "model_id": model_id,
                "source": source, "uri": f"models:/{name}@{aliases[0]}"}

    if best == last:
        rec = register(best, (run_layout.BEST_ALIAS, run_layout.LAST_ALIAS), tags)
        return rec, rec | {"alias": run_layout.LAST_ALIAS,
                           "uri": f"models:/{name}@{run_layout.LAST_ALIAS}"}
    return (register(best, (run_layout.BEST_ALIAS,), tags),
            register(last, (run_layout.LAST_ALIAS,), {"epoch": str(last)}))

