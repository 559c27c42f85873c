"""studies/realmath.sh's `continue` call without a GPU: what it finds in $STUDY_DIR/pending/ (a
flow stopped for time, to be resumed), and what it says when there is nothing (a fresh machine)
or too little time left. The whole path (a flow stopped at its eval task, then `continue` on the
same machine: Metaflow's resume) was rehearsed end to end on CPU on 2026-12-07
(configs/realmath/README.md): a flow takes minutes. tests/test_bounded_flow.py has the stop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REALMATH_NO_STAGE": "1", "STUDY_PY": sys.executable,
           "STUDY_DIR": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           "PYTHONPATH": str(ROOT), **extra}
    return subprocess.run(["bash", "studies/realmath.sh", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_continue_on_a_machine_with_nothing_pending_says_so(tmp_path):
    r = _run(["continue"], tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"nothing pending in {tmp_path}/work/pending: a fresh machine has nothing" in r.stderr


def test_a_stopped_flow_stays_pending_when_its_resume_cannot_finish(tmp_path):
    """With fewer seconds left than the flow's eval_task needs (REALMATH_EVAL_NEEDS_S), the
    resume is not started: the run stays in pending/ for the next call (exit 4), nothing lost."""
    pending = tmp_path / "work" / "pending"
    pending.mkdir(parents=True)
    text = "ARG=configs/realmath/prefix_rft.yaml:1\nORIGIN=1796638683264247\n"
    (pending / "prefix_rft-seed1").write_text(text)
    # 570 s from the start, minus 30 for packing: 540 left, and the resume needs 600
    r = _run(["continue"], tmp_path, REALMATH_EVAL_NEEDS_S="600")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "=== prefix_rft-seed1: resume still pending: 5" in r.stdout  # 540 or 539 s left
    assert (pending / "prefix_rft-seed1").read_text() == text
    assert "Traceback" not in r.stderr


def test_usage_names_the_continue_call(tmp_path):
    r = _run([], tmp_path)
    assert r.returncode == 2
    assert "usage:" in r.stderr and "| continue |" in r.stderr
