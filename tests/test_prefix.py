"""Prefix sampling (docs/ALGORITHM.md section 2): schedule, window, ratio sampler, clamp, cut.

Every expected number is computed by hand in the comment next to it; nothing here calls the
function under test to obtain an expectation.
"""

from __future__ import annotations

import random

import pytest

from prefix_rft.core.config import ScheduleConfig
from prefix_rft.core.prefix import (
    cut_prefix,
    prefix_length,
    prefix_window,
    sample_ratio,
    schedule_low,
)

# cos(pi/4) = sqrt(2)/2 = 0.7071067811865476
COS_PI_4 = 0.7071067811865476


def paper_schedule(**kw) -> ScheduleConfig:
    base = dict(kind="cosine", start=0.95, end=0.05, high=0.95, total_steps=500)
    base.update(kw)
    return ScheduleConfig(**base)


# ---------------------------------------------------------------------------- cosine
@pytest.mark.parametrize(
    "step, expected",
    [
        # 0.05 + 0.5*(1+cos(0))*0.9 = 0.05 + 0.9 = 0.95
        (0, 0.95),
        # 0.05 + 0.5*(1+cos(pi/4))*0.9 = 0.05 + 0.45*1.7071067811865476 = 0.05 + 0.7681980515 = 0.8181980515
        (125, 0.8181980515339464),
        # 0.05 + 0.5*(1+cos(pi/2))*0.9 = 0.05 + 0.45 = 0.5
        (250, 0.5),
        # 0.05 + 0.5*(1+cos(3pi/4))*0.9 = 0.05 + 0.45*0.2928932188 = 0.05 + 0.1318019485 = 0.1818019485
        (375, 0.18180194846605363),
        # 0.05 + 0.5*(1+cos(pi))*0.9 = 0.05 + 0 = 0.05
        (500, 0.05),
        # min(600, 500) = 500 -> stays at 0.05
        (600, 0.05),
        # far past T: still 0.05
        (10_000, 0.05),
    ],
)
def test_cosine_schedule_paper_values(step, expected):
    assert schedule_low(paper_schedule(), step) == pytest.approx(expected, abs=1e-12)


def test_cosine_schedule_constants_are_consistent():
    # sanity on the hand constants used above: 0.45*(1+sqrt(2)/2) + 0.05
    assert 0.05 + 0.45 * (1 + COS_PI_4) == pytest.approx(0.8181980515339464, abs=1e-12)
    assert 0.05 + 0.45 * (1 - COS_PI_4) == pytest.approx(0.18180194846605363, abs=1e-12)


def test_cosine_schedule_is_monotone_non_increasing():
    cfg = paper_schedule()
    lows = [schedule_low(cfg, t) for t in range(0, 700, 7)]
    assert all(a >= b - 1e-15 for a, b in zip(lows, lows[1:]))


def test_cosine_schedule_negative_step_clamped_to_start():
    # frac = min(max(-10, 0), 500)/500 = 0 -> 0.95
    assert schedule_low(paper_schedule(), -10) == pytest.approx(0.95)


def test_cosine_other_total_steps():
    # T = 100, step 50: 0.05 + 0.5*(1+cos(pi/2))*0.9 = 0.5
    assert schedule_low(paper_schedule(total_steps=100), 50) == pytest.approx(0.5)
    # T = 100, step 100: 0.05
    assert schedule_low(paper_schedule(total_steps=100), 100) == pytest.approx(0.05)


# ---------------------------------------------------------------------------- linear
@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.95),  # 0.95 + (0.05-0.95)*0 = 0.95
        (100, 0.77),  # 0.95 - 0.9*(100/500 = 0.2) = 0.95 - 0.18 = 0.77
        (250, 0.5),  # 0.95 - 0.9*0.5 = 0.5
        (400, 0.23),  # 0.95 - 0.9*0.8 = 0.95 - 0.72 = 0.23
        (500, 0.05),  # 0.95 - 0.9*1 = 0.05
        (700, 0.05),  # clamped at T
    ],
)
def test_linear_schedule(step, expected):
    assert schedule_low(paper_schedule(kind="linear"), step) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------- constant / uniform
@pytest.mark.parametrize("step", [0, 1, 250, 500, 10_000])
def test_constant_schedule_is_start(step):
    # constant: low_t = start at every step
    assert schedule_low(paper_schedule(kind="constant"), step) == pytest.approx(0.95)
    assert schedule_low(paper_schedule(kind="constant", start=0.6), step) == pytest.approx(0.6)


@pytest.mark.parametrize("step", [0, 1, 250, 500, 10_000])
def test_uniform_schedule_is_end(step):
    # uniform = no schedule: low_t = end = 0.05 from step 0
    assert schedule_low(paper_schedule(kind="uniform"), step) == pytest.approx(0.05)


# ---------------------------------------------------------------------------- warmup / delay
@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.05),  # ramp start: end = 0.05
        (50, 0.5),  # 0.05 + (0.95-0.05)*50/100 = 0.05 + 0.45 = 0.5
        (75, 0.725),  # 0.05 + 0.9*0.75 = 0.05 + 0.675 = 0.725
        (100, 0.95),  # cosine(0) = 0.95
        (225, 0.8181980515339464),  # cosine(125) = 0.05 + 0.45*(1+cos(pi/4))
        (350, 0.5),  # cosine(250) = 0.5
        (600, 0.05),  # cosine(500) = 0.05
        (900, 0.05),  # cosine(800 -> clamped 500) = 0.05
    ],
)
def test_warmup_schedule(step, expected):
    cfg = paper_schedule(kind="warmup", warmup_steps=100)
    assert schedule_low(cfg, step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.95),  # held at start
        (99, 0.95),  # held at start
        (100, 0.95),  # cosine(0)
        (225, 0.8181980515339464),  # cosine(125)
        (350, 0.5),  # cosine(250)
        (600, 0.05),  # cosine(500)
        (1000, 0.05),  # clamped
    ],
)
def test_delay_schedule(step, expected):
    cfg = paper_schedule(kind="delay", delay_steps=100)
    assert schedule_low(cfg, step) == pytest.approx(expected, abs=1e-12)


def test_unknown_schedule_kind_raises():
    cfg = paper_schedule()
    cfg.kind = "exponential"  # bypasses the Literal (dataclasses do not check)
    with pytest.raises(ValueError, match="exponential"):
        schedule_low(cfg, 0)


# ---------------------------------------------------------------------------- window
def test_prefix_window_paper():
    cfg = paper_schedule()
    assert prefix_window(cfg, 0) == pytest.approx((0.95, 0.95))  # low_0 = 0.95 = high
    assert prefix_window(cfg, 250) == pytest.approx((0.5, 0.95))
    assert prefix_window(cfg, 500) == pytest.approx((0.05, 0.95))  # mean 0.5 at T
    assert prefix_window(cfg, 9999) == pytest.approx((0.05, 0.95))


def test_prefix_window_low_never_exceeds_high():
    # constant start 1.0 with high 0.95: low = min(1.0, 0.95) = 0.95
    cfg = paper_schedule(kind="constant", start=1.0, high=0.95)
    assert prefix_window(cfg, 3) == pytest.approx((0.95, 0.95))
    # cosine start 0.9 with high 0.7, step 0: min(0.9, 0.7) = 0.7
    cfg = paper_schedule(start=0.9, high=0.7)
    assert prefix_window(cfg, 0) == pytest.approx((0.7, 0.7))


# ---------------------------------------------------------------------------- sample_ratio
class _StubRng:
    """A random.Random stand-in returning fixed draws (so the mapping can be checked by hand)."""

    def __init__(self, u: float = 0.25, b: float = 0.5):
        self.u, self.b, self.beta_args = u, b, None

    def random(self):
        return self.u

    def betavariate(self, a, b):
        self.beta_args = (a, b)
        return self.b


def test_sample_ratio_maps_uniform_draw_into_window():
    cfg = paper_schedule()
    # step 500: window (0.05, 0.95); u = 0.25 -> 0.05 + 0.9*0.25 = 0.05 + 0.225 = 0.275
    assert sample_ratio(cfg, 500, _StubRng(u=0.25)) == pytest.approx(0.275)
    # step 250: window (0.5, 0.95); u = 0.5 -> 0.5 + 0.45*0.5 = 0.725
    assert sample_ratio(cfg, 250, _StubRng(u=0.5)) == pytest.approx(0.725)
    # step 0: window (0.95, 0.95) -> 0.95 whatever u is
    assert sample_ratio(cfg, 0, _StubRng(u=0.9)) == pytest.approx(0.95)


def test_sample_ratio_beta_sampler_uses_config_parameters():
    cfg = paper_schedule(sampler="beta", beta_a=2.0, beta_b=5.0)
    rng = _StubRng(b=0.5)
    # step 500: 0.05 + 0.9*0.5 = 0.5
    assert sample_ratio(cfg, 500, rng) == pytest.approx(0.5)
    assert rng.beta_args == (2.0, 5.0)


@pytest.mark.parametrize("step", [0, 100, 250, 400, 500, 800])
def test_sample_ratio_stays_within_window(step):
    cfg = paper_schedule()
    low, high = prefix_window(cfg, step)
    rng = random.Random(1234)
    draws = [sample_ratio(cfg, step, rng) for _ in range(2000)]
    assert all(low - 1e-12 <= x <= high + 1e-12 for x in draws)


def test_sample_ratio_uniform_at_T_covers_the_window():
    cfg = paper_schedule()
    rng = random.Random(7)
    draws = [sample_ratio(cfg, 500, rng) for _ in range(4000)]
    # window (0.05, 0.95): mean (0.05+0.95)/2 = 0.5; sd of the mean = 0.9/sqrt(12*4000) ~ 0.0041
    assert sum(draws) / len(draws) == pytest.approx(0.5, abs=0.02)
    assert min(draws) < 0.1 and max(draws) > 0.9


def test_sample_ratio_is_reproducible_for_a_seed():
    cfg = paper_schedule()
    first = sample_ratio(cfg, 300, random.Random(99))
    rng1, rng2 = random.Random(99), random.Random(99)
    s1 = [sample_ratio(cfg, 300, rng1) for _ in range(50)]
    s2 = [sample_ratio(cfg, 300, rng2) for _ in range(50)]
    assert s1 == s2
    assert s1[0] == first
    assert sample_ratio(cfg, 300, random.Random(100)) != first


def test_beta_sampler_within_window_and_reproducible():
    cfg = paper_schedule(sampler="beta", beta_a=2.0, beta_b=5.0)
    for step in (0, 250, 500):
        low, high = prefix_window(cfg, step)
        rng = random.Random(5)
        draws = [sample_ratio(cfg, step, rng) for _ in range(1000)]
        assert all(low - 1e-12 <= x <= high + 1e-12 for x in draws)
    r1, r2 = random.Random(3), random.Random(3)
    assert [sample_ratio(cfg, 500, r1) for _ in range(20)] == [
        sample_ratio(cfg, 500, r2) for _ in range(20)
    ]
    # Beta(2, 5) has mean 2/7 = 0.2857; in (0.05, 0.95): 0.05 + 0.9*0.2857 = 0.3071
    rng = random.Random(11)
    draws = [sample_ratio(cfg, 500, rng) for _ in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(0.3071, abs=0.02)


# ---------------------------------------------------------------------------- prefix_length
@pytest.mark.parametrize(
    "ratio, demo_len, min_len, expected",
    [
        (0.5, 10, 1, 5),  # floor(0.5*10 = 5.0) = 5
        (0.75, 8, 1, 6),  # floor(6.0) = 6
        (0.99, 10, 1, 9),  # floor(9.9) = 9
        (0.95, 100, 1, 95),  # floor(95.0) = 95
        (0.37, 7, 1, 2),  # floor(2.59) = 2
        (1.0, 10, 1, 9),  # floor(10) = 10 -> clamp |y*|-1 = 9
        (1.0, 2, 1, 1),  # floor(2) = 2 -> clamp 1
        (0.95, 2, 1, 1),  # floor(1.9) = 1
        (0.0, 10, 1, 1),  # floor(0) = 0 -> min_prefix_len 1
        (0.0, 10, 0, 0),  # floor(0) = 0, min_prefix_len 0 -> 0
        (0.04, 10, 1, 1),  # floor(0.4) = 0 -> 1
        (0.1, 10, 3, 3),  # floor(1.0) = 1 -> min_prefix_len 3
        (0.5, 10, 3, 5),  # floor(5) = 5 >= 3 -> 5
        (0.5, 10, 50, 9),  # min_prefix_len 50 > |y*|-1 = 9 -> 9
        (0.0, 4, 10, 3),  # min_prefix_len 10 > |y*|-1 = 3 -> 3
        (0.9, 1, 1, 0),  # single-token demo cannot be split -> 0
        (1.0, 1, 5, 0),  # single-token demo -> 0 whatever min_prefix_len
        (0.5, 0, 1, 0),  # empty demo -> 0
    ],
)
def test_prefix_length_clamp(ratio, demo_len, min_len, expected):
    m = prefix_length(ratio, demo_len, min_len)
    assert m == expected
    assert isinstance(m, int)


def test_prefix_length_leaves_at_least_one_token_to_generate():
    for demo_len in range(2, 40):
        for ratio in (0.0, 0.05, 0.5, 0.95, 1.0):
            m = prefix_length(ratio, demo_len, 1)
            assert 1 <= m <= demo_len - 1


def test_prefix_length_default_min_is_one():
    # floor(0.0*10) = 0 -> default min_prefix_len 1
    assert prefix_length(0.0, 10) == 1


# ---------------------------------------------------------------------------- cut_prefix
def test_cut_prefix_returns_exactly_first_m_ids():
    demo = [101, 7, 7, 42, 9, 0, 13]
    assert cut_prefix(demo, 3) == [101, 7, 7]
    assert cut_prefix(demo, 0) == []
    assert cut_prefix(demo, 6) == [101, 7, 7, 42, 9, 0]
    assert cut_prefix(tuple(demo), 2) == [101, 7]  # any sequence -> a list of ids


def test_cut_prefix_returns_a_copy():
    demo = [5, 6, 7, 8]
    out = cut_prefix(demo, 2)
    out.append(99)
    out[0] = -1
    assert demo == [5, 6, 7, 8]


def test_prefix_then_cut_paper_example():
    # demo of 20 ids, l = 0.5 -> m = floor(10.0) = 10 -> the first 10 ids
    demo = list(range(1000, 1020))
    m = prefix_length(0.5, len(demo), 1)
    assert m == 10
    assert cut_prefix(demo, m) == list(range(1000, 1010))
