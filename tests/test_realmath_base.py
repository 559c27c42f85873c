"""studies/realmath_base.sh without a GPU: its problems files, its usage error and its deadline
(REALMATH_DEADLINE_S), which stops a part before the device call's limit and skips a part with
under 30 s left, so what finished is packed before the call ends. The eval parts themselves are
rehearsed by hand on CPU (configs/realmath/README.md); a part stopped mid-way was rehearsed so on
2026-12-07 (its finished benchmark kept, `complete: false`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One work directory for the module: the first call writes the problems files (~20 s),
    the later ones find them there, as a second call on the same machine does."""
    return tmp_path_factory.mktemp("realmath_base_work")


def _run(call: str, tmp_path: Path, work: Path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "REALMATH_NO_STAGE": "1", "STUDY_PY": sys.executable,
            "STUDY_DIR": str(work), "OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", "studies/realmath_base.sh", call], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=600)


def test_every_part_is_skipped_when_the_deadline_leaves_too_little(tmp_path, work):
    r = _run("b3", tmp_path, work, REALMATH_DEADLINE_S="5")
    assert r.returncode == 1, r.stderr  # a skipped part is not a finished call
    lines = [x for x in r.stdout.splitlines() if x.startswith("===")]
    assert len(lines) == 3
    assert lines[0].startswith("=== b3_default: skipped,")
    assert lines[1].startswith("=== b3_paper1024: skipped,")
    assert lines[2].startswith("=== b3_greedy1024: skipped,")
    assert all(x.endswith("left before REALMATH_DEADLINE_S=5") for x in lines)
    # nothing evaluated, nothing packed; the log and the problems files are there
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b3.log"]
    files = sorted(p.name for p in (work / "files").iterdir())
    assert files == ["math500_a.jsonl", "math500_b.jsonl", "olympiadbench_a.jsonl",
                     "olympiadbench_b.jsonl", "olympiadbench_c.jsonl", "olympiadbench_d.jsonl",
                     "realmath_heldout.jsonl", "realmath_train.jsonl"]
    # MATH-500's two halves and OlympiadBench's four quarters, read as the eval reads them,
    # hold every problem once with its text and gold, in the loader's order, the first parts
    # the larger ones
    from prefix_rft.eval.benchmarks import load_benchmark

    for name, sizes in (("math500", [250, 250]), ("olympiadbench", [169, 169, 169, 168])):
        parts = [load_benchmark(work / "files" / f"{name}_{x}.jsonl") for x in "abcd"[:len(sizes)]]
        assert [len(q) for q in parts] == sizes
        key = [(q.id, q.problem, q.answers) for part in parts for q in part]
        assert key == [(q.id, q.problem, q.answers) for q in load_benchmark(name)]


def test_an_unknown_call_is_a_usage_error_before_any_work(tmp_path):
    r = _run("b11", tmp_path, tmp_path / "work")
    assert r.returncode == 2
    assert "usage: " in r.stderr and "b1|b2|b3|b4|b5|b6|b7|b8|b9|b10" in r.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_b6_is_the_rest_of_b3s_paper_part(tmp_path, work):
    """b3's paper @1,024 part did not fit its call (2026-12-07): AIME24 and AIME25 were run by
    hand, b6 scores AMC and MATH-500 with the same protocol and length."""
    r = _run("b6", tmp_path, work, REALMATH_DEADLINE_S="5")
    lines = [x for x in r.stdout.splitlines() if x.startswith("===")]
    assert len(lines) == 1 and lines[0].startswith("=== b6_paper1024: skipped,")
    assert r.returncode == 1 and (tmp_path / "out" / "b6.log").is_file()
    text = (ROOT / "studies/realmath_base.sh").read_text()
    assert "    b6) part b6_paper1024 paper 1024 amc,math500 ;;" in text


def test_b7_is_the_rest_of_b1(tmp_path, work):
    """b1 ran in a session's last 250 s (2026-12-07): the default protocol's AIME24 and AIME25
    finished (docs/results/realmath_base/b1_default/summary.json, `pending: [amc]`); b7 is the
    rest, AMC by default and b1's paper part, each its own part so that a finished one is kept."""
    import json

    done = json.loads((ROOT / "docs/results/realmath_base/b1_default/summary.json").read_text())
    assert done["complete"] is False and done["pending"] == ["amc"]
    assert sorted(done["benchmarks"]) == ["aime24", "aime25"]
    r = _run("b7", tmp_path, work, REALMATH_DEADLINE_S="5")
    lines = [x for x in r.stdout.splitlines() if x.startswith("===")]
    assert [x.split(":")[0] for x in lines] == ["=== b7_default", "=== b7_paper"]
    assert all(": skipped," in x for x in lines)
    assert r.returncode == 1 and (tmp_path / "out" / "b7.log").is_file()
    text = (ROOT / "studies/realmath_base.sh").read_text()
    b1 = text.split("    b1) ")[1].split(";;")[0]
    b7 = text.split("    b7) ")[1].split(";;")[0]
    assert "part b7_default default 4096 amc\n" in b7
    # the paper part is b1's, benchmark for benchmark
    assert b1.split("part b1_paper")[1] == b7.split("part b7_paper")[1]
