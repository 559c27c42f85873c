"""Resolve a data spec from the config (`data.train`, `data.test`) into problems.

A spec is a local file/directory, an `s3://` (or other fsspec) URL of one, `hub:owner/name[:config]`
(all loaded through `datasets`: see `prefix_rft.data.loading`), `synthetic:LEVELS` (the built-in
arithmetic task; LEVELS is a comma-separated list such as `add,mul`), or `realmath:train` /
`realmath:heldout` (the real-math set built from vendored benchmark solutions:
`prefix_rft.data.realmath`).
"""

from __future__ import annotations

from prefix_rft.data.filter import data_fraction
from prefix_rft.data.problem import Problem
from prefix_rft.data.readers import read_problems
from prefix_rft.data.synthetic import pool_size, synthetic_arithmetic

BUILTIN_PREFIXES = ("synthetic:", "realmath:")


def is_builtin_spec(spec: str) -> bool:
    """Whether `spec` names a data set built in code (no file to read or detect a schema of)."""
    return isinstance(spec, str) and spec.startswith(BUILTIN_PREFIXES)


def load_spec(
    spec: str,
    *,
    split: str,
    schema: str = "auto",
    synthetic_size: int = 512,
    seed: int = 0,
    require_demos: bool = True,
) -> list[Problem]:
    if spec.startswith("synthetic:"):
        levels = tuple(x.strip() for x in spec.split(":", 1)[1].split(",") if x.strip())
        # levels take turns, so the smallest level pool bounds how many problems can be drawn
        cap = len(levels) * min(pool_size(lv, split) for lv in levels) if levels else 0
        return synthetic_arithmetic(min(synthetic_size, cap), seed=seed, levels=levels, split=split)
    if spec.startswith("realmath:"):
        from prefix_rft.data.realmath import load_realmath

        return load_realmath(spec)
    return read_problems(spec, schema=schema, split=split, require_demos=require_demos)


def training_problems(data_cfg, *, seed: int, require_demos: bool) -> list[Problem]:
    """The training set after `data.fraction` and `data.max_problems`."""
    problems = load_spec(
        data_cfg.train,
        split="train",
        schema=data_cfg.schema,
        synthetic_size=data_cfg.synthetic_train_size,
        seed=seed,
        require_demos=require_demos,
    )
    if data_cfg.fraction < 1.0:
        problems = data_fraction(problems, data_cfg.fraction, data_cfg.fraction_seed)
    if data_cfg.max_problems is not None:
        problems = problems[: data_cfg.max_problems]
    return problems


def test_problems(data_cfg, *, seed: int) -> list[Problem]:
    if not data_cfg.test:
        return []
    return load_spec(
        data_cfg.test,
        split="test",
        schema=data_cfg.schema,
        synthetic_size=data_cfg.synthetic_test_size,
        seed=seed,
        require_demos=False,
    )
