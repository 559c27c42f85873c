"""studies/realmath.sh's `continue` call without a GPU: what it finds in $STUDY_DIR/pending/ (a
flow stopped for time, to be resumed; a deferred post-flow eval), and what it says when there is
nothing (a fresh machine), when a deferred run's checkpoint is gone, or when too little time is
left. The whole path (a flow stopped at its eval_task, then `continue` on the same machine:
Metaflow's resume and the post-flow eval) was rehearsed end to end on CPU on 2026-12-07
(configs/realmath/README.md): a flow takes minutes. tests/test_bounded_flow.py has the stop."""

from __future__ import annotations

import json
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


def test_continue_drops_a_deferred_post_flow_eval_whose_checkpoint_is_gone(tmp_path):
    pending = tmp_path / "work" / "pending"
    pending.mkdir(parents=True)
    row = tmp_path / "work" / "rows" / "sft-seed2.json"
    row.parent.mkdir()
    row.write_text('{"config": "configs/realmath/sft.yaml", "seed": 2, "date": "2026-12-07"}')
    (pending / "sft-seed2").write_text(
        f"KIND=post\nCKPT={tmp_path}/work/checkpoints/sft-seed2/step-000010\nRUN_ID=abc\nROW={row}\n")
    r = _run(["continue"], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # a run that lost its post-flow eval
    assert f"=== sft-seed2: {tmp_path}/work/checkpoints/sft-seed2/step-000010 or {row} is gone: " \
           "post-flow eval not run" in r.stdout
    assert not (pending / "sft-seed2").exists()  # said once, not again on the next call
    assert "Traceback" not in r.stderr
    # the call still returns the study's rows
    assert json.loads((tmp_path / "out" / "summary.json").read_text())[0]["seed"] == 2


def test_a_stopped_flow_stays_pending_when_its_resume_cannot_finish(tmp_path):
    """With fewer seconds left than the flow's eval_task needs (REALMATH_EVAL_NEEDS_S), the
    resume is not started: the run stays in pending/ for the next call (exit 4), nothing lost."""
    pending = tmp_path / "work" / "pending"
    pending.mkdir(parents=True)
    text = ("KIND=resume\nARG=configs/realmath/prefix_rft.yaml:1\nORIGIN=1796638683264247\n"
            f"RUN_ID=8c98bbf6\nROW={tmp_path}/work/rows/prefix_rft-seed1.json\n")
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
