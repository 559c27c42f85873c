"""Tests for prefix_rft.benchmarks (vendored files, loader, defect repairs) and the acceptance test
of the grader on every benchmark's gold answers (results recorded in docs/GRADING.md).

Acceptance: for each benchmark, "The final answer is \\boxed{GOLD}." with GOLD = the problem's first
acceptable answer must grade correct in >= 99% of rows, and the same sentence with another
problem's gold (the next problem in the file with no answer string in common) must score 0 in
>= 99% of rows. Run with ``-s`` to see the exceptions.
"""

import hashlib
import json
import re
from pathlib import Path

import pytest

from prefix_rft.benchmarks import (
    BENCHMARKS,
    DATA_DIR,
    BenchmarkProblem,
    default_path,
    load_benchmark,
)
from prefix_rft.errors import UserError
from prefix_rft.reward import RewardGrader

EXPECTED_ROWS = {
    "aime24": 30,
    "aime25": 30,
    "amc": 83,
    "math500": 500,
    "minerva": 272,
    "olympiadbench": 675,
}

VENDORED = [
    "aime24/aime.json",
    "aime24/test.jsonl",
    "aime25/test.json",
    "amc/amc.json",
    "amc23/test.jsonl",
    "math500/test.jsonl",
    "minerva_math/minerva.json",
    "minerva_math/test.jsonl",
    "olympiadbench/test.jsonl",
    "luffy/valid.all.parquet",
    "luffy/valid.arc_c.parquet",
    "luffy/valid.gpqa.parquet",
]


# --- vendored files -----------------------------------------------------------------------------


def test_vendored_files_match_provenance_sha256():
    provenance = (DATA_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| `([^`]+)` \|.*`([0-9a-f]{64})` \|$", provenance, re.M))
    assert sorted(recorded) == sorted(VENDORED)
    for rel, sha in recorded.items():
        assert hashlib.sha256((DATA_DIR / rel).read_bytes()).hexdigest() == sha, rel


# --- loader -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_load_benchmark_rows_and_fields(name):
    problems = load_benchmark(name)
    assert len(problems) == EXPECTED_ROWS[name]
    assert len({p.id for p in problems}) == len(problems)
    for p in problems:
        assert isinstance(p, BenchmarkProblem) and p.benchmark == name
        assert p.problem.strip() and p.answers
        assert all(a == a.strip() and a for a in p.answers)


def test_aime24_leading_zeros_and_ids():
    problems = {p.id: p for p in load_benchmark("aime24")}
    assert problems["2024-I-1"].answers == ("204",)
    assert problems["2024-I-2"].answers == ("25", "025")
    assert problems["2024-II-15"].answers == ("315",)
    assert sum(len(p.answers) == 2 for p in problems.values()) == 7


def test_aime25_control_characters_restored():
    problems = load_benchmark("aime25")
    for p in problems:
        assert not any(ord(c) < 32 and c != "\n" for c in p.problem), p.id
    assert r"\frac{\log_k (5^{k^2 - 1})}" in problems[18].problem
    assert r"circumcircle of $\triangle DEF$" in problems[19].problem
    assert r"\frac" in problems[27].problem


def test_amc_float_answers_become_integers():
    problems = load_benchmark("amc")
    assert problems[0].answers == ("142",)
    assert problems[0].id == "2022_AMC_12A/1"
    assert all(re.fullmatch(r"-?\d+", p.answers[0]) for p in problems)


def test_minerva_answer_lists_stripped():
    problems = {p.id: p for p in load_benchmark("minerva")}
    assert problems["9"].answers == ("9.6",)
    # 75 rows list 2+ variants, but in 35 of them the variants differ only by the trailing "\n"
    assert sum(len(p.answers) > 1 for p in problems.values()) == 40
    assert problems["20"].answers == ("6630.65", "6630")
    assert not any(a.endswith("\n") for p in problems.values() for a in p.answers)


def test_olympiadbench_multiple_answer_kept_as_is():
    problems = {p.id: p for p in load_benchmark("olympiadbench")}
    assert problems["1664"].answers == ("$69$,$84$",)
    assert problems["1709"].answers == ("1,3,5",)


def test_load_benchmark_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'gsm8k'"):
        load_benchmark("gsm8k")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match="nope.jsonl"):
        load_benchmark("math500", missing)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "unique_id": "a"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl: row 0: missing field 'answer'"):
        load_benchmark("math500", bad)
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(UserError, match="broken.json: not valid JSON"):
        load_benchmark("amc", broken)


def test_load_benchmark_custom_path(tmp_path):
    f = tmp_path / "mini.json"
    rows = json.loads(default_path("amc").read_text(encoding="utf-8"))[:3]
    f.write_text(json.dumps(rows), encoding="utf-8")
    assert [p.answers for p in load_benchmark("amc", Path(f))] == [("142",), ("144",), ("81",)]


# --- acceptance: the grader on every benchmark's golds --------------------------------------------


def _other_problem(problems, i):
    """The next problem in the file (wrapping) with no answer string in common with problem i."""
    mine = set(problems[i].answers)
    for k in range(1, len(problems)):
        q = problems[(i + k) % len(problems)]
        if not mine & set(q.answers):
            return q
    raise AssertionError("all problems share an answer")


def _sentence(answer):
    return f"The final answer is \\boxed{{{answer}}}."


@pytest.fixture(scope="module")
def pool_grader():
    with RewardGrader(num_workers=2, timeout_s=5.0) as g:
        yield g


@pytest.mark.slow  # about 15 s on 2 idle cores, most of it Minerva and OlympiadBench
@pytest.mark.parametrize("name", BENCHMARKS)
def test_acceptance_grading_of_gold_answers(name, pool_grader):
    problems = load_benchmark(name)
    golds = [p.answers for p in problems]
    own = pool_grader.grade([_sentence(p.answers[0]) for p in problems], golds)
    others = [_other_problem(problems, i) for i in range(len(problems))]
    cross = pool_grader.grade([_sentence(q.answers[0]) for q in others], golds)

    own_rate = sum(r.status == "correct" for r in own) / len(problems)
    cross_zero_rate = sum(r.reward == 0.0 for r in cross) / len(problems)
    print(
        f"\n{name}: n={len(problems)} own-gold correct {own_rate:.2%}, "
        f"other-gold scored 0 {cross_zero_rate:.2%}"
    )
    for p, r in zip(problems, own):
        if r.status != "correct":
            print(
                f"  own   | {name} | {p.id} | gold {p.answers[0]!r} | {r.status} {r.detail or ''}"
            )
    for p, q, r in zip(problems, others, cross):
        if r.reward != 0.0 or r.status != "wrong":
            print(
                f"  other | {name} | {p.id} | gold {p.answers!r} | pred {q.answers[0]!r} "
                f"(from {q.id}) | {r.status}"
            )
    assert own_rate >= 0.99
    assert cross_zero_rate >= 0.99
    assert not any(r.status in ("timeout", "error") for r in own + cross)
