"""Prefix sampling in token-id space: the prefix-ratio schedule, the ratio sampler, the clamp.

Everything here is a pure function of (config, training step, seed), so a resumed run draws the
same prefixes as a straight one. Token ids in, token ids out: a prefix is `demo_ids[:m]`, never
decoded and re-encoded (docs/ALGORITHM.md section 2).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from prefix_rft.core.config import ScheduleConfig


def _cosine(t: int, total: int, start: float, end: float) -> float:
    # low_t = end + 0.5 * (1 + cos(pi * min(t, T) / T)) * (start - end)   (paper, section 3.2)
    frac = min(max(t, 0), total) / total
    return end + 0.5 * (1.0 + math.cos(math.pi * frac)) * (start - end)


def schedule_low(cfg: ScheduleConfig, step: int) -> float:
    """Lower bound low_t of the prefix ratio at training step `step`."""
    if cfg.kind == "cosine":
        return _cosine(step, cfg.total_steps, cfg.start, cfg.end)
    if cfg.kind == "linear":
        frac = min(max(step, 0), cfg.total_steps) / cfg.total_steps
        return cfg.start + (cfg.end - cfg.start) * frac
    if cfg.kind == "constant":
        return cfg.start
    if cfg.kind == "uniform":
        return cfg.end
    if cfg.kind == "warmup":
        if step < cfg.warmup_steps:
            return cfg.end + (cfg.start - cfg.end) * step / cfg.warmup_steps
        return _cosine(step - cfg.warmup_steps, cfg.total_steps, cfg.start, cfg.end)
    if cfg.kind == "delay":
        return _cosine(max(step - cfg.delay_steps, 0), cfg.total_steps, cfg.start, cfg.end)
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")


def prefix_window(cfg: ScheduleConfig, step: int) -> tuple[float, float]:
    """(low_t, high): the interval the prefix ratio l is drawn from at `step`."""
    low = schedule_low(cfg, step)
    return min(low, cfg.high), cfg.high


def sample_ratio(cfg: ScheduleConfig, step: int, rng: random.Random) -> float:
    """Draw l in [low_t, high]: uniform (paper) or a Beta(a, b) scaled into the window."""
    low, high = prefix_window(cfg, step)
    u = rng.random() if cfg.sampler == "uniform" else rng.betavariate(cfg.beta_a, cfg.beta_b)
    return low + (high - low) * u


def prefix_length(ratio: float, demo_len: int, min_prefix_len: int = 1) -> int:
    """m = floor(l * |y*|) clamped to [min_prefix_len, |y*| - 1] (at least one token generated).

    A demo of a single token cannot be split: m = 0 (the sample is fully on-policy).
    """
    if demo_len <= 1:
        return 0
    m = math.floor(ratio * demo_len)
    return max(min(m, demo_len - 1), min(min_prefix_len, demo_len - 1))


def cut_prefix(demo_ids: Sequence[int], m: int) -> list[int]:
    """The first m demo token ids, exactly (no decode/re-encode)."""
    return list(demo_ids[:m])
