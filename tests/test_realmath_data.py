"""prefix_rft/data/realmath.py: the real-math set is built from the vendored files with the
counts below, in the trainer's schema, every demonstration graded correct by the reward's grader,
and no training or held-out problem equals an evaluation problem (across every vendored
benchmark file) or a problem of the other part."""

from __future__ import annotations

import json

import pytest

from prefix_rft.data import realmath as R
from prefix_rft.data.problem import Problem
from prefix_rft.data.readers import load_problems
from prefix_rft.data.sources import load_spec
from prefix_rft.errors import UserError
from prefix_rft.rollout.reward import extract_final_boxed, grade_one

# the counts of the build (RealMathStats); a change of the rules or of Math-Verify shows here
EXPECTED = {"read": {"olympiadbench": 675, "minerva": 272}, "gold_unparseable": 0,
            "demo_wrong": 0, "too_long": 127, "duplicate": 0, "eval_overlap": 0,
            "answer_line_appended": 609, "kept": {"olympiadbench": 548, "minerva": 272},
            "train": 697, "heldout": 123}


@pytest.fixture(scope="module")
def built():
    return R.load_realmath("train"), R.load_realmath("heldout"), R.realmath_stats()


def test_counts(built):
    train, heldout, stats = built
    assert stats == EXPECTED
    assert (len(train), len(heldout)) == (697, 123)
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / "realmath" / "make_configs.py"
    spec = importlib.util.spec_from_file_location("realmath_make_configs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.NUM_TRAIN == len(train)  # the configs' SFT step counts rest on it


def test_schema_and_demonstrations(built):
    """The trainer's record: one demonstration each, ending in a box that grades correct against
    the one gold the reward uses; short enough for L_max; both sources in both parts."""
    train, heldout, _ = built
    for p in train + heldout:
        assert isinstance(p, Problem) and p.prompt and p.answer and len(p.demonstrations) == 1
        demo = p.demonstrations[0]
        assert extract_final_boxed(demo) is not None
        assert len(demo) <= R.MAX_DEMO_CHARS
        assert grade_one(demo, p.answer).reward == 1.0, p.id
        assert p.source in R.SOURCES and p.id.startswith(p.source + "-")
    assert {p.source for p in heldout} == {p.source for p in train} == set(R.SOURCES)
    assert len({p.id for p in train + heldout}) == len(train) + len(heldout)


def test_appended_answer_line_has_the_documented_form(built):
    train, _, _ = built
    ob = next(p for p in train if p.source == "olympiadbench")
    tail = R.ANSWER_LINE.format(answer=ob.answer.replace("$", "").strip())
    assert ob.demonstrations[0].endswith(tail)


def test_split_is_fixed_and_about_fifteen_percent(built):
    train, heldout, _ = built
    again_train, again_held = R.split_heldout(list(reversed(train + heldout)))
    assert [p.id for p in again_held] == [p.id for p in heldout]
    assert [p.id for p in again_train] == [p.id for p in train]
    assert abs(len(heldout) / (len(train) + len(heldout)) - R.HELDOUT_FRACTION) < 0.01


def test_disjoint_from_every_evaluation_file_and_from_each_other(built):
    train, heldout, _ = built
    texts = R.evaluation_texts()
    # every vendored benchmark folder is looked at: the evaluation files, and the training
    # source's own folders (minerva_math, olympiadbench) are the source itself
    folders = {f.split("/")[0] for f in texts}
    assert folders == {"aime24", "aime25", "amc", "amc23", "math500", "luffy"}
    assert set(texts) >= {"aime24/aime.json", "aime24/test.jsonl", "aime25/test.json",
                          "amc/amc.json", "amc23/test.jsonl", "math500/test.jsonl",
                          "luffy/valid.all.parquet", "luffy/valid.arc_c.parquet",
                          "luffy/valid.gpqa.parquet"}
    # LUFFY's file without its Minerva and OlympiadBench rows: aime x32, aime25 x32, amc x32, math
    assert len(texts["luffy/valid.all.parquet"]) == 960 + 960 + 2656 + 500
    evaluated = {R.realmath_key(t) for ts in texts.values() for t in ts}
    train_keys = {R.realmath_key(p.prompt) for p in train}
    held_keys = {R.realmath_key(p.prompt) for p in heldout}
    assert not train_keys & evaluated
    assert not held_keys & evaluated
    assert not train_keys & held_keys
    assert len(train_keys) == len(train) and len(held_keys) == len(heldout)


def test_the_key_ignores_spacing_case_and_delimiters():
    a = r"Find $\dfrac{1}{2} + x$ when  $\left(x = 3\right)$."
    b = r"find \frac{1}{2}+x\, when (x=3)."
    assert R.realmath_key(a) == R.realmath_key(b)
    assert R.realmath_key("Let  $a\\;=\\,1$") == R.realmath_key("let a=1")
    assert R.realmath_key("x = 1") != R.realmath_key("x = 2")


def test_an_evaluation_problem_in_the_source_is_dropped(monkeypatch):
    """The overlap rule works: a MATH-500 problem slipped into the candidates is dropped."""
    from prefix_rft.eval.benchmarks import load_benchmark

    m = load_benchmark("math500")[0]
    real = R.candidates

    def with_intruder(stats, grade=R._grade):
        intruder = Problem("minerva-x", "  " + m.problem.upper() + " ", m.answers[0],
                           (rf"so \boxed{{{m.answers[0]}}}",), "minerva")
        return [intruder] + real(stats, grade)

    monkeypatch.setattr(R, "candidates", with_intruder)
    train, heldout, stats = R.build_realmath()
    assert stats.eval_overlap == 1
    assert "minerva-x" not in {p.id for p in train + heldout}


def test_specs_and_cli(tmp_path, built):
    train, heldout, _ = built
    assert load_spec("realmath:train", split="train") == train
    assert load_spec("realmath:heldout", split="test", require_demos=False) == heldout
    with pytest.raises(UserError, match="realmath:train or realmath:heldout"):
        R.load_realmath("realmath:test")
    assert R.main(["build", "--out", str(tmp_path)]) == 0
    assert load_problems(tmp_path / "train.jsonl") == train
    assert load_problems(tmp_path / "heldout.jsonl") == heldout
    assert json.loads((tmp_path / "stats.json").read_text()) == EXPECTED
