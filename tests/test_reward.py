"""Tests for prefix_rft.rollout.reward: answer extraction, grading statuses, the process-pool grader and
its timeouts (a timeout or error must never silently become reward 0)."""

import logging
import os
import threading
import time

import pytest

from prefix_rft.rollout import reward as reward_mod
from prefix_rft.rollout.reward import (
    STATUSES,
    GradeResult,
    RewardGrader,
    _grade_chunk,
    answer_region,
    extract_final_boxed,
    gold_is_parseable,
    grade_one,
    reward_metrics,
)

# Genuinely slow for SymPy: comparing a power tower numerically takes many seconds, in Python code
# that the per-item signal timer can interrupt.
SLOW = r"The answer is \boxed{9^{9^{9^{9}}}}."


# --- extract_final_boxed ------------------------------------------------------------------------


def test_extract_nested_braces():
    assert extract_final_boxed(r"so \boxed{\frac{1}{2^{3}}} done") == r"\frac{1}{2^{3}}"


def test_extract_last_box_wins():
    assert extract_final_boxed(r"\boxed{1} then \boxed{2}, finally \boxed{3}.") == "3"


def test_extract_space_and_fbox():
    assert extract_final_boxed(r"\boxed {x+1}") == "x+1"
    assert extract_final_boxed(r"first \boxed{1}, then \fbox{42}") == "42"


def test_extract_escaped_braces_do_not_count():
    assert extract_final_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_final_boxed(r"\boxed{\left\{ x \right\}}") == r"\left\{ x \right\}"


def test_extract_absent_or_unclosed():
    assert extract_final_boxed("the answer is 5") is None
    assert extract_final_boxed(r"\boxed{1} and then \boxed{\frac{2}{3}") is None  # truncated
    assert extract_final_boxed(r"\boxed{}") == ""


# --- answer_region ------------------------------------------------------------------------------


def test_answer_region_with_think_tags():
    text = r"<think>maybe \boxed{1}</think>a</think> It is \boxed{2}."
    assert answer_region(text, think_tags=True) == r" It is \boxed{2}."
    assert answer_region(text, think_tags=False) == text


def test_answer_region_without_closing_tag_is_whole_text():
    text = r"no tags at all \boxed{2}"
    assert answer_region(text, think_tags=True) == text


def test_think_tags_grade_only_after_think():
    text = r"<think>try \boxed{1}</think> The answer is \boxed{2}."
    assert grade_one(text, "2", think_tags=True).status == "correct"
    assert grade_one(text, "1", think_tags=True).status == "wrong"
    only_think = r"<think>the answer is \boxed{1}</think> I am done."
    assert grade_one(only_think, "1", think_tags=True).status == "no_answer"


# --- grade_one ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("0.5", r"\frac{1}{2}"),
        (r"\frac{1}{2}", "0.5"),
        ("23", "023"),
        ("023", "23"),
        ("142", "142.0"),
        (r"\dfrac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    ],
)
def test_grade_one_equivalent_forms_are_correct(pred, gold):
    r = grade_one(f"The final answer is \\boxed{{{pred}}}.", gold)
    assert r == GradeResult(1.0, "correct", pred)


def test_grade_one_wrong():
    r = grade_one(r"The answer is \boxed{0.6}.", r"\frac{1}{2}")
    assert (r.reward, r.status, r.extracted) == (0.0, "wrong", "0.6")


def test_grade_one_only_the_final_box_counts():
    assert grade_one(r"\boxed{1/2} no wait, \boxed{3}", "0.5").status == "wrong"
    assert grade_one(r"the answer is 1/2", "0.5").status == "no_answer"


def test_grade_one_no_answer_and_unparseable():
    assert grade_one("I think it is 5", "5") == GradeResult(0.0, "no_answer", None)
    assert grade_one(r"\boxed{}", "5").status == "pred_unparseable"
    r = grade_one(r"\boxed{5}", "   ")
    assert (r.reward, r.status, r.extracted) == (0.0, "gold_unparseable", "5")


def test_grade_one_several_golds_any_matches():
    assert grade_one(r"\boxed{6630}", ["6630.65", "6630"]).status == "correct"
    assert grade_one(r"\boxed{6631}", ("6630.65", "6630")).status == "wrong"


def test_gold_is_parseable():
    assert gold_is_parseable(r"\frac{1}{2}")
    assert gold_is_parseable("023")
    assert not gold_is_parseable("")
    assert not gold_is_parseable("  ")


def test_grade_one_timeout_in_process():
    t = time.monotonic()
    r = grade_one(SLOW, "5", timeout_s=0.2)
    assert r.status == "timeout" and r.reward == 0.0
    assert r.extracted == "9^{9^{9^{9}}}"
    assert time.monotonic() - t < 3.0


def test_grade_one_outside_main_thread_still_grades():
    out = {}
    th = threading.Thread(target=lambda: out.update(r=grade_one(r"\boxed{2}", "2")))
    th.start()
    th.join()
    assert out["r"].status == "correct"


# --- reward_metrics -----------------------------------------------------------------------------


def test_reward_metrics_keys_and_values():
    results = [
        GradeResult(1.0, "correct", "1"),
        GradeResult(0.0, "wrong", "2"),
        GradeResult(0.0, "no_answer", None),
        GradeResult(0.0, "timeout", "3", "SignalTimeout: x"),
        GradeResult(0.0, "error", "4", "ValueError: y"),
        GradeResult(0.0, "pred_unparseable", ""),
        GradeResult(0.0, "gold_unparseable", "5"),
        GradeResult(1.0, "correct", "6"),
    ]
    assert reward_metrics(results) == {
        "reward/mean": 0.25,
        "reward/correct_frac": 0.25,
        "reward/no_answer_frac": 0.125,
        "reward/timeouts": 1.0,
        "reward/parse_failures": 1.0,
        "reward/errors": 1.0,
        "reward/gold_unparseable": 1.0,
        "reward/truncated": 0.0,
    }
    assert reward_metrics([])["reward/mean"] == 0.0


# --- RewardGrader -------------------------------------------------------------------------------

MIXED = [
    (r"The final answer is \boxed{\frac{1}{2}}.", "0.5"),
    (r"\boxed{23}", "023"),
    (r"\boxed{24}", "023"),
    ("no box here", "7"),
    (r"\boxed{}", "7"),
    (r"\boxed{5}", ""),
    (r"<think>\boxed{1}</think>\boxed{x^2+1}", "1+x^{2}"),
    (r"\boxed{(1,2)}", ["(1, 2)", "(2, 1)"]),
] * 4


def test_grader_in_process_and_pool_agree():
    completions, golds = zip(*MIXED)
    with RewardGrader(num_workers=0) as g0:
        r0 = g0.grade(completions, golds)
    with RewardGrader(num_workers=2) as g2:
        r2 = g2.grade(completions, golds)
        assert g2.counts == g0.counts
    assert r0 == r2
    assert [r.status for r in r0[:8]] == [
        "correct",
        "correct",
        "wrong",
        "no_answer",
        "pred_unparseable",
        "gold_unparseable",
        "correct",
        "correct",
    ]
    assert set(g0.counts) == set(STATUSES)
    assert g0.counts["correct"] == 16 and g0.counts["wrong"] == 4


def test_grader_pool_grades_many_short_items_without_restarts():
    """256 items over 2 workers: every one graded correct, in order, by the pool as started (no
    deadline fired, no restart). How fast is a matter for perf/, not for a test."""
    items = [(rf"The answer is \boxed{{\frac{{{i}}}{{4}}}}.", str(i / 4)) for i in range(256)]
    with RewardGrader(num_workers=2) as g:
        g.grade([r"\boxed{1}"], ["1"])  # start the workers
        results = g.grade(*zip(*items))
        assert g.pool_restarts == 0 and g.counts["correct"] == 257
    assert [r.status for r in results] == ["correct"] * 256


def test_grader_in_worker_timeout_then_next_batch_fine():
    with RewardGrader(num_workers=2, timeout_s=0.2) as g:
        r = g.grade([r"\boxed{4}", SLOW, r"\boxed{6}"], ["4", "5", "6"])
        assert [x.status for x in r] == ["correct", "timeout", "correct"]
        assert g.counts["timeout"] == 1
        r = g.grade([r"\boxed{7}", r"\boxed{8}"], ["7", "9"])
        assert [x.status for x in r] == ["correct", "wrong"]
        assert g.counts["timeout"] == 1 and g.counts["correct"] == 3


def test_grader_in_process_timeout():
    with RewardGrader(num_workers=0, timeout_s=0.2) as g:
        r = g.grade([SLOW, r"\boxed{1}"], ["5", "1"])
    assert [x.status for x in r] == ["timeout", "correct"]
    assert g.counts["timeout"] == 1


# Test-only worker functions: they stand in for the real chunk grader to simulate a worker stuck
# where no signal can reach it (a long C call) and a worker that dies.
def _chunk_that_hangs_on_marker(items, think_tags, timeout_s):
    if any("HANG" in c for c, _ in items):
        time.sleep(3600)  # no signal timer is installed here, so only the parent can stop this
    return _grade_chunk(items, think_tags, timeout_s)


def _chunk_that_dies_on_marker(items, think_tags, timeout_s):
    if any("DIE" in c for c, _ in items):
        os._exit(1)
    return _grade_chunk(items, think_tags, timeout_s)


class _HangingGrader(RewardGrader):
    grace_s = 0.5
    _chunk_fn = staticmethod(_chunk_that_hangs_on_marker)


class _DyingGrader(RewardGrader):
    _chunk_fn = staticmethod(_chunk_that_dies_on_marker)


def test_grader_parent_deadline_kills_hung_worker(caplog, monkeypatch):
    # the first timeout of each kind is logged once per process: forget earlier tests' ones
    monkeypatch.setattr(reward_mod, "_logged_kinds", set())
    completions = [rf"\boxed{{{i}}}" for i in range(20)]
    golds = [str(i) for i in range(20)]
    completions[7] = r"HANG \boxed{7}"
    with caplog.at_level(logging.WARNING, logger="prefix_rft.rollout.reward"):
        with _HangingGrader(num_workers=2, timeout_s=0.2) as g:
            r = g.grade(completions, golds)
            assert r[7].status == "timeout" and r[7].reward == 0.0
            assert r[7].detail.startswith("DeadlineKill")
            assert all(x.status == "correct" for i, x in enumerate(r) if i != 7)
            assert g.counts["timeout"] == 1 and g.pool_restarts >= 1
            # the recreated pool grades the next batch normally
            r = g.grade([r"\boxed{1}", r"\boxed{2}"], ["1", "3"])
            assert [x.status for x in r] == ["correct", "wrong"]
    assert any("timeout" in m and "DeadlineKill" in m for m in caplog.messages)


def test_grader_worker_death_is_an_error_not_a_silent_zero():
    completions = [r"\boxed{1}", r"DIE \boxed{2}", r"\boxed{3}", r"\boxed{4}"]
    with _DyingGrader(num_workers=2) as g:
        r = g.grade(completions, ["1", "2", "3", "5"])
        assert [x.status for x in r] == ["correct", "error", "correct", "wrong"]
        assert g.counts["error"] == 1
        assert g.grade([r"\boxed{9}"], ["9"])[0].status == "correct"


def test_grader_rejects_mismatched_lengths_and_use_after_close():
    g = RewardGrader(num_workers=0)
    with pytest.raises(ValueError):
        g.grade(["a", "b"], ["1"])
    g.close()
    with pytest.raises(RuntimeError):
        g.grade(["a"], ["1"])
