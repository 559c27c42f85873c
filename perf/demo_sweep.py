"""How reliably does a training config reach its held-out accuracy? Several seeds of one or more
variants of a config, each trained in its own process, held-out accuracy measured at given steps.
One run of the demo (8 prompts a step) is one draw of a noisy outcome: this is how the demo's
settings were chosen and how a claimed accuracy is checked (docs/DEMO.md).

    python perf/demo_sweep.py --seeds 1-8 --eval-at 10,20 --jobs 2 --out runs/sweep
    python perf/demo_sweep.py --variant base= --variant "lr3=rl.optim.lr=3e-5" \\
        --seeds 1-8 --eval-at 6,12 --jobs 16 --out $OUT/sweep         # a GPU machine: many at once

Each run (one process; `--set` overrides of the variant, then `seed=S`) builds the trainer as
`prefix-rft train` does, trains to each `--eval-at` step and evaluates the held-out set there with
the config's `eval` section (the pipeline's `heldout` cell: the same greedy evaluation), without
writing checkpoints. Results: OUT/runs/<variant>-s<seed>.json (accuracy per eval step, training
seconds, the metrics of every step, the graded evaluation samples) and OUT/summary.json + a printed table per variant and eval
step: mean, min, max of the accuracy over seeds and how many seeds reach `--target`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seeds_of(spec: str) -> list[int]:
    """'1-4,9' -> [1, 2, 3, 4, 9]."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def variant_of(spec: str) -> tuple[str, list[str]]:
    """'name=key=value,key=value' (or 'name=' for the config as it is) -> (name, overrides)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {spec!r}: expected NAME=KEY=VALUE[,KEY=VALUE...] or NAME=")
    return name, [s for s in rest.split(",") if s]


def one(a) -> None:
    """One seed of one variant (a child process)."""
    import torch

    from prefix_rft.core.config import load_config
    from prefix_rft.train.trainer import Trainer

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config, list(a.set) + [f"seed={a.seed}"])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    setup_s = time.perf_counter() - t0
    evals, samples, train_s = {}, {}, 0.0
    try:
        for step in a.eval_at:
            if trainer.state.phase == "done":
                break
            t = time.perf_counter()
            trainer.fit(max_steps=step - trainer.train_steps)
            train_s += time.perf_counter() - t
            ev = trainer.evaluate()
            evals[str(trainer.train_steps)] = ev["eval/accuracy"]
            samples[str(trainer.train_steps)] = ev["samples"]
    finally:
        trainer.close()
    steps = [m for m in trainer.history if m.get("phase") in ("rl", "sft")]
    Path(a.result).write_text(json.dumps({
        "seed": a.seed, "overrides": a.set, "device": str(trainer.device), "setup_s": setup_s,
        "train_s": train_s, "seconds_per_step": train_s / max(1, len(steps)), "accuracy": evals,
        "steps": steps, "samples": samples}))


def summarize(results: dict[str, list[dict]], target: float) -> tuple[dict, str]:
    summary, lines = {}, []
    lines.append(f"{'variant':<28}{'step':>5}{'mean':>7}{'min':>7}{'max':>7}  >={target:<5} "
                 f"{'s/step':>7}  accuracies")
    for name, runs in results.items():
        summary[name] = {}
        for step in sorted({s for r in runs for s in r["accuracy"]}, key=int):
            accs = [r["accuracy"][step] for r in runs if step in r["accuracy"]]
            row = {"mean": statistics.fmean(accs), "min": min(accs), "max": max(accs),
                   "reached": sum(x >= target for x in accs), "seeds": len(accs),
                   "accuracies": accs,
                   "seconds_per_step": statistics.fmean(r["seconds_per_step"] for r in runs)}
            summary[name][step] = row
            lines.append(f"{name:<28}{step:>5}{row['mean']:>7.3f}{row['min']:>7.3f}"
                         f"{row['max']:>7.3f}  {row['reached']:>2}/{row['seeds']:<3} "
                         f"{row['seconds_per_step']:>7.2f}  " + " ".join(f"{x:.2f}" for x in accs))
    return summary, "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=KEY=VALUE[,KEY=VALUE...] (repeatable; default: the config as it is)")
    p.add_argument("--seeds", default="1-4", help="e.g. 1-8 or 1,5,9")
    p.add_argument("--eval-at", default="10,20", help="training steps at which to evaluate")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: default)")
    p.add_argument("--set-all", default="",
                   help="KEY=VALUE[,KEY=VALUE...] applied to every variant (before its own)")
    p.add_argument("--target", type=float, default=0.6)
    p.add_argument("--code", default=str(ROOT),
                   help="the checkout whose prefix_rft the runs import (compare commits)")
    p.add_argument("--out", required=True)
    # a child process
    p.add_argument("--summarize", action="store_true",
                   help="only summarise the runs already under OUT/runs (e.g. of a killed sweep)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.eval_at = sorted(int(x) for x in a.eval_at.split(","))
    if a.one:
        one(a)
        return 0
    out = Path(a.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if a.summarize:
        found: dict[str, list[dict]] = {}
        for f in sorted((out / "runs").glob("*-s*.json")):
            found.setdefault(f.stem.rsplit("-s", 1)[0], []).append(json.loads(f.read_text()))
        print(summarize(found, a.target)[1])
        return 0
    common = [s for s in a.set_all.split(",") if s]
    variants = [(n, common + sets) for n, sets in
                ([variant_of(v) for v in a.variant] or [("config", [])])]
    jobs = [(name, sets, s) for name, sets in variants for s in seeds_of(a.seeds)]

    def launch(job):
        name, sets, seed = job
        result = out / "runs" / f"{name}-s{seed}.json"
        log = out / "runs" / f"{name}-s{seed}.log"
        cmd = [sys.executable, __file__, "--one", "--code", a.code, "--config", a.config, "--seed", str(seed),
               "--eval-at", ",".join(map(str, a.eval_at)), "--result", str(result),
               "--threads", str(a.threads), "--out", str(out)]
        for s in sets:
            cmd += ["--set", s]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            x for x in (a.code, os.environ.get("PYTHONPATH")) if x))
        t = time.perf_counter()
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        print(f"{name} seed {seed}: rc {rc} in {time.perf_counter() - t:.0f} s", flush=True)
        return name, json.loads(result.read_text()) if rc == 0 and result.exists() else None

    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    failed = []
    with ThreadPoolExecutor(a.jobs) as pool:
        for name, res in pool.map(launch, jobs):
            (results[name].append(res) if res else failed.append(name))
    summary, table = summarize({k: v for k, v in results.items() if v}, a.target)
    (out / "summary.json").write_text(json.dumps({
        "config": a.config, "variants": dict(variants), "seeds": seeds_of(a.seeds),
        "eval_at": a.eval_at, "target": a.target, "failed": failed, "summary": summary}, indent=1))
    print(table)
    if failed:
        print(f"failed runs: {failed} (logs in {out / 'runs'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
