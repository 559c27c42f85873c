"""Benchmark loading: the six math evaluation sets of ALGORITHM.md section 7, as plain problems.

This package owns benchmark data: the vendored files under ``data/`` (sources, row counts,
licences and sha256 in ``data/PROVENANCE.md``) and turning each file into `BenchmarkProblem`s
with every acceptable gold answer, with the known defects of the public copies repaired
(``shared/benchmarks/README.md``). A later issue extends it into a full registry (LUFFY parquet
views, avg@k protocols, out-of-distribution sets); the names here stay.

Repairs, per benchmark:

* ``aime24`` (``aime24/aime.json``, the copy whose text matches LUFFY's): answers with leading
  zeros (``023``) get the integer form first and keep the original as a second answer.
  ``problem_number`` 0 in that file is problem 15 (the file numbers 1..14, 0).
* ``aime25`` (``aime25/test.json``): JSON-escape corruption restored in the problem text: form
  feed -> ``\\f`` (``\\frac``), TAB -> ``\\t`` (``\\triangle``), and likewise backspace ->
  ``\\b`` and carriage return -> ``\\r`` should they occur. Ids are the 0-based row numbers.
* ``amc`` (``amc/amc.json``, the 83 problems of AMC 12 2022+2023): float answers (``142.0``)
  become integer strings (``142``). Ids come from the AoPS url (``2022_AMC_12A/1``).
* ``math500`` (``math500/test.jsonl``): as is; ids are ``unique_id``. Its two literal TABs are
  genuine (asy code, from upstream MATH) and are kept.
* ``minerva`` (``minerva_math/minerva.json``, which has extracted answers): every listed variant
  is an acceptable answer, stripped of its trailing newline, duplicates dropped.
* ``olympiadbench`` (``olympiadbench/test.jsonl``): ``question`` / ``final_answer`` (a list);
  answers are kept as written, also for ``is_multiple_answer`` rows (``$69$,$84$``: the grader
  compares the whole set), and units are not appended.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefix_rft.errors import UserError

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class BenchmarkProblem:
    """One benchmark problem with every acceptable gold answer (graded: correct if any matches)."""

    benchmark: str
    id: str
    problem: str
    answers: tuple[str, ...]


BENCHMARKS = ("aime24", "aime25", "amc", "math500", "minerva", "olympiadbench")

# benchmark -> the vendored file it is loaded from (relative to DATA_DIR)
_DEFAULT_FILES = {
    "aime24": "aime24/aime.json",
    "aime25": "aime25/test.json",
    "amc": "amc/amc.json",
    "math500": "math500/test.jsonl",
    "minerva": "minerva_math/minerva.json",
    "olympiadbench": "olympiadbench/test.jsonl",
}

# JSON escapes that ate the backslash of a LaTeX command (\frac, \triangle, \binom, \right)
_CONTROL_TO_LATEX = str.maketrans({"\x0c": "\\f", "\t": "\\t", "\x08": "\\b", "\r": "\\r"})


def default_path(name: str) -> Path:
    """The vendored file a benchmark is loaded from."""
    _check_name(name)
    return DATA_DIR / _DEFAULT_FILES[name]


def load_benchmark(name: str, path: str | Path | None = None) -> list[BenchmarkProblem]:
    """Load benchmark ``name`` (one of `BENCHMARKS`) from ``path``, by default the vendored file.

    A file given as ``path`` must have the same format as the vendored one (a JSON array for
    ``.json``, one JSON object per line otherwise). Raises `UserError` for an unknown name, a file
    that cannot be read or parsed, or a row without a field the benchmark needs.
    """
    _check_name(name)
    file = Path(path) if path is not None else default_path(name)
    rows = _read_rows(file)
    parse_row = _ROW_PARSERS[name]
    problems = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{file}: row {i} is {type(row).__name__}, expected a JSON object")
        problems.append(parse_row(_Row(file, i, row)))
    if not problems:
        raise UserError(f"{file}: no rows; expected the {name} benchmark")
    return problems


def _check_name(name: str) -> None:
    if name not in _DEFAULT_FILES:
        raise UserError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")


def _read_rows(file: Path) -> list:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read benchmark file ({e})") from e
    if file.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{file}: not valid JSON ({e}); expected a JSON array") from e
        if not isinstance(rows, list):
            raise UserError(f"{file}: top level is {type(rows).__name__}, expected a JSON array")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{file}: line {lineno} is not valid JSON ({e})") from e
    return rows


class _Row:
    """A raw row plus where it came from, for error messages."""

    def __init__(self, file: Path, index: int, data: dict):
        self.file, self.index, self.data = file, index, data

    def get(self, field: str, types: type | tuple[type, ...] = str):
        if field not in self.data or self.data[field] is None:
            raise UserError(f"{self.file}: row {self.index}: missing field {field!r}")
        value = self.data[field]
        if not isinstance(value, types):
            raise UserError(
                f"{self.file}: row {self.index}: field {field!r} is {type(value).__name__}, "
                f"expected {_type_names(types)}"
            )
        if isinstance(value, str) and not value.strip():
            raise UserError(f"{self.file}: row {self.index}: field {field!r} is empty")
        return value

    def fail(self, field: str, expected: str):
        raise UserError(f"{self.file}: row {self.index}: field {field!r}: expected {expected}")


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _integer_answers(answer: str) -> tuple[str, ...]:
    """``"023"`` -> ``("23", "023")``; ``"204"`` -> ``("204",)``."""
    a = answer.strip()
    if a.isdigit() and a != str(int(a)):
        return (str(int(a)), a)
    return (a,)


def _aime24(row: _Row) -> BenchmarkProblem:
    year = row.get("year", (str, int))
    exam = row.get("aime_number", (str, int))
    number = int(row.get("problem_number", (str, int)))
    roman = {"1": "I", "2": "II"}.get(str(exam), str(exam))
    return BenchmarkProblem(
        "aime24",
        f"{year}-{roman}-{number or 15}",  # the file numbers each exam's problems 1..14, 0
        row.get("problem"),
        _integer_answers(str(row.get("answer", (str, int)))),
    )


def _aime25(row: _Row) -> BenchmarkProblem:
    return BenchmarkProblem(
        "aime25",
        str(row.index),
        row.get("prompt").translate(_CONTROL_TO_LATEX),
        _integer_answers(str(row.get("answer", (str, int)))),
    )


def _amc(row: _Row) -> BenchmarkProblem:
    answer = row.get("answer", (int, float, str))
    if isinstance(answer, str):
        try:
            answer = float(answer)
        except ValueError:
            row.fail("answer", f"a number, got {answer!r}")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    url = row.data.get("url") or ""
    parts = url.rstrip("/").split("/")[-2:]
    if len(parts) == 2 and parts[0].endswith("_Problems") and parts[1].startswith("Problem_"):
        pid = parts[0].removesuffix("_Problems") + "/" + parts[1].removeprefix("Problem_")
    else:
        pid = str(row.index)
    return BenchmarkProblem("amc", pid, row.get("problem"), (str(answer),))


def _math500(row: _Row) -> BenchmarkProblem:
    return BenchmarkProblem(
        "math500", row.get("unique_id"), row.get("problem"), (row.get("answer").strip(),)
    )


def _minerva(row: _Row) -> BenchmarkProblem:
    raw = row.get("answer", (list, str))
    raw = [raw] if isinstance(raw, str) else raw
    answers = tuple(dict.fromkeys(a.strip() for a in raw if isinstance(a, str) and a.strip()))
    if not answers:
        row.fail("answer", "a non-empty list of answer strings")
    return BenchmarkProblem("minerva", str(row.get("idx", (int, str))), row.get("problem"), answers)


def _olympiadbench(row: _Row) -> BenchmarkProblem:
    raw = row.get("final_answer", (list, str))
    raw = [raw] if isinstance(raw, str) else raw
    answers = tuple(a.strip() for a in raw if isinstance(a, str) and a.strip())
    if not answers:
        row.fail("final_answer", "a non-empty list of answer strings")
    return BenchmarkProblem(
        "olympiadbench", str(row.get("id", (int, str))), row.get("question"), answers
    )


_ROW_PARSERS: dict[str, Callable[[_Row], BenchmarkProblem]] = {
    "aime24": _aime24,
    "aime25": _aime25,
    "amc": _amc,
    "math500": _math500,
    "minerva": _minerva,
    "olympiadbench": _olympiadbench,
}
