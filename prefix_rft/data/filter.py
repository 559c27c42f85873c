"""LUFFY's OpenR1-Math-220k -> ~46k filter, deduplication and seeded data fractions.

`filter_openr1` turns raw OpenR1-Math-220k rows into `Problem`s with exactly one DeepSeek-R1
demonstration each, the way LUFFY built Openr1-Math-46k-8192 (45,792 rows from the default
subset): keep the first generation that the dataset marks Math-Verify-correct and that fits
`max_trace_tokens` policy tokens, drop problems whose gold answer cannot be parsed (they would
score every rollout 1 or 0), and keep one copy of each problem.

`data_fraction` draws the paper's 1% / 10% training subsets: one seeded permutation, a prefix of
it, so the 1% subset is inside the 10% one for the same seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prefix_rft.data.problem import Problem
from prefix_rft.errors import UserError


@dataclass
class FilterStats:
    """What `filter_openr1` kept and why it dropped the rest (each row counted once)."""

    input_rows: int = 0
    kept: int = 0
    no_correct_trace: int = 0  # no generation is marked Math-Verify-correct
    too_long: int = 0  # correct generations exist, but all exceed max_trace_tokens
    gold_unparseable: int = 0  # gold_ok(answer) is False
    duplicate: int = 0  # same normalised problem text as a problem already kept
    missing_fields: int = 0  # problem / answer / generations / correctness_math_verify unusable

    @property
    def dropped(self) -> int:
        return self.input_rows - self.kept

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def normalize_problem_text(text: str) -> str:
    """The text duplicates are compared on: whitespace runs collapsed, case folded."""
    return " ".join(text.split()).casefold()


def _text_field(row: dict, key: str) -> str | None:
    value = row.get(key)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    return value


def filter_openr1(
    rows: Iterable[dict],
    *,
    count_tokens: Callable[[str], int],
    gold_ok: Callable[[str], bool],
    max_trace_tokens: int = 8192,
    source: str = "openr1",
) -> tuple[list[Problem], FilterStats]:
    """Filter raw OpenR1-Math-220k rows into one-demonstration `Problem`s (LUFFY's rules).

    count_tokens: the policy tokenizer's length of a trace (e.g. `lambda s: len(tok(s).input_ids)`).
    gold_ok: whether the gold answer parses (e.g. `prefix_rft.rollout.reward.gold_is_parseable`).

    Each row is checked against these rules IN THIS ORDER and, when dropped, counted under the
    first rule it fails only, so the counts add up to `input_rows - kept`:
      1. missing_fields   `problem` or `answer` missing/empty, or `generations` /
                          `correctness_math_verify` not lists of the same length.
      2. gold_unparseable `gold_ok(answer)` is False.
      3. duplicate        the whitespace/case-normalised problem text equals that of a problem
                          already KEPT (first kept occurrence wins; a copy whose earlier twin was
                          dropped for having no usable trace can still be kept).
      4. no_correct_trace no generation has `correctness_math_verify[i] is True` (non-empty text).
      5. too_long         correct generations exist but every one is > max_trace_tokens tokens.
    Kept: the FIRST generation marked correct whose token count is <= max_trace_tokens (later
    correct ones are not tokenized). Ids are the row's `uuid`, else `<source>-<row number>`.
    """
    stats = FilterStats()
    kept: list[Problem] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        stats.input_rows += 1
        problem = _text_field(row, "problem")
        answer = _text_field(row, "answer")
        gens = row.get("generations")
        flags = row.get("correctness_math_verify")
        if (
            problem is None
            or answer is None
            or not isinstance(gens, (list, tuple))
            or not isinstance(flags, (list, tuple))
            or len(gens) != len(flags)
        ):
            stats.missing_fields += 1
            continue
        answer = answer.strip()
        if not gold_ok(answer):
            stats.gold_unparseable += 1
            continue
        key = normalize_problem_text(problem)
        if key in seen:
            stats.duplicate += 1
            continue
        correct = [
            g for g, ok in zip(gens, flags) if ok is True and isinstance(g, str) and g.strip()
        ]
        if not correct:
            stats.no_correct_trace += 1
            continue
        trace = next((g for g in correct if count_tokens(g) <= max_trace_tokens), None)
        if trace is None:
            stats.too_long += 1
            continue
        seen.add(key)
        uuid = row.get("uuid")
        pid = str(uuid).strip() if uuid is not None and str(uuid).strip() else f"{source}-{number}"
        kept.append(Problem(pid, problem.strip(), answer, (trace,), source))
        stats.kept += 1
    return kept, stats


def _classify(row: dict, index: int, *, count_tokens: Callable[[str], int],
              gold_ok: Callable[[str], bool], max_trace_tokens: int, source: str,
              offset: int) -> dict:
    """`filter_openr1`'s per-row work, for `datasets.map`: everything but the duplicate rule (the
    only one that depends on other rows). `drop` is the first of rules 1-2 the row fails, `late`
    the first of rules 4-5 (checked after the duplicate rule), "" when it passes them."""
    out = {"drop": "", "late": "", "key": "", "id": "", "prompt": "", "answer": "", "trace": ""}
    if "_json" in row:
        row = json.loads(row["_json"])
    problem = _text_field(row, "problem")
    answer = _text_field(row, "answer")
    gens = row.get("generations")
    flags = row.get("correctness_math_verify")
    if (problem is None or answer is None or not isinstance(gens, (list, tuple))
            or not isinstance(flags, (list, tuple)) or len(gens) != len(flags)):
        return out | {"drop": "missing_fields"}
    answer = answer.strip()
    if not gold_ok(answer):
        return out | {"drop": "gold_unparseable"}
    out["key"] = normalize_problem_text(problem)
    correct = [g for g, ok in zip(gens, flags) if ok is True and isinstance(g, str) and g.strip()]
    trace = next((g for g in correct if count_tokens(g) <= max_trace_tokens), None)
    if trace is None:
        return out | {"late": "too_long" if correct else "no_correct_trace"}
    uuid = row.get("uuid")
    number = offset + index + 1
    pid = str(uuid).strip() if uuid is not None and str(uuid).strip() else f"{source}-{number}"
    return out | {"id": pid, "prompt": problem.strip(), "answer": answer, "trace": trace}


# Parts with fewer rows are filtered in this process: starting workers costs more than it saves.
MIN_ROWS_PER_WORKER = 1000


def default_num_proc() -> int:
    """Worker processes of the dataset filter: one per CPU, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def filter_openr1_dataset(
    parts: Sequence,
    *,
    count_tokens: Callable[[str], int],
    gold_ok: Callable[[str], bool],
    max_trace_tokens: int = 8192,
    source: str = "openr1",
    num_proc: int | None = None,
    limit: int | None = None,
) -> tuple[list[Problem], FilterStats]:
    """`filter_openr1` over `datasets.Dataset`s (the parts of `prefix_rft.data.loading`, read in
    order as one sequence of rows), with the same rules, counts, ids and kept rows.

    The per-row work (field checks, Math-Verify on the gold answer, tokenizing correct traces)
    runs as `Dataset.map` in `num_proc` processes (default `default_num_proc()`; parts under
    `MIN_ROWS_PER_WORKER` rows run in this process), cached by the datasets cache like any map; only the
    duplicate rule, which needs the rows before, runs here over the small result columns. Unlike
    `filter_openr1` a duplicate row's traces are tokenized too (the rows are independent).
    At most `limit` rows are read."""
    workers = default_num_proc() if num_proc is None else max(1, int(num_proc))
    classify = functools.partial(_classify, count_tokens=count_tokens, gold_ok=gold_ok,
                                 max_trace_tokens=max_trace_tokens, source=source)
    stats, kept, seen, offset = FilterStats(), [], set(), 0
    for ds in parts:
        if limit is not None:
            if offset >= limit:
                break
            if len(ds) > limit - offset:
                ds = ds.select(range(limit - offset))
        procs = workers if workers > 1 and len(ds) >= MIN_ROWS_PER_WORKER else None
        out = ds.map(functools.partial(classify, offset=offset), with_indices=True,
                     remove_columns=ds.column_names, num_proc=procs,
                     desc=f"filtering {len(ds)} OpenR1 rows")
        keep_rows = []
        for i, (drop, late, key) in enumerate(zip(out["drop"], out["late"], out["key"])):
            stats.input_rows += 1
            rule = drop or ("duplicate" if key in seen else late)
            if rule:
                setattr(stats, rule, getattr(stats, rule) + 1)
                continue
            seen.add(key)
            keep_rows.append(i)
        for r in out.select(keep_rows).select_columns(["id", "prompt", "answer", "trace"]):
            kept.append(Problem(r["id"], r["prompt"], r["answer"], (r["trace"],), source))
        stats.kept += len(keep_rows)
        offset += len(ds)
    return kept, stats


def filter_openr1_source(spec: str, tokenizer, *, max_trace_tokens: int,
                         limit: int | None = None,
                         num_proc: int | None = None) -> tuple[list[Problem], FilterStats]:
    """`filter_openr1_dataset` over the raw rows of `spec` (a file, a directory of files, an
    s3:// or other fsspec URL, or a hub dataset; its train split; at most `limit` rows), trace
    lengths counted in `tokenizer`'s tokens and gold answers checked with Math-Verify. What
    `prefix-rft filter-data` and the pipeline's filter_data step both run."""
    from prefix_rft.rollout.reward import gold_is_parseable

    return filter_openr1_dataset(
        openr1_parts(spec), count_tokens=functools.partial(_token_count, tokenizer),
        gold_ok=gold_is_parseable, max_trace_tokens=max_trace_tokens, num_proc=num_proc,
        limit=limit,
    )


def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def openr1_parts(spec: str, *, split: str = "train") -> list:
    """The parts of `spec` as `datasets.Dataset`s the filter can map over. Typed parts (parquet,
    hub) are used as loaded; JSON parts are parsed by the readers (their errors name the file and
    line) and held as one JSON string per row, since rows of one file may differ in shape."""
    from prefix_rft.data.loading import in_memory_dataset, open_parts
    from prefix_rft.data.readers import part_rows

    out = []
    for part in open_parts(spec, split=split):
        ds = part.dataset
        if part.kind != "table":
            ds = in_memory_dataset([{"_json": json.dumps(r.fields)} for r in part_rows(part)])
        elif not hasattr(ds, "map"):
            ds = in_memory_dataset([dict(r) for r in ds])
        if part.file and len(ds) == 0:
            raise UserError(f"{part.where}: file has no rows (expected raw OpenR1 rows)")
        out.append(ds)
    return out


def dedupe_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Drop problems whose normalised text repeats an earlier one (first occurrence wins)."""
    seen: set[str] = set()
    out = []
    for p in problems:
        key = normalize_problem_text(p.prompt)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def data_fraction(problems: Sequence[Problem], fraction: float, seed: int) -> list[Problem]:
    """A seeded random `fraction` of `problems`, in their original order.

    round(fraction * n) problems (at least one when fraction > 0 and n > 0), chosen as a prefix of
    one seeded permutation of the indices: the same seed gives the same subset, and for one seed
    a smaller fraction's subset is contained in a larger one's (1% inside 10% inside 100%).
    """
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 < fraction <= 1
    ):
        raise UserError(
            f"data fraction {fraction!r} (expected a number in (0, 1], e.g. 0.01 or 0.1)"
        )
    problems = list(problems)
    n = len(problems)
    if n == 0 or fraction == 1:
        return problems
    k = min(n, max(1, round(fraction * n)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [problems[i] for i in sorted(order[:k])]
