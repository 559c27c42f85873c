"""The real-math training set: vendored benchmark problems that ship with worked solutions.

Two vendored benchmark files carry reference solutions: OlympiadBench (675 problems, `solution`
a list of worked solutions, `final_answer` a one-element list) and Minerva (272 problems,
`solution` ending in `\\boxed{answer}`). The real-math study trains on them and never evaluates
on them: its evaluation sets are MATH-500, AMC, AIME24, AIME25 and a held-out part of this
source. `build_realmath()` turns them into `Problem`s, deterministically, with these rules (the
counts of each drop are in `RealMathStats`):

1. The gold answer is what the benchmark loader reads (`prefix_rft.eval.benchmarks`, with its
   repairs): OlympiadBench's `final_answer[0]`, Minerva's first accepted answer (the final box of
   the solution, in the LaTeX spelling Math-Verify reads as meant). Golds that Math-Verify cannot
   parse are dropped (`gold_unparseable`).
2. The demonstration is the reference solution (OlympiadBench: the first one), stripped. When
   its last `\\boxed{}` does not grade correct against the gold (OlympiadBench solutions have no
   box at all; some Minerva boxes are in a spelling Math-Verify misreads, `1.77e-6`), the line
   `ANSWER_LINE` is appended: a blank line, then `The final answer is $\\boxed{GOLD}$.` with the
   gold's `$` signs removed. The demonstration is then graded with the reward's own grader
   (`grade_one`, against the one gold the trainer uses) and dropped unless correct
   (`demo_wrong`).
3. Demonstrations longer than `MAX_DEMO_CHARS` characters are dropped (`too_long`): the study
   trains with responses of at most 1,024 tokens, and a cut demonstration loses its answer.
   The cap is in characters so that the set does not depend on a tokenizer; 2,000 characters of
   LaTeX-heavy text are about 550-800 Qwen2.5 tokens (`python -m prefix_rft.data.realmath lengths
   --tokenizer DIR` prints the real token lengths).
4. Problems whose `realmath_key` equals an earlier kept problem's are dropped (`duplicate`), and
   so are problems whose key equals any problem of an evaluation file (`eval_overlap`;
   `evaluation_texts` lists those files).
5. The held-out part: per source, a seeded shuffle (`SPLIT_SEED`) of the kept problems' ids in
   sorted order; the first `round(HELDOUT_FRACTION * n)` are held out, the rest train. The
   split therefore does not depend on file order, and both parts hold both sources.

`load_realmath(split)` is what the data spec `realmath:train` / `realmath:heldout` reads
(`prefix_rft.data.sources`): built on first use in the process (about 15 s, most of it
Math-Verify), nothing written or committed. `python -m prefix_rft.data.realmath build --out DIR`
writes both parts as problems files plus `stats.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import random
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prefix_rft.data.problem import Problem, save_problems
from prefix_rft.errors import UserError

SPEC_PREFIX = "realmath:"
SPLITS = ("train", "heldout")
SOURCES = ("olympiadbench", "minerva")
HELDOUT_FRACTION = 0.15
SPLIT_SEED = 20
MAX_DEMO_CHARS = 2000
ANSWER_LINE = "\n\nThe final answer is $\\boxed{{{answer}}}$."

# LaTeX that changes spacing or sizing only, removed before problems are compared
_LATEX_SPACING = re.compile(r"\\(?:[,;:! ]|quad\b|qquad\b|left\b|right\b|displaystyle\b)|~")
_FRAC_VARIANTS = re.compile(r"\\[dt]frac\b")
_WHITESPACE = re.compile(r"\s+")


def realmath_key(text: str) -> str:
    """The text two problems are compared on (duplicates and overlap with evaluation sets).

    Case folded; math delimiters `$` dropped; spacing and sizing commands (`\\,` `\\;` `\\:`
    `\\!` `\\ ` `~` `\\quad` `\\qquad` `\\left` `\\right` `\\displaystyle`) dropped; `\\dfrac`
    and `\\tfrac` read as `\\frac`; then every whitespace character removed. Coarser than the
    OpenR1 filter's whitespace-and-case rule, so it finds at least the duplicates that one does.
    """
    t = text.casefold().replace("$", "")
    t = _LATEX_SPACING.sub("", t)
    t = _FRAC_VARIANTS.sub(r"\\frac", t)
    return _WHITESPACE.sub("", t)


@dataclass
class RealMathStats:
    """What `build_realmath` read, kept and dropped (each problem counted under one rule)."""

    read: dict = dataclasses.field(default_factory=dict)  # source -> rows read
    gold_unparseable: int = 0
    demo_wrong: int = 0
    too_long: int = 0
    duplicate: int = 0
    eval_overlap: int = 0
    answer_line_appended: int = 0  # kept demonstrations that got ANSWER_LINE
    kept: dict = dataclasses.field(default_factory=dict)  # source -> problems kept
    train: int = 0
    heldout: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _raw_solutions(source: str) -> list[str]:
    """The reference solution of every row of a source's vendored file, in file order."""
    from prefix_rft.data.readers import iter_file
    from prefix_rft.eval.benchmarks import default_path

    out = []
    for row in iter_file(default_path(source)):
        sol = row.fields.get("solution")
        if isinstance(sol, list):
            sol = next((s for s in sol if isinstance(s, str) and s.strip()), None)
        if not isinstance(sol, str) or not sol.strip():
            raise row.error("solution", "a worked solution (string or list of strings)", "is empty")
        out.append(sol.strip())
    return out


def _demonstration(solution: str, gold: str, grade) -> tuple[str, bool] | None:
    """(demonstration, whether ANSWER_LINE was appended), or None when even the appended answer
    line does not grade correct."""
    if grade(solution, gold):
        return solution, False
    demo = solution + ANSWER_LINE.format(answer=gold.replace("$", "").strip())
    return (demo, True) if grade(demo, gold) else None


def _grade(completion: str, gold: str) -> bool:
    from prefix_rft.rollout.reward import grade_one

    return grade_one(completion, gold).reward > 0


def candidates(stats: RealMathStats, grade=_grade) -> list[Problem]:
    """Rules 1-3 over both sources, in source and file order."""
    from prefix_rft.eval.benchmarks import load_benchmark
    from prefix_rft.rollout.reward import gold_is_parseable

    out = []
    for source in SOURCES:
        problems = load_benchmark(source)
        solutions = _raw_solutions(source)
        stats.read[source] = len(problems)
        for bp, solution in zip(problems, solutions, strict=True):
            gold = bp.answers[0].strip()
            if not gold_is_parseable(gold):
                stats.gold_unparseable += 1
                continue
            made = _demonstration(solution, gold, grade)
            if made is None:
                stats.demo_wrong += 1
                continue
            demo, appended = made
            if len(demo) > MAX_DEMO_CHARS:
                stats.too_long += 1
                continue
            stats.answer_line_appended += appended
            out.append(Problem(f"{source}-{bp.id}", bp.problem.strip(), gold, (demo,), source))
    return out


def _problem_text(fields: dict) -> str | None:
    """The problem statement of a benchmark row in any of the vendored layouts."""
    for key in ("problem", "question"):
        if isinstance(fields.get(key), str):
            return fields[key]
    prompt = fields.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) or hasattr(prompt, "tolist"):
        users = [m.get("content") for m in list(prompt) if isinstance(m, dict)
                 and m.get("role") == "user"]
        return users[-1] if users else None
    return None


# LUFFY's data_source names of the sets this study trains on (their rows are the same problems)
_LUFFY_SOURCE_ROWS = ("minerva", "olympiad_bench")


def evaluation_texts() -> dict[str, list[str]]:
    """Problem texts of every vendored evaluation file except the training source's own rows.

    Keyed by file (relative to the benchmark data folder): AIME24 (both copies), AIME25, AMC
    (both the 83-problem set and AMC23), MATH-500, LUFFY's evaluation parquet without its Minerva
    and OlympiadBench rows, and the out-of-distribution ARC-c and GPQA files. The remaining
    vendored files (`minerva_math/*`, `olympiadbench/test.jsonl`) are the training source.
    """
    from prefix_rft.data.readers import iter_file
    from prefix_rft.eval.benchmarks import DATA_DIR

    out: dict[str, list[str]] = {}
    for path in sorted(DATA_DIR.rglob("*")):
        rel = path.relative_to(DATA_DIR).as_posix()
        if path.suffix not in (".json", ".jsonl", ".parquet"):
            continue
        if rel.startswith(("minerva_math/", "olympiadbench/")):
            continue
        texts = []
        for row in iter_file(path):
            if row.fields.get("data_source") in _LUFFY_SOURCE_ROWS:
                continue
            text = _problem_text(row.fields)
            if text is None:
                raise row.error("problem", "a problem text", "is missing")
            texts.append(text)
        out[rel] = texts
    return out


def split_heldout(problems: Iterable[Problem]) -> tuple[list[Problem], list[Problem]]:
    """Rule 5: (train, heldout), each in source order then id order."""
    train, heldout = [], []
    for source in SOURCES:
        mine = sorted((p for p in problems if p.source == source), key=lambda p: p.id)
        order = [p.id for p in mine]
        random.Random(SPLIT_SEED).shuffle(order)
        held = set(order[: round(HELDOUT_FRACTION * len(order))])
        heldout += [p for p in mine if p.id in held]
        train += [p for p in mine if p.id not in held]
    return train, heldout


def build_realmath(grade=_grade) -> tuple[list[Problem], list[Problem], RealMathStats]:
    """(train, heldout, stats): rules 1-5 of the module docstring."""
    stats = RealMathStats()
    evaluated = {realmath_key(t) for texts in evaluation_texts().values() for t in texts}
    seen: set[str] = set()
    kept = []
    for p in candidates(stats, grade):
        key = realmath_key(p.prompt)
        if key in evaluated:
            stats.eval_overlap += 1
        elif key in seen:
            stats.duplicate += 1
        else:
            seen.add(key)
            kept.append(p)
    stats.kept = {s: sum(p.source == s for p in kept) for s in SOURCES}
    train, heldout = split_heldout(kept)
    stats.train, stats.heldout = len(train), len(heldout)
    return train, heldout, stats


@functools.lru_cache(maxsize=1)
def _built() -> tuple[tuple[Problem, ...], tuple[Problem, ...], dict]:
    train, heldout, stats = build_realmath()
    return tuple(train), tuple(heldout), stats.as_dict()


def load_realmath(split: str) -> list[Problem]:
    """The problems of `realmath:train` or `realmath:heldout` (built once per process)."""
    split = split[len(SPEC_PREFIX):] if split.startswith(SPEC_PREFIX) else split
    if split not in SPLITS:
        raise UserError(f"data spec '{SPEC_PREFIX}{split}': unknown part {split!r}; expected "
                        f"{' or '.join(SPEC_PREFIX + s for s in SPLITS)}")
    train, heldout, _ = _built()
    return list(train if split == "train" else heldout)


def realmath_stats() -> dict:
    return dict(_built()[2])


def _cmd_build(out: str) -> int:
    train, heldout, stats = _built()
    d = Path(out)
    save_problems(train, d / "train.jsonl")
    save_problems(heldout, d / "heldout.jsonl")
    (d / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats))
    print(f"wrote {d / 'train.jsonl'} ({len(train)}), {d / 'heldout.jsonl'} ({len(heldout)}), "
          f"{d / 'stats.json'}")
    return 0


def _cmd_lengths(tokenizer: str, limit: int) -> int:
    """Token lengths of every demonstration in `tokenizer`'s tokens; exit 1 if any > limit."""
    from prefix_rft.models import load_tokenizer

    tok = load_tokenizer(tokenizer)
    problems = load_realmath("train") + load_realmath("heldout")
    lengths = sorted(len(tok(p.demonstrations[0], add_special_tokens=False)["input_ids"])
                     for p in problems)
    n = len(lengths)
    over = sum(x > limit for x in lengths)
    print(json.dumps({"demos": n, "median": lengths[n // 2], "p90": lengths[int(0.9 * n)],
                      "max": lengths[-1], f"over_{limit}": over}))
    return 1 if over else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prefix_rft.data.realmath",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write train.jsonl, heldout.jsonl and stats.json to --out")
    b.add_argument("--out", required=True)
    ln = sub.add_parser("lengths", help="demonstration lengths in a tokenizer's tokens")
    ln.add_argument("--tokenizer", required=True, help="model directory or built-in alias")
    ln.add_argument("--limit", type=int, default=1024, help="exit 1 if a demo is longer")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return _cmd_build(args.out)
    return _cmd_lengths(args.tokenizer, args.limit)


if __name__ == "__main__":
    sys.exit(main())
