"""A real-math run's per-step record as a committed text file (docs/results/realmath_sN_steps.json)
from what its GPU session returns: the MLflow file (`mlflow.db`) and, optionally, the flow logs
(`logs.tgz` extracted: logs/<config>-seed<N>.log, study.sh's log of the run and its resumes).

    python studies/realmath_steps.py --db out/mlflow.db --logs out/logs \\
        --card "NVIDIA H100 80GB HBM3" --call sft_then_rft:1=512.4 --call continue=443.9 \\
        --out docs/results/realmath_s2_steps.json RUN_ID

One file per MLflow run id named (none named: every FINISHED top-level run of --experiment,
default prefix-rft-realmath). The study keeps these files in git: the MLflow file kept outside
git may be lost (it was, once), and the training-curves figure is drawn from them
(`realmath_table.py --steps`).

What a file holds (the keys of docs/results/realmath_s1_steps.json):
  mlflow_run_id, metaflow_run_id (the last Metaflow run that worked on it: the tag
      `metaflow.latest_run_id` of a resumed run, else `metaflow.run_id`), resumed_from (the
      Metaflow run that last resume continued, or null)
  source, card      --source (default: a line naming the files read), --card (default: the
                    run's row of --summary, the returned summary.json, else null)
  task_s            from the flow log: seconds per Metaflow step, the longest successful task of
                    each ("Task is starting" to "Task finished successfully", as study.sh counts)
  call_s            --call NAME=SECONDS, in the order given (the device calls of the run; the
                    flow cannot know them)
  eval_accuracy_steps, steps
                    from MLflow: every metric of the run at the training steps, as a list of
                    values by step (metric names sorted). Left out: `system/*`, `data/*` (step
                    0), the flow's evaluation cells (`eval/<benchmark>/<stat>`,
                    `eval/best_macro`) and the in-training evaluation's other keys; kept:
                    `eval/accuracy` (the greedy held-out curve), whose steps are
                    eval_accuracy_steps. Every other list holds steps 1, 2, ..., len; a metric
                    logged at other steps (reward/* of sft_then_rft: its RL steps only) has its
                    steps in metric_steps (written only when some metric needs it).
  phases_s          from the flow log, within the successful train_epoch and eval_task tasks (a
                    step with several successful tasks: "eval_task/<task id>: ..."):
                    - "task start to the vLLM engine's arguments": to vLLM's "non-default args:"
                    - "vLLM start (arguments to engine ready)" (train_epoch: "colocated vLLM
                      start"): to vLLM's "init engine (profile, create kv cache, warmup model)
                      took" line
                    - train_epoch: "N steps [and the step-K held-out eval] (engine ready to step
                      M logged)": to the trainer's last "step M/T sft|rl" line (N: the step lines
                      after the engine was ready; K: the "step K/T eval" lines before M)
                    - train_epoch: "last held-out eval to the committed checkpoint" (or "step M
                      logged to ..." without an eval after it): to the last "epoch E:
                      checkpoint" line
                    - eval_task: one phase per benchmark, "BENCH (greedy, PROBLEMS)" for a
                      temperature-0 protocol (the run's evaluation child runs say), else
                      "BENCH (avg@N)": from the engine ready (the first) or the previous
                      benchmark's "epoch E BENCH: eval/BENCH/avg_at_N = ..." line to its own
                    A phase whose lines are missing (an HF engine, an SFT-only run) is left out.
                    --phase NAME=SECONDS adds or replaces one.
  vllm_compile_s    from the flow log: vLLM's "torch.compile took S s in total" (vLLM 0.25.1;
                    older: "takes", or "graph compilation") per step
Without --logs (or no log naming the run) task_s, phases_s and vllm_compile_s are {}.
`read_steps` and `histories` read a file back (realmath_table.py's curves use them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prefix_rft.errors import UserError  # noqa: E402

EXPERIMENT = "prefix-rft-realmath"  # configs/realmath/base.yaml's tracking.experiment
EVAL_CURVE = "eval/accuracy"  # the trainer's in-training greedy held-out accuracy
SKIPPED_PREFIXES = ("system/", "data/")
KEYS = ("mlflow_run_id", "metaflow_run_id", "resumed_from", "source", "card", "task_s", "call_s",
        "eval_accuracy_steps", "steps", "phases_s", "vllm_compile_s")

# ------------------------------------------------------------------------------ per-step metrics


def kept(key: str) -> bool:
    """Whether a run metric is one of the file's per-step curves (see the module docstring)."""
    if key.startswith(SKIPPED_PREFIXES):
        return False
    if key.startswith("eval/"):
        return key == EVAL_CURVE
    return True


def steps_block(histories: dict[str, list[tuple[int, float]]]) -> dict:
    """{"eval_accuracy_steps", "steps"[, "metric_steps"]} from metric -> [(step, value)]: values
    by step, metric names sorted; a step logged twice with one value counts once, with two
    values it is an error."""
    steps, metric_steps, eval_steps = {}, {}, []
    for key in sorted(histories):
        by_step: dict[int, float] = {}
        for step, value in histories[key]:
            if by_step.setdefault(int(step), value) != value:
                raise UserError(f"metric {key} has two values at step {step}: "
                                f"{by_step[int(step)]} and {value}")
        order = sorted(by_step)
        if not order:
            continue
        steps[key] = [by_step[s] for s in order]
        if key == EVAL_CURVE:
            eval_steps = order
        elif order != list(range(1, len(order) + 1)):
            metric_steps[key] = order
    out = {"eval_accuracy_steps": eval_steps, "steps": steps}
    if metric_steps:
        out["metric_steps"] = metric_steps
    return out


def histories(data: dict, where: str = "steps file") -> dict[str, list[tuple[int, float]]]:
    """A steps file's curves back as metric -> [(step, value)] (`steps_block` inverted)."""
    try:
        steps, extra = data["steps"], data.get("metric_steps") or {}
        out = {}
        for key, values in steps.items():
            at = (data["eval_accuracy_steps"] if key == EVAL_CURVE
                  else extra.get(key, range(1, len(values) + 1)))
            at = [int(s) for s in at]
            if len(at) != len(values):
                raise ValueError(f"{key} has {len(values)} values for {len(at)} steps")
            out[key] = [(s, float(v)) for s, v in zip(at, values)]
        return out
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where}: not a steps file of studies/realmath_steps.py "
                        f"({type(e).__name__}: {e})") from None


def read_steps(path) -> dict:
    """A steps file as written (a dict with at least mlflow_run_id, eval_accuracy_steps, steps);
    an unreadable one is a UserError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a readable steps file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("mlflow_run_id"), str):
        raise UserError(f"{path}: not a steps file of studies/realmath_steps.py (no mlflow_run_id)")
    histories(data, str(path))  # checks the shape
    return data


# ------------------------------------------------------------------------------------ flow log

# a Metaflow task's line: "2026-12-07 17:20:01.123 [1796664595700331/train_epoch/3 (pid 11)] ..."
TASK_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) \[(\w+)/(\w+)/(\w+) "
                       r"\(pid \d+\)\] ?(.*)$")
VLLM_ARGS = re.compile(r"non-default args:")
VLLM_READY = re.compile(r"init engine \(profile, create kv cache, warmup model\) took")
VLLM_COMPILE = re.compile(r"(?:torch\.compile|graph compilation) t(?:ook|akes) ([\d.]+) s in total")
TRAIN_STEP = re.compile(r"\bstep (\d+)/(\d+) (?:sft|rl)\b")
TRAIN_EVAL = re.compile(r"\bstep (\d+)/(\d+) eval \| held-out accuracy")
CHECKPOINT = re.compile(r"\bepoch \d+: checkpoint \S")
# steps/evaluate.py: "epoch 1 aime24: eval/aime24/avg_at_32 = 0.0094 [0.0010, 0.0208] over 30 problems"
EVAL_CELL = re.compile(r"\bepoch (\d+) (\S+): (?:eval/\S+/)?avg_at_(\d+) = \S+ \[[^\]]*\] "
                       r"over (\d+) problems")


def parse_tasks(text: str) -> list[dict]:
    """The Metaflow tasks of a flow log, in order of their first line: run, step, task, start
    and end (seconds since the epoch, the log's clock), ok (finished successfully) and lines
    [(seconds, text)]."""
    tasks: dict[tuple, dict] = {}
    for line in text.splitlines():
        m = TASK_LINE.match(line)
        if not m:
            continue
        ts = dt.datetime.fromisoformat(m.group(1)).timestamp()
        key = m.group(2, 3, 4)
        t = tasks.setdefault(key, {"run": key[0], "step": key[1], "task": key[2], "start": None,
                                   "end": None, "ok": False, "lines": []})
        msg = m.group(5)
        if msg.startswith("Task is starting"):
            if t["start"] is None:
                t["start"] = ts
        elif msg.startswith("Task finished successfully"):
            t["end"], t["ok"] = ts, True
        t["lines"].append((ts, msg))
    return list(tasks.values())


def _done(tasks: list[dict]) -> list[dict]:
    """The tasks that started and finished successfully, in order of their end."""
    return sorted((t for t in tasks if t["ok"] and t["start"] is not None), key=lambda t: t["end"])


def task_seconds(tasks: list[dict]) -> dict[str, float]:
    """Seconds per step: its longest successful task (steps in order of their first end)."""
    out: dict[str, float] = {}
    for t in _done(tasks):
        out[t["step"]] = max(out.get(t["step"], 0), round(t["end"] - t["start"], 1))
    return out


def _first(lines, pattern, after: float | None = None):
    return next(((ts, m) for ts, msg in lines if (after is None or ts >= after)
                 and (m := pattern.search(msg))), None)


def _label_cell(bench: str, n: int, problems: int, greedy: set[str]) -> str:
    return f"{bench} (greedy, {problems})" if bench in greedy else f"{bench} (avg@{n})"


def task_phases(t: dict, prefix: str, greedy: set[str]) -> tuple[dict[str, float], float | None]:
    """One successful task's phases (see the module docstring) and vLLM's compile seconds."""
    lines, out = t["lines"], {}
    compiled = [float(m.group(1)) for _, msg in lines if (m := VLLM_COMPILE.search(msg))]
    args = _first(lines, VLLM_ARGS)
    ready = _first(lines, VLLM_READY, args[0]) if args else None
    if args:
        out[f"{prefix}: task start to the vLLM engine's arguments"] = args[0] - t["start"]
    if ready:
        what = "colocated vLLM start" if t["step"] == "train_epoch" else "vLLM start"
        out[f"{prefix}: {what} (arguments to engine ready)"] = ready[0] - args[0]
    if t["step"] == "train_epoch":
        after = ready[0] if ready else None
        trained = [(ts, m) for ts, msg in lines if (after is None or ts >= after)
                   and (m := TRAIN_STEP.search(msg))]
        evals = [(ts, m) for ts, msg in lines if (m := TRAIN_EVAL.search(msg))]
        ckpt = [ts for ts, msg in lines if CHECKPOINT.search(msg)]
        if ready and trained:
            last_ts, last = trained[-1]
            before = [m.group(1) for ts, m in evals if ready[0] <= ts <= last_ts]
            with_evals = (f" and the {' and '.join(f'step-{k}' for k in before)} held-out "
                          f"eval{'s' * (len(before) > 1)}") if before else ""
            out[f"{prefix}: {len(trained)} steps{with_evals} (engine ready to step "
                f"{last.group(1)} logged)"] = last_ts - ready[0]
        if trained and ckpt:
            last_ts, last = trained[-1]
            last_eval = [ts for ts, _ in evals if ts >= last_ts]
            if last_eval and ckpt[-1] >= last_eval[-1]:
                out[f"{prefix}: last held-out eval to the committed checkpoint"] = \
                    ckpt[-1] - last_eval[-1]
            elif ckpt[-1] >= last_ts and not last_eval:
                out[f"{prefix}: step {last.group(1)} logged to the committed checkpoint"] = \
                    ckpt[-1] - last_ts
    else:
        prev = ready[0] if ready else None
        for ts, msg in lines:
            if (m := EVAL_CELL.search(msg)):
                if prev is not None:
                    label = _label_cell(m.group(2), int(m.group(3)), int(m.group(4)), greedy)
                    out[f"{prefix}: {label}"] = ts - prev
                prev = ts
    return {k: round(v, 1) for k, v in out.items()}, (round(sum(compiled), 2) if compiled else None)


def log_facts(tasks: list[dict], greedy: set[str] = frozenset()) -> dict:
    """task_s, phases_s and vllm_compile_s of a flow log's tasks (`parse_tasks`)."""
    done = _done(tasks)
    phases, compiled = {}, {}
    for step in ("train_epoch", "eval_task"):
        mine = [t for t in done if t["step"] == step]
        for t in mine:
            prefix = step if len(mine) == 1 else f"{step}/{t['task']}"
            ph, comp = task_phases(t, prefix, greedy)
            phases.update(ph)
            if comp is not None:
                compiled[prefix] = comp
    return {"task_s": task_seconds(tasks), "phases_s": phases, "vllm_compile_s": compiled}


def find_logs(paths: list[Path], run_id: str) -> dict[Path, str]:
    """The flow logs (files given, or *.log under directories given) that name the MLflow run,
    with their text (read once)."""
    found = {}
    for p in paths:
        if not p.exists():
            raise UserError(f"--logs {p}: no such file or directory")
        for f in ([p] if p.is_file() else sorted(p.rglob("*.log"))):
            if run_id in (text := f.read_text(errors="replace")):
                found[f] = text
    return found


# ------------------------------------------------------------------------------------ one run


def _pair(text: str, what: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected NAME=SECONDS") from None


def call_arg(text: str) -> tuple[str, float]:
    return _pair(text, "--call")


def phase_arg(text: str) -> tuple[str, float]:
    return _pair(text, "--phase")


def summary_card(path: Path | None, run_id: str) -> str | None:
    """The card of the run's row in a summary.json of studies/realmath.sh, if any."""
    if path is None:
        return None
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"--summary {path}: not readable ({e})") from None
    cards = [r.get("card") for r in rows if isinstance(r, dict) and r.get("mlflow_run_id") == run_id]
    return cards[-1] if cards else None


def run_steps(tracker, run_id: str, *, logs: list[Path] = (), card: str | None = None,
              calls: list[tuple[str, float]] = (), source: str | None = None,
              phases: list[tuple[str, float]] = (), summary: Path | None = None,
              db_name: str = "mlflow.db") -> dict:
    """The steps file of one MLflow run (a dict with `KEYS`, in that order)."""
    from mlflow.exceptions import MlflowException

    try:
        run = tracker.run_info(run_id)
    except MlflowException:
        raise UserError(f"MLflow run {run_id} is not in {tracker.uri}") from None
    tags = run.data.tags
    if "mlflow.parentRunId" in tags:
        raise UserError(f"MLflow run {run_id} is an evaluation child run of "
                        f"{tags['mlflow.parentRunId']}: name the parent run")
    latest = tags.get("metaflow.latest_run_id")
    origin = tags.get(f"metaflow.resume.{latest}", "").removeprefix("origin=") if latest else ""
    hist = {k: tracker.metric_history(run_id, k) for k in sorted(run.data.metrics) if kept(k)}
    block = steps_block(hist)
    found = find_logs(list(logs), run_id)
    facts = {"task_s": {}, "phases_s": {}, "vllm_compile_s": {}}
    if found:
        greedy = {e["benchmark"] for e in tracker.eval_runs(run_id)
                  if _is_zero(e["params"].get("protocol.temperature"))}
        facts = log_facts([t for text in found.values() for t in parse_tasks(text)], greedy)
    elif logs:
        print(f"note: no flow log under {', '.join(map(str, logs))} names run {run_id}: "
              "task_s, phases_s and vllm_compile_s stay empty", file=sys.stderr)
    facts["phases_s"].update(dict(phases))
    if source is None:
        read = [db_name, *(str(f) for f in found)]
        source = (f"MLflow run {run_id} ({run.data.params.get('method')} seed "
                  f"{run.data.params.get('seed')}) in {read[0]}"
                  + (f" and the flow log {', '.join(read[1:])}" if found else "")
                  + ", by studies/realmath_steps.py")
    data = {"mlflow_run_id": run_id,
            "metaflow_run_id": latest or tags.get("metaflow.run_id"),
            "resumed_from": origin or None, "source": source,
            "card": card if card is not None else summary_card(summary, run_id),
            "task_s": facts["task_s"], "call_s": dict(calls),
            "eval_accuracy_steps": block["eval_accuracy_steps"], "steps": block["steps"],
            "phases_s": facts["phases_s"], "vllm_compile_s": facts["vllm_compile_s"]}
    if "metric_steps" in block:
        data["metric_steps"] = block["metric_steps"]
    return data


def _is_zero(value) -> bool:
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def finished_runs(tracker, experiment: str) -> list[str]:
    """The FINISHED top-level runs of `experiment`, oldest first."""
    runs = tracker.pipeline_runs(experiment, max_runs=100_000)
    return [r["run_id"] for r in sorted(runs, key=lambda r: r["start_time"] or 0)
            if r["status"] == "FINISHED"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_ids", nargs="*", metavar="RUN_ID",
                    help="MLflow run ids (parent runs); none: every FINISHED run of --experiment")
    ap.add_argument("--db", required=True, type=Path,
                    help="the session's returned mlflow.db (sqlite)")
    ap.add_argument("--experiment", default=EXPERIMENT,
                    help=f"the experiment whose runs are written when no RUN_ID is named "
                    f"(default {EXPERIMENT})")
    ap.add_argument("--logs", action="append", default=[], type=Path,
                    help="a flow log, or a folder of them (logs.tgz extracted): the *.log "
                    "files naming the run give task_s, phases_s, vllm_compile_s; repeatable")
    ap.add_argument("--out", default="{method}-seed{seed}_steps.json",
                    help="the file to write; may hold {method}, {seed}, {run_id} (needed when "
                    "several runs are written); default %(default)s")
    ap.add_argument("--card", help="the GPU (default: the run's row of --summary, else null)")
    ap.add_argument("--summary", type=Path,
                    help="the session's returned summary.json (for the card)")
    ap.add_argument("--call", action="append", default=[], type=call_arg, metavar="NAME=SECONDS",
                    help="a device call of the run and its seconds, e.g. prefix_rft:1=512.4 "
                    "(call_s, in the order given); repeatable")
    ap.add_argument("--phase", action="append", default=[], type=phase_arg,
                    metavar="NAME=SECONDS", help="add or replace a phases_s entry; repeatable")
    ap.add_argument("--source", help="the file's source line (default: the files read)")
    args = ap.parse_args(argv)
    try:
        if not args.db.is_file():
            raise UserError(f"--db {args.db}: no such file")
        from prefix_rft.io.tracking import Tracker

        tracker = Tracker(f"sqlite:///{args.db.resolve()}", check=False)
        run_ids = args.run_ids or finished_runs(tracker, args.experiment)
        if not run_ids:
            raise UserError(f"no FINISHED run in experiment {args.experiment} of {args.db}")
        files = {}
        for run_id in run_ids:
            data = run_steps(tracker, run_id, logs=args.logs, card=args.card, calls=args.call,
                             source=args.source, phases=args.phase, summary=args.summary,
                             db_name=str(args.db))
            params = tracker.run_info(run_id).data.params
            try:
                out = Path(args.out.format(run_id=run_id, method=params.get("method"),
                                           seed=params.get("seed")))
            except (KeyError, IndexError, ValueError) as e:
                raise UserError(f"--out {args.out}: only {{method}}, {{seed}} and {{run_id}} "
                                f"are filled in ({type(e).__name__}: {e})") from None
            if out in files:
                raise UserError(f"--out {args.out}: runs {files[out]['mlflow_run_id']} and "
                                f"{run_id} would both be written to {out} (use {{run_id}})")
            files[out] = data
        for out, data in files.items():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=1) + "\n")
            n = max((len(v) for v in data["steps"].values()), default=0)
            print(f"{out}: run {data['mlflow_run_id']}, {len(data['steps'])} metrics over {n} "
                  f"steps, {len(data['task_s'])} tasks, {len(data['phases_s'])} phases")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
