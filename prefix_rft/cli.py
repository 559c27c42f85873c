"""The `prefix-rft` command line.

    prefix-rft presets                               list the method presets
    prefix-rft config show --preset NAME             the fully resolved config of a preset
    prefix-rft config show --config FILE [--set k=v ...]
    prefix-rft config keys                           every config key with its default and meaning
    prefix-rft train --config FILE [--set k=v ...] --output DIR [--resume CKPT|latest]
    prefix-rft filter-data --input SPEC --output FILE --tokenizer MODEL [--max-tokens 8192]

User errors (bad config, bad data, missing files) print one line `error: ...` and exit with
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from prefix_rft.errors import UserError

EPILOG = """examples:
  prefix-rft presets
  prefix-rft config show --preset luffy
  prefix-rft train --config configs/demo.yaml --output runs/demo
  prefix-rft train --config configs/paper/qwen2.5-math-7b.yaml --set method=luffy --output runs/luffy
  prefix-rft train --config configs/demo.yaml --output runs/demo --resume latest
"""


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
    show = csub.add_parser("show", help="print the fully resolved config as YAML")
    show.add_argument("--preset", help="method preset to resolve (defaults + preset)")
    show.add_argument("--config", help="YAML config file")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key (repeatable), e.g. --set rl.steps=10")
    csub.add_parser("keys", help="every config key with its default and what it does")

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
    tr.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many steps (the run can be resumed later)")
    tr.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")

    fd = sub.add_parser("filter-data", help="OpenR1-Math-220k -> LUFFY-style ~46k filter",
                        description="Keep the first Math-Verify-correct trace of at most "
                        "--max-tokens tokens of the policy tokenizer per problem, drop "
                        "unparseable gold answers and duplicates; print counts per rule.")
    fd.add_argument("--input", required=True, help="raw OpenR1 file/dir or hub:open-r1/OpenR1-Math-220k")
    fd.add_argument("--output", required=True, help="output .jsonl or .parquet")
    fd.add_argument("--tokenizer", required=True, help="policy model/tokenizer (name or path)")
    fd.add_argument("--max-tokens", type=int, default=8192, help="max trace length in tokens")
    fd.add_argument("--limit", type=int, default=None, help="read at most this many rows")
    return p


def cmd_presets(args) -> int:
    from prefix_rft.presets import PRESETS

    width = max(len(n) for n in PRESETS)
    for p in PRESETS.values():
        score = f"  [paper 7B avg {p.paper_score}]" if p.paper_score is not None else ""
        print(f"{p.name:<{width}}  {p.summary}{score}")
    return 0


def cmd_config(args) -> int:
    from prefix_rft import config as C

    if args.config_command == "keys":
        for key, default, help_ in C.describe_keys():
            print(f"{key} = {default}\n    {help_}")
        return 0
    if not args.preset and not args.config:
        raise UserError("config show: give --preset NAME or --config FILE")
    data = C.read_yaml(args.config) if args.config else {}
    if args.preset:
        data["method"] = args.preset
    data.setdefault("model", {}).setdefault("name_or_path", "<model>")
    data.setdefault("data", {}).setdefault("train", "<data>")
    cfg = C.resolve(data, args.set, source=args.config or f"preset {args.preset}")
    print(cfg.to_yaml(), end="")
    return 0


def cmd_train(args) -> int:
    from prefix_rft.checkpoint import latest_checkpoint
    from prefix_rft.config import load_config
    from prefix_rft.trainer import Trainer

    cfg = load_config(args.config, args.set)
    out = Path(args.output)
    if not args.resume and ((out / "metrics.jsonl").exists() or latest_checkpoint(out / "checkpoints")):
        raise UserError(f"{out}: holds an earlier run (metrics.jsonl/checkpoints); continue it with "
                        "--resume latest, or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    trainer = Trainer(cfg, output_dir=out, progress=not args.quiet)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() and args.resume else {}
    try:
        if args.resume:
            ck = latest_checkpoint(out / "checkpoints") if args.resume == "latest" else Path(args.resume)
            if ck is None:
                raise UserError(f"--resume latest: no checkpoint under {out / 'checkpoints'}")
            trainer.load(ck)
            logging.info("resumed from %s (step %d)", ck, trainer.state.global_step)
        do_eval = not args.no_eval and cfg.eval.num_problems > 0 and trainer.test_set
        if do_eval and "eval_before" not in summary:
            before = trainer.evaluate()
            summary["eval_before"] = {k: v for k, v in before.items() if k != "samples"}
            logging.info("held-out accuracy before training: %.3f", before["eval/accuracy"])
            summary_path.write_text(json.dumps(summary, indent=1))
        t0 = time.time()
        trainer.fit(max_steps=args.max_steps)
        summary["train_seconds"] = summary.get("train_seconds", 0) + time.time() - t0
        final = trainer.save(out / "checkpoints" / trainer.checkpoint_name())
        summary["checkpoint"] = str(final)
        summary["state"] = {"phase": trainer.state.phase, "global_step": trainer.state.global_step,
                            "sft_step": trainer.state.sft_step}
        if trainer.history:
            summary["last_metrics"] = trainer.history[-1]
        if do_eval and trainer.state.phase == "done":
            after = trainer.evaluate()
            summary["eval_after"] = {k: v for k, v in after.items() if k != "samples"}
            with open(out / "eval_samples.jsonl", "w") as f:
                for s in after["samples"]:
                    f.write(json.dumps(s) + "\n")
        summary_path.write_text(json.dumps(summary, indent=1))
    finally:
        trainer.close()
    b = summary.get("eval_before", {}).get("eval/accuracy")
    a = summary.get("eval_after", {}).get("eval/accuracy")
    if b is not None and a is not None:
        print(f"held-out accuracy ({cfg.data.test}, {summary['eval_after']['eval/num_problems']} "
              f"problems, avg@{cfg.eval.n_samples}): before {b:.3f} -> after {a:.3f}")
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def cmd_filter_data(args) -> int:
    from prefix_rft.data import filter_openr1, save_problems
    from prefix_rft.data.readers import iter_rows
    from prefix_rft.models import load_tokenizer
    from prefix_rft.reward import gold_is_parseable

    tok = load_tokenizer(args.tokenizer)

    def rows():
        for n, row in enumerate(iter_rows(args.input)):
            if args.limit is not None and n >= args.limit:
                return
            yield row.fields

    def count_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    problems, stats = filter_openr1(rows(), count_tokens=count_tokens, gold_ok=gold_is_parseable,
                                    max_trace_tokens=args.max_tokens)
    save_problems(problems, args.output)
    print(json.dumps(stats.as_dict(), indent=1))
    print(f"wrote {len(problems)} problems to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = {"presets": cmd_presets, "config": cmd_config, "train": cmd_train,
                "filter-data": cmd_filter_data}
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
