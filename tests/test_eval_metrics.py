"""Benchmark metrics (prefix_rft.eval.metrics): avg@n, pass@k, maj@n, bootstrap CIs, paired tests.

Expected numbers are worked out by hand in the comments, or (for the random parts) by a small
independent pure-Python loop over the same random draws; nothing calls the function under test
to obtain an expectation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prefix_rft.eval.metrics import (
    PairedComparison,
    SeedDifference,
    avg_at_k,
    bootstrap_ci,
    macro_average,
    maj_at_k,
    majority_vote,
    paired_comparison,
    pass_at_k,
    pass_at_k_table,
    per_problem_accuracy,
    seed_summary,
    summarize,
    welch_difference,
)

T, F = True, False


def _quantile_linear(values: list[float], q: float) -> float:
    """numpy's default ('linear') quantile, written out: interpolate at h = (N - 1) * q."""
    s = sorted(values)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def _ref_bootstrap(x: list[float], n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    """The documented scheme, re-done with Python loops over the same index draws."""
    n = len(x)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)).tolist()
    means = [sum(x[j] for j in row) / n for row in idx]
    return _quantile_linear(means, alpha / 2), _quantile_linear(means, 1 - alpha / 2)


def _ref_sign_flip(d: list[float], n_boot: int, seed: int) -> float:
    n = len(d)
    signs = np.random.default_rng(seed).integers(0, 2, size=(n_boot, n)).tolist()
    obs = abs(sum(d) / n)
    hits = 0
    for row in signs:
        stat = abs(sum((2 * s - 1) * v for s, v in zip(row, d)) / n)
        if stat >= obs - 1e-12:
            hits += 1
    return (1 + hits) / (1 + n_boot)


# ---------------------------------------------------------------- avg@n / per-problem accuracy

def test_avg_at_k_hand_case():
    # rows: 2/4 = 0.5, 4/4 = 1, 0/4 = 0  ->  (0.5 + 1 + 0) / 3 = 0.5
    assert avg_at_k([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]) == pytest.approx(0.5, abs=1e-15)
    assert avg_at_k([[T, F, F, T], [T, T, T, T], [F, F, F, F]]) == pytest.approx(0.5, abs=1e-15)


def test_avg_at_k_ragged_rows_weigh_problems_equally():
    # 1/2 = 0.5, 1/4 = 0.25, 1/1 = 1  ->  1.75 / 3 = 0.583333...
    # (pooling samples would give 3/7 = 0.4286 instead)
    assert avg_at_k([[T, F], [T, F, F, F], [T]]) == pytest.approx(1.75 / 3, abs=1e-15)
    assert per_problem_accuracy([[T, F], [T, F, F, F], [T]]) == [0.5, 0.25, 1.0]


def test_avg_at_k_errors():
    with pytest.raises(ValueError, match="empty"):
        avg_at_k([])
    with pytest.raises(ValueError, match="row 1"):
        avg_at_k([[T], [], [F]])
    with pytest.raises(ValueError, match="row 0"):
        per_problem_accuracy([[]])


# ---------------------------------------------------------------- pass@k

def test_pass_at_k_matches_closed_form_exhaustively():
    # every (n, c, k) with 1 <= n <= 8, 0 <= c <= n, 1 <= k <= n against 1 - C(n-c,k)/C(n,k)
    # (math.comb gives 0 when k > n - c, so the closed form is 1 there)
    checked = 0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
                checked += 1
    assert checked == sum((n + 1) * n for n in range(1, 9))  # 240 triples


def test_pass_at_k_hand_cases():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)
    # n=5, c=2, k=4: n - c = 3 < 4, so C(3,4) = 0 -> exactly 1
    assert pass_at_k(5, 2, 4) == 1.0
    # no correct sample -> 0 for every k; all correct -> 1 for every k
    assert all(pass_at_k(32, 0, k) == 0.0 for k in range(1, 33))
    assert all(pass_at_k(32, 32, k) == 1.0 for k in range(1, 33))
    # k=1 is plain accuracy: c/n = 5/32
    assert pass_at_k(32, 5, 1) == pytest.approx(5 / 32, abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # C(1024, 512) overflows a float; the product form stays finite and in [0, 1]
    v = pass_at_k(1024, 1, 512)
    # n=1024, c=1, k=512: 1 - C(1023,512)/C(1024,512) = 1 - (1024-512)/1024 = 0.5
    assert v == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, -1, 1), (4, 5, 1), (4, 1, 0), (4, 1, 5), (0, 0, 1)])
def test_pass_at_k_errors(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_table_default_ks():
    assert list(pass_at_k_table([[T] * 32])) == [1, 2, 4, 8, 16, 32]
    assert list(pass_at_k_table([[T] * 6])) == [1, 2, 4, 6]
    assert list(pass_at_k_table([[F]])) == [1]
    # ragged: the shortest row (n=6) bounds the default ks
    assert list(pass_at_k_table([[T] * 8, [F] * 6])) == [1, 2, 4, 6]


def test_pass_at_k_table_hand_values():
    rows = [[T, F, F, F], [T, T, F, F], [F, F, F, F]]
    # default ks for n=4: 1, 2, 4
    # row c=1: p@1 = 1/4, p@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2, p@4 = 1
    # row c=2: p@1 = 2/4, p@2 = 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6, p@4 = 1
    # row c=0: 0, 0, 0
    # means: k=1 (1/4 + 1/2 + 0)/3 = 1/4; k=2 (1/2 + 5/6 + 0)/3 = 4/9; k=4 (1 + 1 + 0)/3 = 2/3
    table = pass_at_k_table(rows)
    assert list(table) == [1, 2, 4]
    assert table[1] == pytest.approx(1 / 4, abs=1e-12)
    assert table[2] == pytest.approx(4 / 9, abs=1e-12)
    assert table[4] == pytest.approx(2 / 3, abs=1e-12)
    # explicit ks, ragged rows: [T, F] (n=2, c=1) and [F, F, F, T] (n=4, c=1)
    # k=2: 1 - C(1,2)/C(2,2) = 1 - 0 = 1 and 1 - C(3,2)/C(4,2) = 1/2 -> mean 3/4
    assert pass_at_k_table([[T, F], [F, F, F, T]], ks=[2]) == {2: pytest.approx(0.75, abs=1e-12)}


def test_pass_at_k_table_errors():
    with pytest.raises(ValueError, match="k=3"):
        pass_at_k_table([[T, F, F, F], [T, F]], ks=[1, 3])
    with pytest.raises(ValueError, match="k=0"):
        pass_at_k_table([[T, F]], ks=[0])
    with pytest.raises(ValueError):
        pass_at_k_table([])
    with pytest.raises(ValueError, match="row 1"):
        pass_at_k_table([[T], []])


# ---------------------------------------------------------------- majority vote

def test_majority_vote_basic():
    # "3" has 2 votes, "4" has 1, None does not vote -> "3", whose first sample is correct
    assert majority_vote(["3", "4", "3", None], [T, F, T, F]) is True
    # "4" wins 2 to 1 and is wrong, even though a correct sample exists
    assert majority_vote(["4", "3", "4"], [F, T, F]) is False


def test_majority_vote_ties_go_to_first_seen():
    # tie 1-1: "4" occurs first
    assert majority_vote(["4", "3"], [F, T]) is False
    assert majority_vote(["3", "4"], [T, F]) is True
    # tie 2-2 where the second answer reaches 2 first: "a" (index 0) still wins
    assert majority_vote(["a", "b", "b", "a"], [T, F, F, T]) is True


def test_majority_vote_none_and_grouping():
    assert majority_vote([None, None], [T, F]) is False
    assert majority_vote([], []) is False
    # None votes don't count: the single "7" beats nothing
    assert majority_vote([None, "7", None], [F, T, F]) is True
    # default key strips whitespace: " 5" and "5 " are one group of 2 vs "6" x1
    assert majority_vote(["6", " 5", "5 "], [F, T, T]) is True
    # by default "1 / 2" and "1/2" are different answers: a 1-1-1 tie that "0.5" (first) wins
    answers = ["0.5", "1 / 2", "1/2"]
    grades = [F, T, T]
    assert majority_vote(answers, grades) is False
    assert majority_vote(answers, grades, key=lambda a: a.replace(" ", "")) is True  # "1/2" x2


def test_majority_vote_length_mismatch():
    with pytest.raises(ValueError):
        majority_vote(["1", "2"], [T])


def test_maj_at_k_mean_over_problems():
    answers = [["3", "4", "3", None], ["4", "3"], [None, None]]
    correct = [[T, F, T, F], [F, T], [F, F]]
    # problem votes: True, False (tie -> "4"), False (no answer) -> 1/3
    assert maj_at_k(answers, correct) == pytest.approx(1 / 3, abs=1e-15)
    with pytest.raises(ValueError):
        maj_at_k([], [])
    with pytest.raises(ValueError, match="row 0"):
        maj_at_k([["1"]], [[T, F]])
    with pytest.raises(ValueError):
        maj_at_k([["1"]], [[T], [F]])


# ---------------------------------------------------------------- macro average

def test_macro_average():
    # (0.5 + 0.25 + 0.75) / 3 = 0.5, regardless of benchmark sizes
    assert macro_average({"aime24": 0.5, "math500": 0.25, "amc": 0.75}) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        macro_average({})


# ---------------------------------------------------------------- bootstrap CI

def test_bootstrap_ci_matches_independent_loop():
    x = [0.0, 0.25, 0.5, 1.0, 0.75]
    got = bootstrap_ci(x, n_boot=200, seed=3)
    want = _ref_bootstrap(x, n_boot=200, alpha=0.05, seed=3)
    assert got == pytest.approx(want, abs=1e-12)
    # the interval brackets the sample mean 2.5/5 = 0.5 and lies within [min, max]
    assert 0.0 <= got[0] <= 0.5 <= got[1] <= 1.0
    # another alpha uses other quantiles of the same draws
    got90 = bootstrap_ci(x, n_boot=200, alpha=0.1, seed=3)
    assert got90 == pytest.approx(_ref_bootstrap(x, 200, 0.1, 3), abs=1e-12)
    assert got[0] <= got90[0] and got90[1] <= got[1]


def test_bootstrap_ci_is_deterministic_per_seed():
    x = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2]
    assert bootstrap_ci(x, n_boot=300, seed=7) == bootstrap_ci(x, n_boot=300, seed=7)


def test_bootstrap_ci_degenerate_inputs():
    assert bootstrap_ci([0.3, 0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert bootstrap_ci([0.42]) == (0.42, 0.42)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], alpha=0.0)
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], n_boot=0)


def test_bootstrap_ci_returns_plain_floats():
    lo, hi = bootstrap_ci([0.0, 1.0, 0.5], n_boot=50)
    assert type(lo) is float and type(hi) is float


# ---------------------------------------------------------------- paired comparison

def test_paired_comparison_identical_runs():
    a = {"p1": 0.5, "p2": 0.25, "p3": 1.0}
    r = paired_comparison(a, dict(a), n_boot=100)
    assert isinstance(r, PairedComparison)
    # all differences are 0: every sign flip gives |0| >= |0| -> p = (1 + 100)/(1 + 100) = 1
    assert r.diff == 0.0
    assert (r.ci_low, r.ci_high) == (0.0, 0.0)
    assert r.p_value == 1.0
    assert (r.wins_a, r.wins_b, r.ties, r.n_problems, r.n_dropped) == (0, 0, 3, 3, 0)


def test_paired_comparison_hand_case():
    a = {"p1": 0.5, "p2": 0.25, "p3": 1.0, "p4": 0.0, "only_a": 0.9}
    b = {"p4": 0.5, "p3": 1.0, "p2": 0.5, "p1": 0.75, "only_b": 0.1}
    r = paired_comparison(a, b, n_boot=200, seed=5)
    # common ids p1..p4; d = b - a = 0.25, 0.25, 0, 0.5
    # mean_a = (0.5 + 0.25 + 1 + 0)/4 = 0.4375; mean_b = (0.75 + 0.5 + 1 + 0.5)/4 = 0.6875
    # diff = (0.25 + 0.25 + 0 + 0.5)/4 = 0.25; b wins p1, p2, p4; tie on p3
    assert r.mean_a == pytest.approx(0.4375, abs=1e-15)
    assert r.mean_b == pytest.approx(0.6875, abs=1e-15)
    assert r.diff == pytest.approx(0.25, abs=1e-15)
    assert (r.wins_b, r.wins_a, r.ties) == (3, 0, 1)
    assert r.n_problems == 4
    assert r.n_dropped == 2  # "only_a" and "only_b"
    # the CI is the bootstrap of d in sorted-id order with the same seed
    d = [0.25, 0.25, 0.0, 0.5]
    assert (r.ci_low, r.ci_high) == pytest.approx(_ref_bootstrap(d, 200, 0.05, 5), abs=1e-12)
    # p-value from an independent sign-flip loop over the same draws
    assert r.p_value == pytest.approx(_ref_sign_flip(d, 200, 5), abs=1e-15)
    # sanity: with 3 non-zero differences only 2 of the 8 sign patterns (+++ and ---) reach
    # |mean| = 0.25, so p is near 1/4, and certainly above 0.05
    assert 0.1 < r.p_value < 0.45


def test_paired_comparison_is_symmetric_in_sign():
    a = {"x": 0.1, "y": 0.6, "z": 0.3, "w": 0.8}
    b = {"x": 0.4, "y": 0.5, "z": 0.9, "w": 0.8}
    ab = paired_comparison(a, b, n_boot=300, seed=1)
    ba = paired_comparison(b, a, n_boot=300, seed=1)
    assert ab.diff == pytest.approx(-ba.diff, abs=1e-15)
    assert ab.p_value == ba.p_value  # |mean(s*d)| does not see the sign of d
    assert (ab.wins_a, ab.wins_b, ab.ties) == (ba.wins_b, ba.wins_a, ba.ties) == (1, 2, 1)
    assert ab.ci_low == pytest.approx(-ba.ci_high, abs=1e-12)


def test_paired_comparison_clear_effect_has_small_p():
    # 40 problems, b better by 0.2 on every one: among 2^40 sign patterns only the two constant
    # ones reach |mean| = 0.2, so almost no random flip does: p ~ 1/(1 + n_boot)
    a = {f"q{i}": 0.3 for i in range(40)}
    b = {f"q{i}": 0.5 for i in range(40)}
    r = paired_comparison(a, b, n_boot=999)
    assert r.p_value == pytest.approx(1 / 1000)
    assert r.ci_low == pytest.approx(0.2) and r.ci_high == pytest.approx(0.2)


def test_paired_comparison_no_common_ids():
    with pytest.raises(ValueError, match="no problem ids"):
        paired_comparison({"a": 1.0}, {"b": 1.0})


# ---------------------------------------------------------------- summarize

def test_summarize_is_json_serializable_and_consistent():
    correct = [[T, F, F, T], [T, T, T, T], [F, F, F, F]]
    answers = [["1", "2", "2", "1"], ["5", "5", "5", "5"], [None, "x", "y", "x"]]
    s = summarize(correct, answers, n_boot=200)
    json.dumps(s)  # must not raise
    assert s["avg_at_n"] == pytest.approx(0.5)
    assert s["n"] == 4 and "n_max" not in s
    assert s["num_problems"] == 3
    # default ks 1, 2, 4 as strings
    # p@1 = avg = 0.5; p@2: rows 1 - C(2,2)/C(4,2) = 5/6, 1, 0 -> (5/6 + 1)/3 = 11/18; p@4: 2/3
    assert list(s["pass_at_k"]) == ["1", "2", "4"]
    assert s["pass_at_k"]["1"] == pytest.approx(0.5)
    assert s["pass_at_k"]["2"] == pytest.approx(11 / 18)
    assert s["pass_at_k"]["4"] == pytest.approx(2 / 3)
    # maj: "1" vs "2" tie -> "1" (index 0, correct); "5" correct; "x" wins, wrong -> 2/3
    assert s["maj_at_n"] == pytest.approx(2 / 3)
    assert s["ci_low"] <= s["avg_at_n"] <= s["ci_high"]
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(
        _ref_bootstrap([0.5, 1.0, 0.0], 200, 0.05, 0), abs=1e-12)
    for v in (s["avg_at_n"], s["ci_low"], s["ci_high"], s["maj_at_n"], *s["pass_at_k"].values()):
        assert type(v) is float
    assert type(s["n"]) is int and type(s["num_problems"]) is int


def test_summarize_ragged_without_answers():
    s = summarize([[T, F], [T, T, F, F, F, F]], n_boot=50)
    json.loads(json.dumps(s))
    assert s["n"] == 2 and s["n_max"] == 6
    assert "maj_at_n" not in s
    assert list(s["pass_at_k"]) == ["1", "2"]
    # 1/2 and 2/6 -> (0.5 + 1/3)/2 = 5/12
    assert s["avg_at_n"] == pytest.approx(5 / 12)


# ---------------------------------------------------------------- across seeds (Student / Welch)
# Two-sided 95% quantiles from a printed t table: t_{0.975, 1} = 12.706, t_{0.975, 2} = 4.303,
# t_{0.975, 3} = 3.182.

def test_seed_summary_t_interval_by_hand():
    # x = 0.25, 0.5, 0.75: mean 0.5; s^2 = (0.0625 + 0 + 0.0625) / 2 = 0.0625, s = 0.25;
    # s / sqrt(3) = 0.144338; half width = 4.303 * 0.144338 = 0.62109
    r = seed_summary([0.5, 0.75, 0.25])
    assert r.n == 3 and r.mean == pytest.approx(0.5) and r.sd == pytest.approx(0.25)
    assert r.ci[0] == pytest.approx(0.5 - 0.62109, abs=2e-4)
    assert r.ci[1] == pytest.approx(0.5 + 0.62109, abs=2e-4)
    # two runs: 0.5, 0.75 -> mean 0.625, s = 0.176777, s/sqrt(2) = 0.125, half = 12.706 * 0.125
    r2 = seed_summary([0.5, 0.75])
    assert r2.ci == pytest.approx((0.625 - 1.58825, 0.625 + 1.58825), abs=2e-4)
    # a 90% interval is narrower: t_{0.95, 2} = 2.920 -> half = 2.920 * 0.144338 = 0.42147
    r90 = seed_summary([0.5, 0.75, 0.25], alpha=0.10)
    assert r90.ci[1] - 0.5 == pytest.approx(0.42147, abs=2e-4)


def test_seed_summary_one_run_has_no_spread_and_equal_runs_zero_width():
    one = seed_summary([0.4])
    assert (one.n, one.mean, one.sd, one.ci) == (1, 0.4, None, None)
    same = seed_summary([0.3, 0.3, 0.3])
    assert same.sd == 0.0 and same.ci == (pytest.approx(0.3), pytest.approx(0.3))
    with pytest.raises(ValueError, match="non-empty"):
        seed_summary([])
    with pytest.raises(ValueError, match="alpha"):
        seed_summary([0.1, 0.2], alpha=1.5)


def test_welch_difference_equal_sizes_and_variances_has_pooled_df():
    # a = 0.4, 0.6; b = 0.7, 0.9: s_a^2 = s_b^2 = 0.02, se^2 = 0.02/2 + 0.02/2 = 0.02,
    # df = 0.02^2 / (0.01^2/1 + 0.01^2/1) = 2; diff = 0.8 - 0.5 = 0.3;
    # half = 4.303 * sqrt(0.02) = 4.303 * 0.141421 = 0.60853
    r = welch_difference([0.4, 0.6], [0.7, 0.9])
    assert isinstance(r, SeedDifference)
    assert (r.n_a, r.n_b) == (2, 2) and r.df == pytest.approx(2.0)
    assert r.diff == pytest.approx(0.3)
    assert r.ci == pytest.approx((0.3 - 0.60853, 0.3 + 0.60853), abs=2e-4)
    # b - a: swapping the arguments flips the sign
    assert welch_difference([0.7, 0.9], [0.4, 0.6]).diff == pytest.approx(-0.3)


def test_welch_difference_unequal_sizes_satterthwaite_df():
    # a = 0.4, 0.6 (s^2 0.02, n 2); b = 0.35, 0.6, 0.85 (s^2 0.0625, n 3); diff = 0.6 - 0.5 = 0.1
    # va = 0.01, vb = 0.0208333, se^2 = 0.0308333, se = 0.175594
    # df = 0.0308333^2 / (0.01^2 / 1 + 0.0208333^2 / 2) = 0.000950694 / 0.000317014 = 2.99890
    r = welch_difference([0.4, 0.6], [0.6, 0.85, 0.35])
    assert r.diff == pytest.approx(0.1) and r.df == pytest.approx(2.99890, abs=1e-4)
    half = r.ci[1] - r.diff
    assert r.diff - r.ci[0] == pytest.approx(half)
    # df just below 3: t between t_{0.975,3} = 3.182 and t_{0.975,2} = 4.303, next to 3.182
    assert 3.182 * 0.175594 < half < 3.190 * 0.175594


def test_welch_difference_needs_two_runs_and_handles_no_spread():
    with pytest.raises(ValueError, match="at least 2 runs of a"):
        welch_difference([0.5], [0.4, 0.6])
    with pytest.raises(ValueError, match="at least 2 runs of b"):
        welch_difference([0.4, 0.6], [0.5])
    flat = welch_difference([0.2, 0.2], [0.5, 0.5, 0.5])
    assert flat.diff == pytest.approx(0.3) and flat.ci == (flat.diff, flat.diff) and flat.df is None
