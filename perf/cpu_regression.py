"""The fixed CPU benchmarks of `make demo`, and a check of a new release against recorded
baselines. Scripts, not tests: wall-clock time is never asserted in the test suite.

    python perf/cpu_regression.py demo --out runs/bench/demo_flow.json \
        --baseline perf/baselines/cpu_demo_flow.json        # the whole flow, ~8 min
    python perf/cpu_regression.py run --out runs/bench/cpu_demo.json \
        --baseline perf/baselines/cpu_demo.json             # the training step, ~2 min
    python perf/cpu_regression.py compare new.json perf/baselines/cpu_demo_flow.json

`demo`: the whole pipeline exactly as `make demo` runs it (`flows/prefix_rft_flow.py --config
config configs/demo.yaml run`, a subprocess), with its MLflow store, Metaflow datastore and
checkpoints in a scratch directory. Recorded: the flow's wall time; each task's time from
Metaflow's task metadata, grouped by phase (start, filter_data, train_epoch_K per epoch,
plan_eval, eval (first eval task started to last finished), join_eval, end); the peak resident
memory of its largest process (the largest descendant's ru_maxrss, what `/usr/bin/time -v`
reports); the held-out accuracy of every evaluated epoch and the best one; what the end step
printed. `compare` of two `demo` results (also `demo --baseline`): a regression, exit 1, when the
flow or a phase of at least `--min-seconds` (default 10 s here) is more than `--threshold`
(default 0.15) slower, the peak memory more than `--threshold` larger, or the best held-out
accuracy more than `--max-accuracy-drop` (0.1) lower.

`run`: the training step alone. Builds the trainer from the config exactly as `prefix-rft train` does (same seed, so the
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
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_step  # noqa: E402  (perf/rl_step.py: shared measurement helpers)

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
    from prefix_rft.core.config import load_config
    from prefix_rft.train.trainer import Trainer

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


# ---------------------------------------------------------------------------- the whole flow
FLOW_PHASES = ("start", "filter_data", "train_epoch", "plan_eval", "eval_task", "join_eval", "end")


def demo(a) -> dict:
    """Run the demo flow once in a scratch directory and measure it (see the module docstring)."""
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="prefix-rft-demo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               METAFLOW_DATASTORE_SYSROOT_LOCAL=str(work),
               MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    overrides = " ".join([f"pipeline.checkpoint_root={work}/checkpoints", *(a.set or [])])
    cmd = [sys.executable, str(ROOT / "flows" / "prefix_rft_flow.py"), "--config", "config",
           str(Path(a.config).resolve()), "run", "--set", overrides]
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1) / 2:
        print(f"WARNING: load average {load_before[0]:.1f} on {os.cpu_count()} cores before the "
              "run: other work shares the CPU and the times are not comparable", flush=True)
    print("$ " + " ".join(cmd), flush=True)
    log_path = work / "flow.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if not a.quiet:
                print(line, end="", flush=True)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest descendant
    if rc != 0:
        raise SystemExit(f"the demo flow failed (exit {rc}); its log: {log_path}")
    text = log_path.read_text()
    found = re.search(r"Workflow starting \(run-id (\w+)\)", text)
    if not found:
        raise SystemExit(f"no Metaflow run id in {log_path}")
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(work)  # the client reads this datastore
    from metaflow import Run, namespace

    namespace(None)
    run = Run(f"PrefixRFTFlow/{found.group(1)}")
    phases: dict[str, float] = {}
    for name in FLOW_PHASES:
        tasks = sorted(run[name], key=lambda t: t.created_at)
        if name == "train_epoch":
            for t in tasks:
                phases[f"train_epoch_{t.data.trained_epoch}"] = (t.finished_at - t.created_at).total_seconds()
        else:
            key = "eval" if name == "eval_task" else name
            first, last = min(t.created_at for t in tasks), max(t.finished_at for t in tasks)
            phases[key] = (last - first).total_seconds()
    summary = run["join_eval"].task.data.eval_summary
    heldout = {str(r["epoch"]): r["value"] for r in summary["results"]}
    import torch

    env_info = rl_step.environment(torch.device("cpu"))
    env_info.update({"git_commit": git_commit(), "loadavg_before": load_before,
                     "loadavg_after": os.getloadavg()})
    env_info.pop("torch_threads", None)  # this process's, not the flow tasks'
    res = {"benchmark": "cpu_demo_flow",
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "flow_command": cmd,
           "config": a.config, "overrides": a.set or [], "env": env_info, "run_id": run.id,
           "wall_s": wall, "peak_rss_mb": peak_kb / 1024, "phases": phases,
           "heldout": heldout, "best_epoch": summary["best_epoch"],
           "best_heldout": summary["best_score"], "end_output": run["end"].task.stdout}
    if not a.workdir and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


def compare_demo(new: dict, base: dict, threshold: float, min_seconds: float,
                 max_accuracy_drop: float) -> tuple[bool, str]:
    """(regressed, report) for two `demo` results."""
    lines = [f"baseline: {base['env'].get('git_commit')} ({base['env'].get('date')}, "
             f"{base['env'].get('cpu')}, load {base['env'].get('loadavg_before')})",
             f"new:      {new['env'].get('git_commit')} ({new['env'].get('date')}, "
             f"{new['env'].get('cpu')}, load {new['env'].get('loadavg_before')})"]
    if new["env"].get("cpu") != base["env"].get("cpu"):
        lines.append("WARNING: another CPU model than the baseline's: times are not comparable")
    regressed = False
    rows = [("flow wall_s", base["wall_s"], new["wall_s"])]
    rows += [(f"  {k}", base["phases"][k], new["phases"][k])
             for k in base["phases"] if k in new["phases"]]
    lines.append(f"{'phase':<22}{'baseline':>10}{'new':>10}{'change':>9}  verdict")
    for name, b, n in rows:
        change = n / b - 1 if b else 0.0
        small = b < min_seconds
        bad = not small and change > threshold
        regressed |= bad
        verdict = "REGRESSION" if bad else ("ok (below --min-seconds)" if small else "ok")
        lines.append(f"{name:<22}{b:>9.1f}s{n:>9.1f}s{100 * change:>+8.1f}%  {verdict}")
    b, n = base["peak_rss_mb"], new["peak_rss_mb"]
    bad = n / b - 1 > threshold
    regressed |= bad
    lines.append(f"{'peak RSS':<22}{b:>8.0f}MB{n:>8.0f}MB{100 * (n / b - 1):>+8.1f}%  "
                 + ("REGRESSION" if bad else "ok"))
    b, n = base["best_heldout"], new["best_heldout"]
    bad = b - n > max_accuracy_drop
    regressed |= bad
    lines.append(f"{'best held-out':<22}{b:>10.3f}{n:>10.3f}{n - b:>+9.3f}  "
                 + ("REGRESSION" if bad else "ok") + f" (drop allowed {max_accuracy_drop})")
    lines.append("held-out by epoch: baseline " + json.dumps(base["heldout"]) + ", new "
                 + json.dumps(new["heldout"]))
    lines.append(f"thresholds: +{100 * threshold:.0f}% time and memory, -{max_accuracy_drop} "
                 "accuracy: " + ("REGRESSED" if regressed else "no regression"))
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
    d = sub.add_parser("demo", help="time the whole demo flow (make demo's command)")
    d.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    d.add_argument("--out", default=None)
    d.add_argument("--baseline", default=None, help="compare with this earlier `demo` result")
    d.add_argument("--workdir", default=None, help="keep the run's files here (default: a "
                   "scratch directory, removed afterwards)")
    d.add_argument("--keep", action="store_true", help="keep the scratch directory")
    d.add_argument("--quiet", action="store_true", help="do not echo the flow's output")
    c = sub.add_parser("compare", help="compare two results of the same kind (`run` or `demo`)")
    c.add_argument("new")
    c.add_argument("baseline")
    for q in (r, c, d):
        q.add_argument("--threshold", type=float, default=None,
                       help="allowed slowdown: 0.10 for `run`, 0.15 for `demo`")
        q.add_argument("--min-seconds", type=float, default=None,
                       help="phases faster than this are not judged: 0.5 s (`run`), 10 s (`demo`)")
        q.add_argument("--max-accuracy-drop", type=float, default=0.1,
                       help="`demo`: allowed drop of the best held-out accuracy")
    a = p.parse_args(argv)
    if a.cmd == "demo":
        res = demo(a)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(res, indent=1, default=str))
        print(f"flow {res['wall_s']:.0f} s, peak RSS {res['peak_rss_mb']:.0f} MB, held-out "
              f"{res['heldout']} (best epoch {res['best_epoch']}: {res['best_heldout']:.3f})")
        print("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["phases"].items()))
        if not a.baseline:
            return 0
        new, base = res, json.loads(Path(a.baseline).read_text())
    elif a.cmd == "run":
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
        if new["benchmark"] != base["benchmark"]:
            raise SystemExit(f"{a.new} is a {new['benchmark']} result, {a.baseline} a "
                             f"{base['benchmark']} one: compare results of the same kind")
    if new["benchmark"] == "cpu_demo_flow":
        regressed, report = compare_demo(
            new, base, 0.15 if a.threshold is None else a.threshold,
            10.0 if a.min_seconds is None else a.min_seconds, a.max_accuracy_drop)
    else:
        regressed, report = compare(new, base, 0.10 if a.threshold is None else a.threshold,
                                    0.5 if a.min_seconds is None else a.min_seconds)
    print(report)
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
