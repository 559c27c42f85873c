"""Source ``"luffy"`` (and the OOD sets): the rows of LUFFY's evaluation parquet files.

One parquet holds several benchmarks, told apart by ``data_source`` (`LUFFY_DATA_SOURCES`);
LUFFY repeats some problems (AIME 32 times, for avg@32), and each copy is kept, its id made
unique as ``<index>#<copy>``. The ground truth always stays a gold; for some benchmarks its
repaired spellings are added (`_ANSWERS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prefix_rft.data.readers import RawRow, iter_file
from prefix_rft.errors import UserError
from prefix_rft.eval.benchmarks.answers import integer_answers, with_latex_forms
from prefix_rft.eval.benchmarks.fields import checked, field, nested
from prefix_rft.eval.benchmarks.registry import LUFFY_DATA_SOURCES, BenchmarkProblem

COLUMNS = ("data_source", "prompt", "reward_model", "extra_info")

# how LUFFY's ground truth becomes our answers (the ground truth itself always stays one)
_ANSWERS: dict[str, Callable[[str], tuple[str, ...]]] = {
    "aime24": integer_answers,
    "aime25": integer_answers,
    "amc": integer_answers,
    "minerva": lambda gold: with_latex_forms([gold]),
}


def load_luffy(name: str, file: Path) -> list[BenchmarkProblem]:
    """The rows of ``file`` whose ``data_source`` is ``name``'s, in file order."""
    data_source = LUFFY_DATA_SOURCES[name]
    rows = _rows_in_luffy_layout(file)
    selected = [row for row in rows if row.fields.get("data_source") == data_source]
    if not selected:
        found = ", ".join(sorted({str(r.fields.get("data_source")) for r in rows})) or "no rows"
        raise UserError(
            f"{file}: no rows with data_source {data_source!r} for benchmark {name!r} "
            f"(found: {found})"
        )
    indices = [str(nested(row, "extra_info", "index", (int, str))) for row in selected]
    copies = Counter(indices)
    seen: Counter = Counter()
    answers_of = _ANSWERS.get(name, lambda gold: (gold,))
    problems = []
    for row, index in zip(selected, indices):
        gold = nested(row, "reward_model", "ground_truth", str).strip()
        pid = index if copies[index] == 1 else f"{index}#{seen[index]}"
        seen[index] += 1
        problems.append(BenchmarkProblem(name, pid, _user_text(row), answers_of(gold)))
    return problems


def _rows_in_luffy_layout(file: Path) -> list[RawRow]:
    """Every row of ``file`` (any data file the readers take), checked for LUFFY's columns."""
    rows = list(iter_file(file))
    missing = [c for c in COLUMNS if c not in rows[0].fields]
    if missing:
        raise UserError(
            f"{file}: missing column(s) {', '.join(missing)} (expected LUFFY's layout: "
            f"{', '.join(COLUMNS)})"
        )
    return rows


def _user_text(row: RawRow) -> str:
    """The problem: the prompt string, or the last user message of a chat prompt."""
    messages = field(row, "prompt", (list, str))
    if isinstance(messages, str):
        return messages
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return checked(row, "prompt.content", msg.get("content") or "", str)
    raise row.error(
        "prompt", "a chat list of {role, content} messages with a user message",
        "has no user message",
    )
