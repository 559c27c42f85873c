"""A built-in synthetic arithmetic task with worked demonstrations (for the demo and the tests).

Levels of graded difficulty:
  tiny  a + b with a, b in 0..4 (25 problems in all): a fixed set a small model learns in minutes
  add   a + b with a, b in 1..99
  mul   a * b with a in 10..99, b in 2..9
  word  a two-step word problem (buy then give away: a + b - c; boxes: a * b + c)

Every demonstration is a few short steps ending with exactly `The answer is \\boxed{N}.`, so a
135M model can imitate it on CPU. The split of a problem is a fixed hash of its arithmetic
(`7+5`, `23x4`, `7+5-3`, `3x4+2`): about 20% of each pool is "test", the rest "train", so no
problem text is in both splits and a problem's split never depends on `n` or `seed`. Ids look like
`synth-add-7+5`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import cache

from prefix_rft.data.problem import Problem
from prefix_rft.errors import UserError

LEVELS = ("tiny", "add", "mul", "word")
SPLITS = ("train", "test")
SOURCE = "synthetic"
_TEST_SHARE = 5  # one key in 5 (by hash) is a test problem

_PEOPLE = (
    ("Mia", "She"),
    ("Tom", "He"),
    ("Ana", "She"),
    ("Sam", "He"),
    ("Lea", "She"),
    ("Ben", "He"),
)
_ITEMS = ("apples", "pencils", "stickers", "marbles", "cards", "books")


def _hash(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)


def _split_of(key: str) -> str:
    return "test" if _hash(key) % _TEST_SHARE == 0 else "train"


def _add(a: int, b: int) -> tuple[str, str, int]:
    s = a + b
    return f"What is {a} + {b}?", f"We add {a} and {b}.\n{a} + {b} = {s}.", s


def _mul(a: int, b: int) -> tuple[str, str, int]:
    tens, ones = a - a % 10, a % 10
    p = a * b
    if ones == 0:
        steps = f"{a} * {b} = {p}."
    else:  # split the 2-digit factor into tens and ones
        steps = f"{a} * {b} = {tens} * {b} + {ones} * {b} = {tens * b} + {ones * b} = {p}."
    return f"What is {a} * {b}?", steps, p


def _word_gain(key: str, a: int, b: int, c: int) -> tuple[str, str, int]:
    h = _hash("who:" + key)
    name, pronoun = _PEOPLE[h % len(_PEOPLE)]
    item = _ITEMS[(h // len(_PEOPLE)) % len(_ITEMS)]
    r = a + b - c
    text = (
        f"{name} has {a} {item}. {pronoun} gets {b} more and then gives {c} away. "
        f"How many {item} does {name} have now?"
    )
    steps = f"{a} + {b} = {a + b}.\n{a + b} - {c} = {r}."
    return text, steps, r


def _word_boxes(key: str, a: int, b: int, c: int) -> tuple[str, str, int]:
    h = _hash("who:" + key)
    name, _ = _PEOPLE[h % len(_PEOPLE)]
    item = _ITEMS[(h // len(_PEOPLE)) % len(_ITEMS)]
    r = a * b + c
    text = (
        f"{name} has {a} boxes with {b} {item} in each box and {c} more {item}. "
        f"How many {item} does {name} have in total?"
    )
    steps = f"{a} * {b} = {a * b}.\n{a * b} + {c} = {r}."
    return text, steps, r


def _make(level: str, key: str) -> Problem:
    if level in ("tiny", "add"):
        a, b = map(int, key.split("+"))
        text, steps, result = _add(a, b)
    elif level == "mul":
        a, b = map(int, key.split("x"))
        text, steps, result = _mul(a, b)
    elif "-" in key:  # word, a + b - c
        ab, c = key.split("-")
        a, b = map(int, ab.split("+"))
        text, steps, result = _word_gain(key, a, b, int(c))
    else:  # word, a * b + c
        ab, c = key.split("+")
        a, b = map(int, ab.split("x"))
        text, steps, result = _word_boxes(key, a, b, int(c))
    demo = f"{steps}\nThe answer is \\boxed{{{result}}}."
    return Problem(f"synth-{level}-{key}", text, str(result), (demo,), SOURCE)


@cache
def _keys(level: str) -> tuple[str, ...]:
    if level == "tiny":
        return tuple(f"{a}+{b}" for a in range(5) for b in range(5))
    if level == "add":
        return tuple(f"{a}+{b}" for a in range(1, 100) for b in range(1, 100))
    if level == "mul":
        return tuple(f"{a}x{b}" for a in range(10, 100) for b in range(2, 10))
    gain = [f"{a}+{b}-{c}" for a in range(2, 21) for b in range(2, 21) for c in range(1, a + b)]
    boxes = [f"{a}x{b}+{c}" for a in range(2, 10) for b in range(2, 10) for c in range(1, 21)]
    return tuple(gain + boxes)


@cache
def _pool(level: str, split: str) -> tuple[str, ...]:
    return tuple(k for k in _keys(level) if _split_of(k) == split)


def pool_size(level: str, split: str = "train") -> int:
    """How many distinct problems `level` has in `split`."""
    _check(level, split)
    return len(_pool(level, split))


def _check(level: str, split: str) -> None:
    if level not in LEVELS:
        raise UserError(
            f"synthetic level '{level}' is unknown (expected one of {', '.join(LEVELS)})"
        )
    if split not in SPLITS:
        raise UserError(
            f"synthetic split '{split}' is unknown (expected one of {', '.join(SPLITS)})"
        )


def synthetic_arithmetic(
    n: int,
    *,
    seed: int = 0,
    levels: Sequence[str] = ("add", "mul", "word"),
    split: str = "train",
) -> list[Problem]:
    """`n` distinct arithmetic problems with one worked demonstration each.

    The levels take turns (problem i is from `levels[i % len(levels)]`); within a level the
    problems are a seeded shuffle of that level's `split` pool, so the same (n, seed, levels,
    split) always gives the same list, and a larger n extends a smaller one. Raises `UserError`
    when a level's pool is smaller than its share of n (see `pool_size`).
    """
    if isinstance(levels, str):
        levels = (levels,)
    if not levels:
        raise UserError(
            "synthetic task: no levels given (expected some of " + ", ".join(LEVELS) + ")"
        )
    for level in levels:
        _check(level, split)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"synthetic task: n={n!r} (expected a non-negative number of problems)")
    counts = {level: 0 for level in levels}
    order = [levels[i % len(levels)] for i in range(n)]
    for level in order:
        counts[level] += 1
    shuffled = {}
    for level in counts:
        pool = list(_pool(level, split))
        if counts[level] > len(pool):
            raise UserError(
                f"synthetic level '{level}' has {len(pool)} {split} problems "
                f"(asked for {counts[level]}; lower n or add levels)"
            )
        random.Random(f"synthetic-{seed}-{level}-{split}").shuffle(pool)
        shuffled[level] = iter(pool)
    return [_make(level, next(shuffled[level])) for level in order]
