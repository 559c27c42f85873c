"""Where the test suite's time goes, from pytest's own timings: the per-file sums and the slowest
tests of a `pytest --durations=0` log, or two logs side by side (before -> after a change).

    .venv/bin/python -m pytest -q --durations=0 > runs/bench/suite.log 2>&1   # in a fresh clone
    python perf/suite_durations.py runs/bench/suite.log
    python perf/suite_durations.py before.log after.log --top 30

Prints the suite's wall time (pytest's last line), the sum of the listed durations (setup, call
and teardown of every test), the files by their sum and the slowest single phases. Compare logs
of the same machine class only, run on an otherwise idle machine: on 2 cores a second CPU-bound
job makes torch-heavy tests several times slower, not twice.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

LINE = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)")
SUMMARY = re.compile(r"(\d+) passed.* in ([\d.]+)s")


def read_log(path: str) -> dict:
    """{"phases": {(phase, test id): seconds}, "wall_s": float | None, "passed": int | None}."""
    phases: dict[tuple[str, str], float] = {}
    wall = passed = None
    for line in Path(path).read_text(errors="replace").splitlines():
        if m := LINE.match(line):
            phases[(m.group(2), m.group(3))] = float(m.group(1))
        elif m := SUMMARY.search(line):
            passed, wall = int(m.group(1)), float(m.group(2))
    if not phases:
        raise SystemExit(f"{path}: no durations found (run pytest with --durations=0)")
    return {"phases": phases, "wall_s": wall, "passed": passed}


def per_file(phases: dict) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for (_, test), s in phases.items():
        out[test.split("::")[0]] += s
    return out


def render(logs: list[dict], names: list[str], top: int) -> str:
    files = [per_file(log["phases"]) for log in logs]
    head = " | ".join(names)
    lines = [f"{'wall s':>10}  " + "  ".join(f"{log['wall_s'] or 0:9.1f}" for log in logs)
             + f"   ({head})",
             f"{'passed':>10}  " + "  ".join(f"{log['passed'] or 0:9d}" for log in logs),
             f"{'listed s':>10}  " + "  ".join(f"{sum(log['phases'].values()):9.1f}" for log in logs),
             "", "per file (s):"]
    for f, _ in files[-1].most_common(top):
        lines.append("  ".join(f"{c[f]:9.1f}" for c in files) + f"  {f}")
    lines += ["", "slowest phases (s):"]
    last = logs[-1]["phases"]
    for key, _ in sorted(last.items(), key=lambda kv: -kv[1])[:top]:
        lines.append("  ".join(f"{log['phases'].get(key, 0.0):9.1f}" for log in logs)
                     + f"  {key[0]:8} {key[1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", help="pytest logs written with --durations=0 (1 or 2)")
    ap.add_argument("--top", type=int, default=20, help="files and phases to list (20)")
    args = ap.parse_args(argv)
    if len(args.logs) > 2:
        ap.error("give one log, or two to compare")
    print(render([read_log(p) for p in args.logs], [Path(p).name for p in args.logs], args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
