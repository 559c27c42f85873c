"""The fixed CPU benchmark: the demo's training step (configs/demo.yaml: SmolLM2-135M-Instruct
float32, Prefix-RFT, 8 prompts x 4 samples, at most 48 new tokens) timed by phase, and a check
that a new release is not more than 10% slower than a recorded baseline. A script, not a test:
wall-clock time is never asserted in the test suite.

    python benchmarks/cpu_regression.py run --out runs/bench/cpu_demo.json
    python benchmarks/cpu_regression.py run --out new.json --baseline benchmarks/baselines/cpu_demo.json
    python benchmarks/cpu_regression.py compare new.json benchmarks/baselines/cpu_demo.json

`run`: builds the trainer from the config exactly as `prefix-rft train` does (same seed, so the
same prompts, samples and token counts every time the code's numerics are unchanged), runs
`--warmup` untimed steps then `--steps` timed ones and records, per step, the trainer's phase
times (time/generation, time/reward, time/old_logprobs, time/update, time/step), the wall time,
the unaccounted rest (the demo's demo/nll monitoring pass lives there) and the token counts; the
medians go to `summary`. The machine (CPU model, cores, torch threads, load average before and
after) is recorded with the versions and the git commit: compare only runs of the same machine
class, on an otherwise idle machine (a load average above the core count makes the numbers noise).

`compare` (also `run --baseline`): for the step and every phase whose baseline median is at
least `--min-seconds` (default 0.5 s), the new median may exceed the baseline by at most
`--threshold` (default 0.10). When the token counts differ (the workload changed), seconds per
token are compared instead and the change is reported. Exit status 1 on a regression.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_step  # noqa: E402  (benchmarks/rl_step.py: shared measurement helpers)

ROOT = rl_step.ROOT
PHASES = ("wall_s", "cpu_s", "time/generation", "time/reward", "time/old_logprobs", "time/update")
PER_TOKEN = {"wall_s": "train_tokens", "cpu_s": "train_tokens", "time/generation": "generated_tokens",
             "time/reward": "completion_tokens", "time/old_logprobs": "train_tokens",
             "time/update": "train_tokens"}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run(a) -> dict:
    import prefix_rft
    from prefix_rft.config import load_config
    from prefix_rft.trainer import Trainer

    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1):
        print(f"WARNING: load average {load_before[0]:.1f} > {os.cpu_count()} cores: other work "
              "shares the CPU and the times below are not comparable", flush=True)
    cfg = load_config(a.config, a.set)
    t = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    setup_s = time.perf_counter() - t
    captured: list = []
    orig = trainer.update

    def update(*args, **kw):
        captured.append(args[0] if args else kw["trajs"])
        return orig(*args, **kw)

    trainer.update = update
    rows = []
    for k in range(a.warmup + a.steps):
        captured.clear()
        rl_step.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        m = trainer.rl_step()
        rl_step.sync()
        row = {"step": k, "timed": k >= a.warmup, "wall_s": time.perf_counter() - t0,
               "cpu_s": time.process_time() - c0}
        row.update({p: m[p] for p in rl_step.PHASES if p in m})
        row["time/unaccounted"] = row["wall_s"] - sum(row.get(p, 0.0) for p in rl_step.PHASES[:4])
        row.update(rl_step.token_counts(captured[0], cfg.rl.micro_batch_size))
        row["reward/mean"] = m.get("reward/mean")
        rows.append(row)
        print(f"step {k}{'' if row['timed'] else ' (warm-up)'}: wall {row['wall_s']:.2f} s = "
              + ", ".join(f"{p.split('/')[1]} {row[p]:.2f}" for p in rl_step.PHASES[:4] if p in row)
              + f", rest {row['time/unaccounted']:.2f}; {row['generated_tokens']} generated, "
              f"{row['train_tokens']} trained tokens", flush=True)
    trainer.close()
    timed = [r for r in rows if r["timed"]]
    keys = [k for k in rows[0] if k not in ("step", "timed")]
    summary = {k: statistics.median(r[k] for r in timed if r.get(k) is not None) for k in keys}
    summary["setup_s"] = setup_s
    env = rl_step.environment(torch.device("cpu"))
    env.update({"prefix_rft": prefix_rft.__version__, "git_commit": git_commit(),
                "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    return {"benchmark": "cpu_regression", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "config": a.config, "overrides": a.set or [], "env": env,
            "warmup": a.warmup, "steps": a.steps, "summary": summary, "rows": rows}


def compare(new: dict, base: dict, threshold: float, min_seconds: float) -> tuple[bool, str]:
    """(regressed, report) for two `run` results."""
    tok = ("completion_tokens", "generated_tokens", "train_tokens")
    counts = lambda res: [[r[k] for k in tok] for r in res["rows"]]  # noqa: E731
    same = counts(new) == counts(base)
    note = None
    if not same and counts(new)[: len(base["rows"])] == counts(base):
        # the seeded workload's first steps are the baseline's (a run with more --steps):
        # compare those steps' medians, not seconds per token (the padded CPU passes do not
        # scale with the trained tokens, so per-token figures of different steps mislead)
        timed = [r for r in new["rows"][: len(base["rows"])] if r.get("timed", True)]
        new = dict(new, summary={k: statistics.median(r[k] for r in timed) for k in PHASES
                                 if all(r.get(k) is not None for r in timed)})
        same = True
        note = (f"the first {len(base['rows'])} steps (warm-up included) are the baseline's "
                f"workload: comparing their medians")
    lines = [f"baseline: {base['env'].get('git_commit')} ({base['env'].get('date')}, "
             f"{base['env'].get('cpu')}, load {base['env'].get('loadavg_before')})",
             f"new:      {new['env'].get('git_commit')} ({new['env'].get('date')}, "
             f"{new['env'].get('cpu')}, load {new['env'].get('loadavg_before')})"]
    if note:
        lines.append(note)
    if not same:
        lines.append("workload changed (token counts differ from the baseline's): comparing "
                     "seconds per token")
    for name, run_ in (("baseline", base), ("new", new)):
        load = (run_["env"].get("loadavg_before") or [0])[0]
        if load > (run_["env"].get("hostname_cpus") or 1):
            lines.append(f"WARNING: the {name} run had load average {load:.1f} on "
                         f"{run_['env'].get('hostname_cpus')} cores: its times are not reliable")
    regressed = False
    lines.append(f"{'phase':<20}{'baseline':>12}{'new':>12}{'change':>9}  verdict")
    for p in PHASES:
        b, n = base["summary"].get(p), new["summary"].get(p)
        if b is None or n is None:
            continue
        unit = "s"
        if not same:
            b, n = b / max(1, base["summary"][PER_TOKEN[p]]), n / max(1, new["summary"][PER_TOKEN[p]])
            unit = "s/tok"
        change = n / b - 1 if b else 0.0
        small = base["summary"][p] < min_seconds
        bad = not small and change > threshold
        regressed |= bad
        verdict = "REGRESSION" if bad else ("ok (below --min-seconds)" if small else "ok")
        lines.append(f"{p:<20}{b:>11.4g}{unit[0]}{n:>11.4g}{unit[0]}{100 * change:>+8.1f}%  {verdict}")
    lines.append(f"threshold +{100 * threshold:.0f}%: " + ("REGRESSED" if regressed else "no regression"))
    return regressed, "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="time the demo step by phase")
    r.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--out", default=None)
    r.add_argument("--baseline", default=None, help="compare with this earlier `run` result")
    c = sub.add_parser("compare", help="compare two `run` results")
    c.add_argument("new")
    c.add_argument("baseline")
    for q in (r, c):
        q.add_argument("--threshold", type=float, default=0.10)
        q.add_argument("--min-seconds", type=float, default=0.5)
    a = p.parse_args(argv)
    if a.cmd == "run":
        res = run(a)
        text = json.dumps(res, indent=1, default=str)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(text)
        s = res["summary"]
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}, indent=1))
        if not a.baseline:
            return 0
        new, base = res, json.loads(Path(a.baseline).read_text())
    else:
        new, base = json.loads(Path(a.new).read_text()), json.loads(Path(a.baseline).read_text())
    regressed, report = compare(new, base, a.threshold, a.min_seconds)
    print(report)
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
