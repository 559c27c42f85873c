"""studies/study.sh's preflight: it prepares the built-in model each config names (a STUDY_SET
`model.name_or_path` wins), not always SmolLM2. Before, the real-math probe on the GPU machine
(whose stage carries only the Qwen parts) stopped there. No run starts in these tests: the
deadline leaves no room for one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN = "qwen2.5-coder-1.5b-instruct"


def _preflight(tmp_path: Path, smollm2_dir: Path, *configs: str, study_set: str = ""):
    cache = tmp_path / "work" / "cache"
    cache.mkdir(parents=True)
    (cache / "smollm2-135m-instruct").symlink_to(smollm2_dir)
    # a completed conversion as the GPU stage leaves one (only its marker matters here)
    (cache / QWEN).mkdir()
    (cache / QWEN / ".prefix_rft_conversion.json").write_text(json.dumps({"name": QWEN}))
    env = {**os.environ, "STUDY_NO_INSTALL": "1", "STUDY_PY": sys.executable,
           "STUDY_DIR": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           "PYTHONPATH": str(ROOT), "STUDY_DEADLINE_S": "1", "STUDY_EST_S": "1000",
           "STUDY_SET": study_set}
    return subprocess.run(["bash", "studies/study.sh", *configs], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_preflight_prepares_the_model_the_config_names(tmp_path, smollm2_dir):
    r = _preflight(tmp_path, smollm2_dir, "configs/realmath/prefix_rft.yaml:1")
    assert r.returncode == 4, r.stdout + r.stderr  # 4: a run not started (the deadline)
    assert f"\n{QWEN}: {tmp_path}/work/cache/{QWEN} (" in r.stdout
    assert "smollm2" not in r.stdout.lower()
    assert "not started: configs/realmath/prefix_rft.yaml:1 (time)" in r.stdout


def test_a_study_set_model_wins_over_the_configs(tmp_path, smollm2_dir):
    r = _preflight(tmp_path, smollm2_dir, "configs/realmath/prefix_rft.yaml:1", "rft",
                   study_set="rl.steps=1 model.name_or_path=smollm2-135m-instruct")
    assert r.returncode == 4, r.stdout + r.stderr  # 4: a run not started (the deadline)
    assert f"\nsmollm2-135m-instruct: {tmp_path}/work/cache/smollm2-135m-instruct (" in r.stdout
    assert QWEN not in r.stdout
