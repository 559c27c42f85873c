"""studies/realmath.sh's `post` call without a GPU: the deferred post-flow evals it finds in
$STUDY_DIR/pending/, and what it says when there are none (a fresh machine) or when a deferred
run's checkpoint is gone. The deferral itself (a flow, then `post` on the same machine) was
rehearsed end to end on CPU on 2026-12-07 (configs/realmath/README.md): a flow takes minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "REALMATH_NO_STAGE": "1", "STUDY_PY": sys.executable,
           "STUDY_DIR": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", "studies/realmath.sh", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_post_on_a_machine_without_deferred_runs_says_so(tmp_path):
    r = _run(["post"], tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no deferred post-flow eval in" in r.stderr
    assert "a fresh machine has none" in r.stderr


def test_post_drops_a_deferred_run_whose_checkpoint_is_gone(tmp_path):
    pending = tmp_path / "work" / "pending"
    pending.mkdir(parents=True)
    row = tmp_path / "work" / "rows" / "sft-seed2.json"
    row.parent.mkdir()
    row.write_text('{"config": "configs/realmath/sft.yaml", "seed": 2, "date": "2026-12-07"}')
    (pending / "sft-seed2").write_text(
        f"CKPT={tmp_path}/work/checkpoints/sft-seed2/step-000010\nRUN_ID=abc\nROW={row}\n")
    r = _run(["post"], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # a run that lost its post-flow eval
    assert f"=== sft-seed2: {tmp_path}/work/checkpoints/sft-seed2/step-000010 or {row} is gone: " \
           "post-flow eval not run" in r.stdout
    assert not (pending / "sft-seed2").exists()  # said once, not again on the next call
    assert "Traceback" not in r.stderr
    # the call still returns the study's rows
    assert json.loads((tmp_path / "out" / "summary.json").read_text())[0]["seed"] == 2


def test_usage_names_the_post_call(tmp_path):
    r = _run([], tmp_path)
    assert r.returncode == 2
    assert "usage:" in r.stderr and "| post |" in r.stderr
