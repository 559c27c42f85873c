"""perf/cpu_regression.py's verdict on two whole-demo results (`compare`): a slower flow or
phase, a larger peak memory or a lower best held-out accuracy is a regression (exit 1) past its
threshold, and not below it. The results are hand-made; the script's timing itself is measured,
never asserted (docs/PERFORMANCE.md)."""

from __future__ import annotations

import copy
import json

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("perf/cpu_regression.py")


BASE = {"benchmark": "cpu_demo_flow", "env": {"git_commit": "a", "cpu": "AMD EPYC"},
        "wall_s": 480.0, "peak_rss_mb": 4000.0,
        "phases": {"start": 4.0, "train_epoch_1": 200.0, "train_epoch_2": 180.0, "eval": 40.0},
        "heldout": {"0": 0.0, "1": 0.5, "2": 0.625}, "best_epoch": 2, "best_heldout": 0.625}


def _verdict(bench, tmp_path, change) -> int:
    new = copy.deepcopy(BASE)
    change(new)
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    return bench.main(["compare", str(tmp_path / "new.json"), str(tmp_path / "base.json")])


@pytest.mark.parametrize("change,rc", [
    (lambda r: None, 0),
    (lambda r: r.update(wall_s=480.0 * 1.14), 0),  # within +15%
    (lambda r: r.update(wall_s=480.0 * 1.16), 1),
    (lambda r: r["phases"].update(train_epoch_2=180.0 * 1.2), 1),  # one phase
    (lambda r: r["phases"].update(start=4.0 * 3), 0),  # under --min-seconds (10 s): not judged
    (lambda r: r.update(peak_rss_mb=4000.0 * 1.2), 1),
    (lambda r: r.update(best_heldout=0.53125), 0),  # -0.094: within the allowed 0.1
    (lambda r: r.update(best_heldout=0.5), 1),  # -0.125
    (lambda r: r.update(best_heldout=0.9, wall_s=300.0), 0),  # better is never a regression
])
def test_demo_compare_flags_slowdown_memory_and_accuracy(bench, tmp_path, capsys, change, rc):
    assert _verdict(bench, tmp_path, change) == rc
    out = capsys.readouterr().out
    assert ("REGRESSED" in out) == bool(rc)
    assert ("no regression" in out) == (not rc)


def test_compare_refuses_results_of_different_kinds(bench, tmp_path):
    (tmp_path / "step.json").write_text(json.dumps({"benchmark": "cpu_regression"}))
    (tmp_path / "flow.json").write_text(json.dumps(BASE))
    with pytest.raises(SystemExit, match="same kind"):
        bench.main(["compare", str(tmp_path / "step.json"), str(tmp_path / "flow.json")])
