"""``synthetic:LEVEL`` benchmarks: a built-in arithmetic level's whole held-out split.

The problems are the level's ``test`` split of `prefix_rft.data.synthetic` (never trained on),
drawn in one fixed order (`SYNTHETIC_ORDER_SEED`, independent of the run's seed), so every run
evaluating the first K problems sees the same K.
"""

from __future__ import annotations

from prefix_rft.errors import UserError
from prefix_rft.eval.benchmarks.registry import (
    SYNTHETIC_PREFIX,
    BenchmarkProblem,
    benchmark_label,
)

SYNTHETIC_ORDER_SEED = 0  # the fixed order of a synthetic level's test split (any run, any seed)


def synthetic_level(spec: str) -> str:
    """``"synthetic:add"`` -> ``"add"``; a `UserError` naming the spec and the known levels for an
    unknown level (or several: one level per benchmark, so each gets its own score)."""
    from prefix_rft.data.synthetic import LEVELS

    level = spec[len(SYNTHETIC_PREFIX):].strip()
    if level in LEVELS:
        return level
    known = ", ".join(SYNTHETIC_PREFIX + lv for lv in LEVELS)
    if "," in level:
        raise UserError(f"benchmark {spec!r}: one synthetic level per benchmark (each is scored "
                        f"on its own); list them separately: {known}")
    raise UserError(f"benchmark {spec!r}: unknown synthetic level {level!r}; expected one of "
                    f"{known}")


def load_synthetic(spec: str) -> list[BenchmarkProblem]:
    """The problems of ``synthetic:LEVEL``, filed under `benchmark_label` (``synthetic_LEVEL``)."""
    from prefix_rft.data.synthetic import pool_size, synthetic_arithmetic

    level = synthetic_level(spec)
    label = benchmark_label(spec)
    problems = synthetic_arithmetic(pool_size(level, "test"), seed=SYNTHETIC_ORDER_SEED,
                                    levels=(level,), split="test")
    return [BenchmarkProblem(label, p.id, p.prompt, (p.answer,)) for p in problems]
