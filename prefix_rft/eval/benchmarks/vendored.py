"""Source ``"default"``: one vendored file per math benchmark, each in its publisher's layout.

Each benchmark has a row parser (`ROW_PARSERS`) from its file's fields to a `BenchmarkProblem`,
applying that file's answer repairs (`answers`). The file itself is read by
`prefix_rft.data.readers.iter_file`, so a replacement file given as ``path=`` may be ``.json``,
``.jsonl`` or ``.parquet`` as long as its rows carry the same fields.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefix_rft.data.readers import RawRow, iter_file
from prefix_rft.eval.benchmarks.answers import (
    CONTROL_TO_LATEX,
    integer_answers,
    same_up_to_spaces,
    with_latex_forms,
)
from prefix_rft.eval.benchmarks.fields import field
from prefix_rft.eval.benchmarks.registry import BenchmarkProblem
from prefix_rft.rollout.reward import extract_final_boxed

# A row parser gets the row and its 0-based position among the file's rows (some ids are it).
RowParser = Callable[[RawRow, int], BenchmarkProblem]


def load_default(name: str, file: Path) -> list[BenchmarkProblem]:
    """Every row of ``file`` parsed with ``name``'s row parser, in file order."""
    parse_row = ROW_PARSERS[name]
    return [parse_row(row, position) for position, row in enumerate(iter_file(file))]


def _aime24(row: RawRow, position: int) -> BenchmarkProblem:
    year = field(row, "year", (str, int))
    exam = field(row, "aime_number", (str, int))
    number = int(field(row, "problem_number", (str, int)))
    roman = {"1": "I", "2": "II"}.get(str(exam), str(exam))
    return BenchmarkProblem(
        "aime24",
        f"{year}-{roman}-{number or 15}",  # the file numbers each exam's problems 1..14, 0
        field(row, "problem"),
        integer_answers(str(field(row, "answer", (str, int)))),
    )


def _aime25(row: RawRow, position: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        "aime25",
        str(position),
        field(row, "prompt").translate(CONTROL_TO_LATEX),
        integer_answers(str(field(row, "answer", (str, int)))),
    )


def _amc(row: RawRow, position: int) -> BenchmarkProblem:
    answer = field(row, "answer", (int, float, str))
    if isinstance(answer, str):
        try:
            answer = float(answer)
        except ValueError:
            raise row.error("answer", "a number", f"is {answer!r}") from None
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    url = row.fields.get("url") or ""
    parts = url.rstrip("/").split("/")[-2:]
    if len(parts) == 2 and parts[0].endswith("_Problems") and parts[1].startswith("Problem_"):
        pid = parts[0].removesuffix("_Problems") + "/" + parts[1].removeprefix("Problem_")
    else:
        pid = str(position)
    return BenchmarkProblem("amc", pid, field(row, "problem"), (str(answer),))


def _math500(row: RawRow, position: int) -> BenchmarkProblem:
    return BenchmarkProblem(
        "math500", field(row, "unique_id"), field(row, "problem"), (field(row, "answer").strip(),)
    )


def _answer_strings(row: RawRow, name: str) -> list[str]:
    """A field holding one answer string or a list of them: the non-blank strings, stripped."""
    raw = field(row, name, (list, str))
    raw = [raw] if isinstance(raw, str) else raw
    return [a.strip() for a in raw if isinstance(a, str) and a.strip()]


def _minerva(row: RawRow, position: int) -> BenchmarkProblem:
    problem = field(row, "problem")
    listed = _answer_strings(row, "answer")
    solution = row.fields.get("solution")
    boxed = extract_final_boxed(solution) if isinstance(solution, str) else None
    boxed = boxed.strip() if boxed and boxed.strip() else None
    if boxed is None:
        answers = listed
    elif (extract_final_boxed(problem) or "").strip():
        # a worked earlier subproblem in the problem text: the list may hold its answer
        answers = [boxed] + [a for a in listed if same_up_to_spaces(a, boxed)]
    else:
        answers = [boxed] + listed
    if not answers:
        raise row.error(
            "answer", "a non-empty list of answer strings (or a \\boxed{} in 'solution')",
            "has no answer",
        )
    return BenchmarkProblem(
        "minerva", str(field(row, "idx", (int, str))), problem, with_latex_forms(answers)
    )


def _olympiadbench(row: RawRow, position: int) -> BenchmarkProblem:
    answers = tuple(_answer_strings(row, "final_answer"))
    if not answers:
        raise row.error("final_answer", "a non-empty list of answer strings", "has no answer")
    return BenchmarkProblem(
        "olympiadbench", str(field(row, "id", (int, str))), field(row, "question"), answers
    )


ROW_PARSERS: dict[str, RowParser] = {
    "aime24": _aime24,
    "aime25": _aime25,
    "amc": _amc,
    "math500": _math500,
    "minerva": _minerva,
    "olympiadbench": _olympiadbench,
}
