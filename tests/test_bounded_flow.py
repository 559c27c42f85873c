"""studies/bounded.sh's bounded_flow: a flow run in a process group of its own and stopped for
time (studies/study.sh's STUDY_FLOW_UNTIL and STUDY_STEP_NEEDS, which studies/realmath.sh uses so
that a device call's 600 s limit never takes a flow's results). A small script stands in for
the flow: it prints Metaflow's "Task is starting" lines, and a child process of it stands in for
a task's vLLM engine, which must go down with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_FLOW = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
print("2026-12-07 10:18:39.462 [17/train_epoch/3 (pid 11)] Task is starting.", flush=True)
time.sleep(float(sys.argv[2]))
print("2026-12-07 10:25:47.339 [17/eval_task/5 (pid 12)] Task is starting.", flush=True)
time.sleep(float(sys.argv[3]))
print("flow done", flush=True)
sys.exit(int(sys.argv[4]))
"""


def _bounded(tmp_path: Path, train_s: float, eval_s: float, status: int = 0, *,
             until_in: int | None = None, needs: str = "") -> tuple[int, str, int]:
    """bounded_flow on the fake flow; -> (exit status, the log, the child's pid)."""
    fake = tmp_path / "fake_flow.py"
    fake.write_text(FAKE_FLOW)
    log, pidfile = tmp_path / "flow.log", tmp_path / "child.pid"
    env = {**os.environ, "PY": sys.executable, "STUDY_STEP_NEEDS": needs}
    env.pop("STUDY_FLOW_UNTIL", None)
    if until_in is not None:
        env["STUDY_FLOW_UNTIL"] = str(int(time.time()) + until_in)
    script = (f'source studies/bounded.sh; bounded_flow "{log}" "{fake}" "{pidfile}" '
              f'{train_s} {eval_s} {status}')
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    return r.returncode, log.read_text(), int(pidfile.read_text())


def _alive(pid: int) -> bool:
    for _ in range(20):  # the group got SIGTERM: give the child a moment to go
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def test_a_step_that_starts_with_too_little_time_stops_the_whole_group(tmp_path):
    rc, log, child = _bounded(tmp_path, 1, 60, until_in=100, needs="eval_task=200 end=5")
    assert rc == 124
    lines = log.splitlines()
    assert lines[1].endswith("[17/eval_task/5 (pid 12)] Task is starting.")
    assert lines[2].startswith("=== flow stopped at the start of eval_task, which needs 200 s, "
                               "with ")
    assert lines[2].endswith(" s left; its finished tasks are kept for Metaflow's resume")
    assert "flow done" not in log
    assert not _alive(child)  # the task's engine process went with the flow


def test_the_deadline_stops_a_task_that_started_with_enough_time(tmp_path):
    # eval_task starts with ~5 s left and needs 2: it runs; the deadline then stops it
    rc, log, child = _bounded(tmp_path, 1, 60, until_in=6, needs="eval_task=2")
    assert rc == 124
    assert "=== flow stopped at the deadline (STUDY_FLOW_UNTIL);" in log
    assert "the start of eval_task" not in log
    assert not _alive(child)


def test_without_bounds_the_flow_runs_out_and_its_status_comes_back(tmp_path):
    (tmp_path / "flow.log").write_text("the first call's lines\n")
    rc, log, _ = _bounded(tmp_path, 0, 0, 3)
    assert rc == 3
    assert log.splitlines()[0] == "the first call's lines"  # appended, as a resume's log is
    assert log.splitlines()[-1] == "flow done"
    assert "stopped" not in log


def test_only_this_flows_lines_count(tmp_path):
    """A resume appends to the stopped run's log, which already has an eval_task start: only the
    resumed flow's own eval_task start may stop it."""
    (tmp_path / "flow.log").write_text(
        "2026-12-07 10:25:47.339 [16/eval_task/5 (pid 9)] Task is starting.\n"
        "=== flow stopped at the start of eval_task, which needs 180 s, with 90 s left; ...\n")
    rc, log, _ = _bounded(tmp_path, 2, 60, until_in=100, needs="eval_task=200")
    assert rc == 124
    lines = log.splitlines()
    new_start = lines.index("2026-12-07 10:25:47.339 [17/eval_task/5 (pid 12)] Task is starting.")
    assert lines[2].endswith("[17/train_epoch/3 (pid 11)] Task is starting.")
    assert new_start == 3 and lines[4].startswith("=== flow stopped at the start of eval_task")
