"""perf/suite_durations.py on hand-made pytest logs: the wall time and pass count of pytest's
last line, per-file sums of setup + call + teardown, the slowest phases, two logs side by side,
and one clear error for a log without durations."""

from __future__ import annotations

import pytest

from tests.scripts import load_script

BEFORE = """\
....                                                                     [100%]
============================= slowest durations ==============================
12.50s call     tests/test_a.py::test_one
3.25s setup    tests/test_a.py::test_one
2.00s call     tests/test_b.py::test_two[x]
0.75s teardown tests/test_a.py::test_one

(7 durations < 0.005s hidden.  Use -vv to show these durations.)
4 passed, 1 skipped in 20.00s
"""
AFTER = BEFORE.replace("12.50s call     tests/test_a.py::test_one",
                       "4.50s call     tests/test_a.py::test_one").replace("in 20.00s", "in 11.50s")


@pytest.fixture(scope="module")
def mod():
    return load_script("perf/suite_durations.py")


def test_one_log(mod, tmp_path, capsys):
    log = tmp_path / "before.log"
    log.write_text(BEFORE)
    r = mod.read_log(str(log))
    assert r["wall_s"] == 20.0 and r["passed"] == 4
    assert mod.per_file(r["phases"]) == {"tests/test_a.py": 16.5, "tests/test_b.py": 2.0}
    assert mod.main([str(log), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["wall", "s", "20.0"]
    assert out[2].split()[:3] == ["listed", "s", "18.5"]  # 12.5 + 3.25 + 2.0 + 0.75
    files = out[out.index("per file (s):") + 1:out.index("slowest phases (s):") - 1]
    assert [x.split() for x in files] == [["16.5", "tests/test_a.py"], ["2.0", "tests/test_b.py"]]
    slow = out[out.index("slowest phases (s):") + 1:]
    assert [x.split() for x in slow] == [["12.5", "call", "tests/test_a.py::test_one"],
                                         ["3.2", "setup", "tests/test_a.py::test_one"]]


def test_two_logs_side_by_side(mod, tmp_path, capsys):
    (tmp_path / "a.log").write_text(BEFORE)
    (tmp_path / "b.log").write_text(AFTER)
    assert mod.main([str(tmp_path / "a.log"), str(tmp_path / "b.log"), "--top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["wall", "s", "20.0", "11.5"]
    assert out[out.index("per file (s):") + 1].split() == ["16.5", "8.5", "tests/test_a.py"]


def test_a_log_without_durations_is_one_error(mod, tmp_path):
    log = tmp_path / "plain.log"
    log.write_text("4 passed in 3.00s\n")
    with pytest.raises(SystemExit, match=r"plain.log: no durations found \(run pytest with "
                       r"--durations=0\)"):
        mod.read_log(str(log))
