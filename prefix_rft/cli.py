"""The `prefix-rft` command line.

    prefix-rft presets                               list the method presets
    prefix-rft config show --preset NAME             the fully resolved config of a preset
    prefix-rft config show --config FILE [--set k=v ...]
    prefix-rft config keys                           every training config key, its default and meaning
    prefix-rft train --config FILE [--set k=v ...] --output DIR [--resume CKPT|latest]
    prefix-rft filter-data --input SPEC --output FILE --tokenizer MODEL [--max-tokens 8192]
    prefix-rft eval --model PATH_OR_URI [--benchmarks aime24,amc,...] [--protocol default|paper]
                    [--n 32] --output DIR                 avg@n, pass@k, maj@n, CIs per benchmark
    prefix-rft compare DIR_OR_MLFLOW_RUN ... [--output report.md]   paired comparison of runs

User errors (bad config, bad data, missing files) print one line `error: ...` and exit with
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from prefix_rft.core.config import Range
from prefix_rft.errors import UserError

EPILOG = """examples:
  prefix-rft presets
  prefix-rft config show --preset luffy
  prefix-rft train --config configs/demo.yaml --output runs/demo
  prefix-rft train --config configs/paper/qwen2.5-math-7b.yaml --set method=luffy --output runs/luffy
  prefix-rft train --config configs/demo.yaml --output runs/demo --resume latest
  prefix-rft eval --model runs/demo/checkpoints/step-000020 --benchmarks math500 --n 4 --output runs/eval
  prefix-rft compare runs/eval-base runs/eval-prefix --output report.md
"""


def ranged(kind: type = int, *, ge=None, gt=None, le=None, lt=None):
    """An argparse `type` for a number `kind` (int or float) in a range (bounds as `option`'s
    in the config: `ge`/`gt` lower, `le`/`lt` upper). A value out of range, or not a number,
    makes argparse print `argument --x: ...` with the value and the range, and exit 2."""
    rng = Range.of(ge=ge, gt=gt, le=le, lt=lt) or Range()
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {noun} {rng.text()}, got {text!r}") from None
        if not rng.contains(value):
            raise argparse.ArgumentTypeError(f"{value!r} is out of range: must be {rng.text()}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefix-rft",
        description="Prefix-RFT and its SFT/RL baselines as presets of one hybrid token-level loss.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("presets", help="list the method presets, one line each")

    cfg = sub.add_parser("config", help="show a resolved config or the config reference")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    add_config_commands(csub, example="rl.steps=10",
                        keys_help="every training config key with its default and what it does "
                        "(the pipeline's own keys: python -m steps.flow_config keys)")

    tr = sub.add_parser("train", help="train a policy with a config",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train with the method preset and settings of a YAML config. "
                        "Writes checkpoints, metrics.jsonl and summary.json under --output.")
    tr.add_argument("--config", required=True, help="YAML config file (see configs/)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable), e.g. --set rl.steps=10")
    tr.add_argument("--output", required=True, help="output directory")
    tr.add_argument("--resume", help="checkpoint directory to continue from, or 'latest' "
                    "(the newest checkpoint under OUTPUT/checkpoints)")
    tr.add_argument("--allow-config-change", action="store_true",
                    help="with --resume: continue with a config that differs from the "
                    "checkpoint's in other keys than the budget (rl.steps, sft.epochs) and "
                    "log_every/save_every/keep_last; recorded in OUTPUT/config_changes.jsonl")
    tr.add_argument("--max-steps", type=ranged(int, ge=1), default=None,
                    help="stop after this many steps (the run can be resumed later)")
    tr.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    tr.add_argument("--final-model-only", action="store_true",
                    help="the checkpoint written when training finishes keeps the weights, "
                    "tokenizer and step counters but not the optimizer and scheduler states "
                    "(as HF Trainer's save_only_model): a third of a float32 AdamW checkpoint; "
                    "a larger budget can then not --resume it")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")

    fd = sub.add_parser("filter-data", help="OpenR1-Math-220k -> LUFFY-style ~46k filter",
                        description="Keep the first Math-Verify-correct trace of at most "
                        "--max-tokens tokens of the policy tokenizer per problem, drop "
                        "unparseable gold answers and duplicates; print counts per rule.")
    fd.add_argument("--input", required=True,
                    help="raw OpenR1 file/dir, s3:// (or other fsspec) URL, or hub:open-r1/OpenR1-Math-220k")
    fd.add_argument("--output", required=True, help="output .jsonl or .parquet")
    fd.add_argument("--tokenizer", required=True, help="policy model/tokenizer (name or path)")
    fd.add_argument("--max-tokens", type=ranged(int, ge=1), default=8192,
                    help="max trace length in tokens")
    fd.add_argument("--limit", type=ranged(int, ge=1), default=None,
                    help="read at most this many rows")
    fd.add_argument("--num-proc", type=ranged(int, ge=1), default=None,
                    help="worker processes of the datasets map (default: min(CPUs, 8); small "
                    "inputs run in this process)")

    ev = sub.add_parser(
        "eval", help="evaluate a model/checkpoint on math benchmarks (avg@n, pass@k, maj@n, CIs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample n completions per problem, grade the last \\boxed{} with Math-Verify, "
        "write OUTPUT/samples.parquet (one row per sample) and OUTPUT/summary.json (per benchmark: "
        "avg@n, pass@k, maj@n, bootstrap 95%% CI; grading_timeouts/grading_errors (scored 0, "
        "counted); macro average; the protocol and the model). OUTPUT is checked writable before "
        "the model loads, and both files are rewritten after every benchmark (summary.json "
        "'complete' and 'pending' say how far it got). A prompt longer than the model's context "
        "minus --max-new-tokens is refused with its file and row before generation.\n\n"
        "protocols:\n  default  n=32 everywhere, temperature 0.6, top_p 0.95, 8192 new tokens\n"
        "  paper    n=32 on aime24/aime25/amc, n=1 on the others (the paper's Table 1)")
    ev.add_argument("--model", required=True, help="checkpoint dir or s3:// URI (with MANIFEST.json), "
                    "HF model dir, a built-in alias (smollm2-135m-instruct, qwen2.5-coder-1.5b-instruct, "
                    "qwen2.5-coder-0.5b-instruct: converted into $PREFIX_RFT_CACHE on first use), "
                    "or a hub id (online)")
    ev.add_argument("--benchmarks", default=",".join(("aime24", "aime25", "amc", "math500", "minerva",
                                                      "olympiadbench")),
                    help="comma-separated names (aime24, aime25, amc, math500, minerva, "
                    "olympiadbench, arc_c, gpqa_diamond) or problems files (default: the six math sets)")
    ev.add_argument("--protocol", default="default", help="default | paper")
    ev.add_argument("--n", type=ranged(int, ge=1), default=None,
                    help="samples per problem on every benchmark")
    ev.add_argument("--temperature", type=ranged(float, ge=0), default=None,
                    help="sampling temperature, >= 0 (0 = greedy)")
    ev.add_argument("--top-p", type=ranged(float, gt=0, le=1), default=None,
                    help="nucleus sampling, > 0 and <= 1")
    ev.add_argument("--max-new-tokens", type=ranged(int, ge=1), default=None)
    ev.add_argument("--seed", type=ranged(int, ge=0), default=None,
                    help="sampling seed (same seed, same results)")
    ev.add_argument("--max-problems", type=ranged(int, ge=1), default=None,
                    help="only the first K problems of each benchmark (smoke runs)")
    ev.add_argument("--source", default="default",
                    help="default (our vendored copies) | luffy (LUFFY's valid.all.parquet problems)")
    ev.add_argument("--engine", default="auto", help="auto (vLLM if installed with a GPU) | hf | vllm")
    ev.add_argument("--decoding", default="auto", choices=["auto", "generate", "graph", "compiled"],
                    help="HF engine: as model.decoding (auto = compiled CUDA-graph decoding on a GPU)")
    ev.add_argument("--chat-template", default=None, help="as model.chat_template (e.g. qwen2.5-instruct)")
    ev.add_argument("--think-tags", action="store_true", help="open responses with <think>")
    ev.add_argument("--dtype", default="bfloat16", help="bfloat16 | float16 | float32 (CPU: float32)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=ranged(int, ge=1), default=64,
                    help="rows generated together (HF engine)")
    ev.add_argument("--workers", type=ranged(int, ge=0), default=2,
                    help="grader processes (0 = grade in this process)")
    ev.add_argument("--output", required=True, help="output directory")

    cp = sub.add_parser("compare", help="compare evaluation results of two or more runs",
                        description="Per-benchmark avg@n with 95%% CIs and paired differences "
                        "against the first run, as Markdown (and a figure). A source is an `eval` "
                        "output dir or mlflow:RUN_ID (a pipeline run: its last evaluated epoch).")
    cp.add_argument("sources", nargs="+", help="result dirs or mlflow:RUN_ID (2 or more)")
    cp.add_argument("--names", default=None, help="comma-separated display names")
    cp.add_argument("--output", default=None, help="write the Markdown here (default: print it)")
    cp.add_argument("--figure", default=None, help="write a bar chart with CIs here (.png)")
    cp.add_argument("--tracking-uri", default=None, help="MLflow URI for mlflow:RUN_ID sources")
    cp.add_argument("--epoch", type=ranged(int, ge=0), default=None,
                    help="which epoch of a pipeline run (0 = the base model)")
    return p


def cmd_presets(args) -> int:
    from prefix_rft.core.presets import PRESETS

    width = max(len(n) for n in PRESETS)
    for p in PRESETS.values():
        score = f"  [paper 7B avg {p.paper_score}]" if p.paper_score is not None else ""
        print(f"{p.name:<{width}}  {p.summary}{score}")
    return 0


def add_config_commands(sub, *, example: str, keys_help: str) -> None:
    """`show` and `keys` subcommands on `sub`: shared by `prefix-rft config` and the flow's
    `python -m steps.flow_config`, which shows the same for its larger config class."""
    show = sub.add_parser("show", help="print the fully resolved config as YAML")
    show.add_argument("--preset", help="method preset to resolve (defaults + preset)")
    show.add_argument("--config", help="YAML config file")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help=f"override a config key (repeatable), e.g. --set {example}")
    sub.add_parser("keys", help=keys_help)


def config_command(command: str, args, cls=None) -> int:
    """Run `show` or `keys` (see `add_config_commands`) for config class `cls` (default: the
    training `Config`)."""
    from prefix_rft.core.config import Config, keys_text, show_config

    cls = cls or Config
    if command == "keys":
        print(keys_text(cls), end="")
    else:
        print(show_config(args.config, args.preset, args.set, cls=cls), end="")
    return 0


def cmd_config(args) -> int:
    return config_command(args.config_command, args)


def cmd_train(args) -> int:
    from prefix_rft.core.config import load_config
    from prefix_rft.train.checkpoint import latest_checkpoint, prune_checkpoints
    from prefix_rft.train.trainer import Trainer

    cfg = load_config(args.config, args.set)
    out = check_output_dir(args.output, files=TRAIN_FILES, dirs=("checkpoints",))
    if not args.resume and ((out / "metrics.jsonl").exists() or latest_checkpoint(out / "checkpoints")):
        raise UserError(f"{out}: holds an earlier run (metrics.jsonl/checkpoints); continue it with "
                        "--resume latest, or choose another --output")
    if args.allow_config_change and not args.resume:
        raise UserError("--allow-config-change applies to --resume only")
    ck = _resume_checkpoint(args, cfg, out) if args.resume else None
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 writes
        (out / "config.yaml").write_text(cfg.to_yaml())
    trainer = Trainer(cfg, output_dir=out, progress=not args.quiet)
    main = trainer.rank == 0  # under torchrun every rank trains; rank 0 writes and reports
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and args.resume else {}
    try:
        if ck is not None:
            trainer.load(ck)
            logging.info("resumed from %s (step %d)", ck, trainer.state.global_step)
            if main:  # the steps after the checkpoint run again: their old rows go
                from prefix_rft.train.resume import truncate_metrics

                truncate_metrics(out / "metrics.jsonl", sft_step=trainer.state.sft_step,
                                 global_step=trainer.state.global_step)
            if trainer.state.phase == "done":
                print(f"nothing to train: {ck} is the end of the run's budget (raise rl.steps or "
                      "sft.epochs with --set to continue it)")
                return 0
        do_eval = not args.no_eval and cfg.eval.num_problems > 0 and trainer.test_set
        if do_eval and "eval_before" not in summary:
            before = trainer.evaluate()
            summary["eval_before"] = {k: v for k, v in before.items() if k != "samples"}
            logging.info("held-out accuracy before training: %.3f", before["eval/accuracy"])
            if main:
                summary_path.write_text(json.dumps(summary, indent=1))
        written: list[Path] = []

        def keep_last(path: Path, final: bool) -> None:  # OUTPUT/checkpoints keeps `keep_last`
            written.append(path)
            if main:
                prune_checkpoints(path.parent, cfg.keep_last, keep=path)

        t0 = time.time()
        trainer.fit(max_steps=args.max_steps, on_checkpoint=keep_last,
                    final_model_only=args.final_model_only)
        summary["train_seconds"] = summary.get("train_seconds", 0) + time.time() - t0
        summary["checkpoint"] = str(written[-1])  # the final one
        summary["state"] = {"phase": trainer.state.phase, "global_step": trainer.state.global_step,
                            "sft_step": trainer.state.sft_step}
        if trainer.history:
            summary["last_metrics"] = trainer.history[-1]
        if do_eval and trainer.state.phase == "done":
            after = trainer.evaluate()
            summary["eval_after"] = {k: v for k, v in after.items() if k != "samples"}
            if main:
                with open(out / "eval_samples.jsonl", "w") as f:
                    for s in after["samples"]:
                        f.write(json.dumps(s) + "\n")
        if main:
            summary_path.write_text(json.dumps(summary, indent=1))
    finally:
        trainer.close()
    if not main:
        return 0
    b = summary.get("eval_before", {}).get("eval/accuracy")
    a = summary.get("eval_after", {}).get("eval/accuracy")
    if b is not None and a is not None:
        print(f"held-out accuracy ({cfg.data.test}, {summary['eval_after']['eval/num_problems']} "
              f"problems, avg@{cfg.eval.n_samples}): before {b:.3f} -> after {a:.3f}")
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def _resume_checkpoint(args, cfg, out: Path) -> Path:
    """The checkpoint `--resume` names, verified against its manifest (a corrupted file is
    refused, never trained on), with the config compared to the checkpoint's
    (`prefix_rft.train.resume`: budget changes continue the run, other changes need
    --allow-config-change); accepted changes are recorded and stale staging directories of
    interrupted saves removed. All before the model is loaded."""
    from prefix_rft.io.store import remove_stale_staging, verify_local_checkpoint
    from prefix_rft.train.checkpoint import STATE_FILE, latest_checkpoint
    from prefix_rft.train.resume import check_resume_config, record_changes

    ck = latest_checkpoint(out / "checkpoints") if args.resume == "latest" else Path(args.resume)
    if ck is None:
        raise UserError(f"--resume latest: no checkpoint under {out / 'checkpoints'}")
    verify_local_checkpoint(ck)
    state = json.loads((ck / STATE_FILE).read_text())
    changes = check_resume_config(ck, cfg, state, allow=args.allow_config_change)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        record_changes(out, ck, state, changes)  # and logs each change
        remove_stale_staging(out / "checkpoints")
    return ck


TRAIN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "eval_samples.jsonl")


def check_output_dir(path: str, *, files: tuple[str, ...] = (), dirs: tuple[str, ...] = (),
                     option: str = "--output") -> Path:
    """The output directory `path`, checked writable before any expensive work
    (model load, generation): one `UserError` naming the path and the problem for a URL (only
    local directories are written), a file where the directory should be, a parent that is a
    file, a directory that cannot be created or written, or a directory (a file) where one of
    `files` (`dirs`) will be written."""
    import tempfile

    text = str(path)
    if "://" in text and not text.startswith("file://"):
        raise UserError(f"{option} {text}: only a local directory can be written (write locally, "
                        "then copy the results)")
    out = Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out}: exists and is not a directory")
    existing = out.absolute()  # created later, by the first write; nothing is made here
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {out}: cannot create the directory ({existing} is not a "
                        "directory)")
    for name in files:
        if (out / name).is_dir():
            raise UserError(f"{option} {out}: {out / name} is a directory, but the file {name} "
                            "is written there")
    for name in dirs:
        if (out / name).exists() and not (out / name).is_dir():
            raise UserError(f"{option} {out}: {out / name} is a file, but the directory {name} "
                            "is written there")
    try:  # a real write: permission bits say nothing for root, read-only mounts or full disks
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".prefix-rft-write-check-"):
            pass
    except OSError as e:
        where = "" if existing == out.absolute() else f" (in {existing})"
        raise UserError(f"{option} {out}: cannot write there{where} ({e.strerror or e})") from None
    return out


def cmd_filter_data(args) -> int:
    from prefix_rft.data import save_problems
    from prefix_rft.data.filter import filter_openr1_source
    from prefix_rft.models import load_tokenizer

    problems, stats = filter_openr1_source(args.input, load_tokenizer(args.tokenizer),
                                           max_trace_tokens=args.max_tokens, limit=args.limit,
                                           num_proc=args.num_proc)
    save_problems(problems, args.output)
    print(json.dumps(stats.as_dict(), indent=1))
    print(f"wrote {len(problems)} problems to {args.output}")
    return 0


def cmd_eval(args) -> int:
    import tempfile

    from prefix_rft.eval import protocol as BE
    from prefix_rft.eval.benchmarks import benchmark_label, load_benchmark
    from prefix_rft.models import load_tokenizer
    from prefix_rft.rollout.engines.factory import EngineSpec, make_engine
    from prefix_rft.rollout.reward import RewardGrader

    protocol = BE.get_protocol(args.protocol).replace(
        n=args.n, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed)
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if not names:
        raise UserError("--benchmarks: give at least one benchmark")
    out = check_output_dir(args.output, files=(BE.SAMPLES_FILE, BE.SUMMARY_FILE))
    with tempfile.TemporaryDirectory(prefix="prefix-rft-eval-") as scratch:
        model_dir = BE.resolve_model_dir(args.model, scratch)  # fails before any loading
        sets = {}
        for name in names:
            problems = load_benchmark(name, source=args.source)
            sets[benchmark_label(name)] = problems[: args.max_problems] if args.max_problems else problems
        tok = load_tokenizer(model_dir, chat_template=args.chat_template)
        _check_eval_prompts(sets, tok, model_dir, protocol, args.think_tags)
        engine, kind = make_engine(args.engine, EngineSpec(
            tok, model_dir=model_dir, dtype=args.dtype, device=args.device,
            max_batch_size=args.batch_size, seed=protocol.seed, decoding=args.decoding),
            key="--engine")
        results = []
        extra = {"model": args.model, "engine": kind, "protocol": protocol.to_dict(),
                 "source": args.source}
        with RewardGrader(num_workers=args.workers) as grader:
            for i, (name, problems) in enumerate(sets.items()):
                t0 = time.time()
                res = BE.evaluate_benchmark(engine, tok, name, problems, protocol, grader,
                                            think_tags=args.think_tags, model=args.model,
                                            chat_template=args.chat_template)
                res.summary["engine"] = kind
                results.append(res)
                s = res.summary
                print(f"{name:14s} avg@{protocol.n_for(name):<3d} {s['avg_at_n']:.4f}  "
                      f"95% CI [{s['ci_low']:.4f}, {s['ci_high']:.4f}]  "
                      f"({s['num_problems']} problems, {time.time() - t0:.0f} s)"
                      + _grading_note(s), flush=True)
                # written after every benchmark: a late failure keeps the finished ones
                pending = list(sets)[i + 1:]
                BE.write_results(out, results, extra={**extra, "complete": not pending,
                                                      "pending": pending})
        engine.close()
    failures = {k: sum(r.summary[k] for r in results) for k in ("grading_timeouts", "grading_errors")}
    summary = BE.write_results(out, results, extra={**extra, **failures, "complete": True,
                                                    "pending": []})
    if summary["macro_avg"] is not None:
        print(f"{'macro':14s}         {summary['macro_avg']:.4f}")
    print(f"wrote {Path(args.output) / BE.SAMPLES_FILE} and {Path(args.output) / BE.SUMMARY_FILE}")
    return 0


def _grading_note(s: dict) -> str:
    """`, N grading timeouts, M grading errors` when there were any (they score 0)."""
    t, e = s.get("grading_timeouts", 0), s.get("grading_errors", 0)
    return f"  [{t} grading timeouts, {e} grading errors: scored 0]" if t or e else ""


def _check_eval_prompts(sets: dict, tok, model_dir: str, protocol, think_tags: bool) -> None:
    """Every benchmark's prompts against the model's context minus the protocol's new tokens,
    before the model is loaded (`prefix_rft.data.lengths`)."""
    from prefix_rft.data.lengths import PromptLimit, check_prompt_lengths, model_context

    context = model_context(model_dir)
    if not context:
        return
    limit = PromptLimit(context, protocol.max_new_tokens, "the model's max_position_embeddings",
                        "--max-new-tokens / the protocol")
    for name, problems in sets.items():
        check_prompt_lengths(problems, tok, limit, think_tags=think_tags, what=f"benchmark {name}")


def cmd_compare(args) -> int:
    from prefix_rft.eval import report

    if len(args.sources) < 2:
        raise UserError("compare: give two or more result dirs or mlflow:RUN_ID sources")
    names = args.names.split(",") if args.names else None
    runs = [report.load_run(s, tracking_uri=args.tracking_uri, epoch=args.epoch) for s in args.sources]
    md = report.comparison_markdown(runs, names=names)
    if args.output:
        Path(args.output).write_text(md)
        print(f"wrote {args.output}")
    else:
        print(md, end="")
    if args.figure:
        report.comparison_figure(runs, names=names).savefig(args.figure, dpi=120, bbox_inches="tight")
        print(f"wrote {args.figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"presets": cmd_presets, "config": cmd_config, "train": cmd_train,
                "filter-data": cmd_filter_data, "eval": cmd_eval, "compare": cmd_compare}
    try:
        return handlers[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
