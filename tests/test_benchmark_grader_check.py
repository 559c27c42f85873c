"""Grader check on the real benchmark data: every gold answer, written as a model would write it,
grades correct against its own problem and wrong against another problem.

For every checked view (the six math sets, the LUFFY-source views whose problems or answers
differ from the default ones, and the two out-of-distribution sets), each unique problem is
graded twice with the real `RewardGrader` (Math-Verify, 2 worker processes):

* own:   ``"... so the answer is \\boxed{GOLD}"``, GOLD = the problem's first acceptable answer,
  against the problem's answers. Must be ``correct`` in >= 99% of the problems.
* other: the same sentence with the first answer of the next problem (wrapping) that shares no
  answer string with this one (strings compared without whitespace). Must be ``wrong``, and at
  most 1% may be ``correct``.

Every problem where a check gives another status is a failure; the failures must be exactly the
exceptions listed, each with its reason, in ``tests/data/grader_exceptions.yaml``, so that a new
failure and a fixed one both show up. The per-item timeout is 30 s, not the grader's default 5 s,
so that verdicts do not depend on machine speed (one comparison, LUFFY Minerva 131 graded with
132's gold equation, takes about 6 s on a 2-core machine: a timeout, reward 0, under 5 s).

The LUFFY-source views of aime24, math500 and olympiadbench hold the same problems and answers as
the default ones (asserted below) and are not graded twice.

6,690 items (3,345 unique problems, 2 checks each): about 30 s on 2 lightly used cores, 50-70 s
while other jobs share them; most of the time goes to the two Minerva views and OlympiadBench.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import yaml

from prefix_rft.eval.benchmarks import (
    BENCHMARKS,
    OOD_BENCHMARKS,
    BenchmarkProblem,
    load_benchmark,
)
from prefix_rft.rollout.reward import RewardGrader

EXCEPTIONS_FILE = Path(__file__).resolve().parent / "data" / "grader_exceptions.yaml"

LUFFY_VIEWS_CHECKED = ("aime25", "amc", "minerva")
LUFFY_VIEWS_SAME_AS_DEFAULT = ("aime24", "math500", "olympiadbench")
VIEWS = (
    [(name, "default") for name in BENCHMARKS]
    + [(name, "luffy") for name in LUFFY_VIEWS_CHECKED]
    + [(name, "default") for name in OOD_BENCHMARKS]
)
CHECKS = ("own", "other")
EXPECTED_STATUS = {"own": "correct", "other": "wrong"}


def unique_problems(problems: list[BenchmarkProblem]) -> list[BenchmarkProblem]:
    """One problem per id, with LUFFY's ``#k`` copy number dropped (first copy kept)."""
    out: dict[str, BenchmarkProblem] = {}
    for p in problems:
        base = p.id.split("#", 1)[0]
        if base not in out:
            out[base] = BenchmarkProblem(p.benchmark, base, p.problem, p.answers)
    return list(out.values())


def _answer_key(answer: str) -> str:
    return "".join(answer.split())


def other_problem(problems: list[BenchmarkProblem], i: int) -> BenchmarkProblem:
    """The next problem (wrapping) that shares no answer string with problem ``i``."""
    mine = {_answer_key(a) for a in problems[i].answers}
    for k in range(1, len(problems)):
        q = problems[(i + k) % len(problems)]
        if not mine & {_answer_key(a) for a in q.answers}:
            return q
    raise AssertionError(f"every problem shares an answer with problem {i}")


def sentence(answer: str) -> str:
    return f"... so the answer is \\boxed{{{answer}}}"


def load_exceptions() -> dict[tuple[str, str, str, str], str]:
    """(benchmark, source, id, check) -> reason, from the exceptions file."""
    entries = yaml.safe_load(EXCEPTIONS_FILE.read_text(encoding="utf-8")) or []
    out = {}
    for e in entries:
        assert set(e) == {"benchmark", "source", "id", "check", "reason"}, e
        key = (e["benchmark"], e["source"], str(e["id"]), e["check"])
        assert key not in out, f"listed twice: {key}"
        out[key] = e["reason"]
    return out


@pytest.fixture(scope="module")
def check_results():
    """{(name, source): (problems, own results, other problems, other results)}."""
    results = {}
    with RewardGrader(num_workers=2, timeout_s=30.0) as grader:
        for name, source in VIEWS:
            problems = unique_problems(load_benchmark(name, source=source))
            golds = [p.answers for p in problems]
            own = grader.grade([sentence(p.answers[0]) for p in problems], golds)
            others = [other_problem(problems, i) for i in range(len(problems))]
            other = grader.grade([sentence(q.answers[0]) for q in others], golds)
            results[(name, source)] = (problems, own, others, other)
    return results


def _failures(results) -> dict[tuple[str, str, str, str], str]:
    """(benchmark, source, id, check) -> what happened, for every item off its expected status."""
    out = {}
    for (name, source), (problems, own, others, other) in results.items():
        for p, r in zip(problems, own):
            if r.status != EXPECTED_STATUS["own"]:
                out[(name, source, p.id, "own")] = (
                    f"gold {p.answers[0]!r} -> {r.status} {r.detail or ''}".strip()
                )
        for p, q, r in zip(problems, others, other):
            if r.status != EXPECTED_STATUS["other"]:
                out[(name, source, p.id, "other")] = (
                    f"golds {p.answers!r}, graded {q.answers[0]!r} (gold of {q.id}) -> "
                    f"{r.status} {r.detail or ''}".strip()
                )
    return out


@pytest.mark.parametrize(("name", "source"), VIEWS)
def test_gold_answers_grade_correct_and_other_golds_wrong(name, source, check_results):
    problems, own, _, other = check_results[(name, source)]
    n = len(problems)
    own_correct = sum(r.status == "correct" for r in own) / n
    other_correct = sum(r.status == "correct" for r in other) / n
    print(
        f"\n{name} ({source}): n={n}, own correct {own_correct:.2%}, other correct "
        f"{other_correct:.2%}"
    )
    assert own_correct >= 0.99
    assert other_correct <= 0.01


def test_failures_are_exactly_the_listed_exceptions(check_results):
    failures = _failures(check_results)
    listed = load_exceptions()
    new = {k: v for k, v in failures.items() if k not in listed}
    fixed = {k: v for k, v in listed.items() if k not in failures}
    lines = [f"new failure {k}: {v}" for k, v in sorted(new.items())]
    lines += [f"listed but no longer failing {k}: {v}" for k, v in sorted(fixed.items())]
    assert not lines, f"grader check failures differ from {EXCEPTIONS_FILE.name}:\n" + "\n".join(
        lines
    )


def test_exceptions_file_is_well_formed():
    text = EXCEPTIONS_FILE.read_text(encoding="utf-8")
    entry_lines = [line for line in text.splitlines() if line.startswith("- ")]
    listed = load_exceptions()
    assert len(entry_lines) == len(listed)  # one line per exception
    views = set(VIEWS)
    for (name, source, _pid, check), reason in listed.items():
        assert (name, source) in views, (name, source)
        assert check in CHECKS
        assert len(reason.split()) >= 8, "write the real reason"


@pytest.mark.parametrize("name", LUFFY_VIEWS_SAME_AS_DEFAULT)
def test_unchecked_luffy_views_equal_the_default_views(name):
    def content(problems):
        return collections.Counter((p.problem, p.answers) for p in problems)

    luffy = unique_problems(load_benchmark(name, source="luffy"))
    assert content(luffy) == content(load_benchmark(name))


@pytest.mark.parametrize("name", LUFFY_VIEWS_CHECKED)
def test_checked_luffy_views_differ_from_the_default_views(name):
    luffy = unique_problems(load_benchmark(name, source="luffy"))
    default = load_benchmark(name)
    assert {(p.problem, p.answers) for p in luffy} != {(p.problem, p.answers) for p in default}
