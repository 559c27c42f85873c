"""Benchmark registry: the evaluation sets, read as plain problems with every acceptable answer.

`load_benchmark(name, source=...)` returns `BenchmarkProblem`s for:

* `BENCHMARKS`, the six math sets (``aime24``, ``aime25``, ``amc``, ``math500``, ``minerva``,
  ``olympiadbench``), and `OOD_BENCHMARKS`, LUFFY's multiple-choice ``arc_c`` and
  ``gpqa_diamond``: the vendored files under ``data/``. ``source="default"`` reads the
  per-benchmark files, ``source="luffy"`` the rows of LUFFY's evaluation parquet (its avg@32
  repeats included, `LUFFY_DATA_SOURCES`).
* ``synthetic:LEVEL`` (``add``, ``mul``, ``word``, ``tiny``; filed as ``synthetic_add`` etc.,
  `benchmark_label`): the built-in task's whole ``test`` split of that level
  (`prefix_rft.data.synthetic`, never trained on), in a fixed order (`SYNTHETIC_ORDER_SEED`,
  independent of the run's seed, so every run sees the same first K problems).
* a problems file of your own (a name that is not known and looks like a path: it has a ``/``,
  a data suffix, or exists): read with `prefix_rft.data.readers.read_problems`; the benchmark
  is the file stem, ids are the file's own or ``<stem>-<row>``, the one gold is the only answer.

``data/PROVENANCE.md`` records each vendored file's source, licence and sha256, which file each
name and source reads, and the known defects of the public copies with the repair this module
applies to each (leading zeros, float answers, JSON-escape damage, Minerva's answer lists and
the forms Math-Verify misreads). ``tests/test_benchmark_grader_check.py`` grades every gold with
the real grader; the exceptions it allows are listed in ``tests/data/grader_exceptions.yaml``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefix_rft.errors import UserError
from prefix_rft.rollout.reward import extract_final_boxed

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class BenchmarkProblem:
    """One benchmark problem with every acceptable gold answer (graded: correct if any matches)."""

    benchmark: str
    id: str
    problem: str
    answers: tuple[str, ...]


BENCHMARKS = ("aime24", "aime25", "amc", "math500", "minerva", "olympiadbench")
OOD_BENCHMARKS = ("arc_c", "gpqa_diamond")
ALL_BENCHMARKS = BENCHMARKS + OOD_BENCHMARKS
SOURCES = ("default", "luffy")

# benchmark -> the vendored file it is loaded from (relative to DATA_DIR), source "default"
_DEFAULT_FILES = {
    "aime24": "aime24/aime.json",
    "aime25": "aime25/test.json",
    "amc": "amc/amc.json",
    "math500": "math500/test.jsonl",
    "minerva": "minerva_math/minerva.json",
    "olympiadbench": "olympiadbench/test.jsonl",
}

LUFFY_FILE = "luffy/valid.all.parquet"
# benchmark -> (LUFFY file relative to DATA_DIR, its data_source value)
_LUFFY_FILES = {
    "aime24": (LUFFY_FILE, "aime"),
    "aime25": (LUFFY_FILE, "aime25"),
    "amc": (LUFFY_FILE, "amc"),
    "math500": (LUFFY_FILE, "math"),
    "minerva": (LUFFY_FILE, "minerva"),
    "olympiadbench": (LUFFY_FILE, "olympiad_bench"),
    "arc_c": ("luffy/valid.arc_c.parquet", "arc_c"),
    "gpqa_diamond": ("luffy/valid.gpqa.parquet", "gpqa"),
}
#: our benchmark name -> LUFFY's ``data_source`` name
LUFFY_DATA_SOURCES = {name: ds for name, (_, ds) in _LUFFY_FILES.items()}

_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")

# JSON escapes that ate the backslash of a LaTeX command (\frac, \triangle, \binom, \right)
_CONTROL_TO_LATEX = str.maketrans({"\x0c": "\\f", "\t": "\\t", "\x08": "\\b", "\r": "\\r"})


SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_ORDER_SEED = 0  # the fixed order of a synthetic level's test split (any run, any seed)


def is_synthetic(spec) -> bool:
    """Whether ``spec`` names a synthetic level's held-out split (``synthetic:add``)."""
    return isinstance(spec, str) and spec.startswith(SYNTHETIC_PREFIX)


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


def benchmark_label(name: str | Path) -> str:
    """The name a benchmark's results are filed under: a known name itself, a problems file's
    stem (``data/mine.jsonl`` -> ``mine``), a hub dataset's name (``hub:org/MATH-500`` ->
    ``MATH-500``), a synthetic level's split (``synthetic:add`` -> ``synthetic_add``; MLflow
    metric names cannot hold a colon)."""
    s = str(name)
    if is_synthetic(s):
        return "synthetic_" + s[len(SYNTHETIC_PREFIX):].strip()
    if s.startswith("hub:"):
        return s[len("hub:"):].split(":")[0].split("/")[-1]
    return s if s in ALL_BENCHMARKS else Path(s).stem


def default_path(name: str, source: str = "default") -> Path:
    """The vendored file a benchmark is loaded from (for ``source``)."""
    _check_name(name)
    _check_source(source)
    if source == "luffy" or name in OOD_BENCHMARKS:
        return DATA_DIR / _LUFFY_FILES[name][0]
    return DATA_DIR / _DEFAULT_FILES[name]


def load_benchmark(
    name: str | Path, path: str | Path | None = None, *, source: str = "default"
) -> list[BenchmarkProblem]:
    """Load a benchmark: one of `ALL_BENCHMARKS`, or a problems file of your own.

    ``name`` a known benchmark: read from ``path`` if given, else from the vendored file of
    ``source`` (``"default"`` or ``"luffy"``; ``data/PROVENANCE.md`` says what each reads). A
    ``path`` must have the format of the file it replaces (a JSON array for ``.json``, JSON lines
    otherwise, LUFFY's parquet layout for the ``"luffy"`` source and the OOD sets).

    ``name`` ``hub:owner/name[:config]``: a hub dataset's test split with problem/answer fields
    (needs network and the ``hub`` extra).

    ``name`` ``synthetic:LEVEL``: that level's whole held-out (``test``) split of the built-in
    arithmetic task, in a fixed order (see the module docstring).

    ``name`` a path (not a known name, and it has a ``/``, a ``.jsonl``/``.json``/``.parquet``
    suffix, or exists): a problems file read with `prefix_rft.data.readers.read_problems`.
    ``source`` applies to named benchmarks only (so one list of names and files can share it).

    Raises `UserError` for an unknown name or source, a file that cannot be read or parsed, or a
    row without a field the benchmark needs (the message names the file and the row).
    """
    _check_source(source)
    if is_synthetic(name):
        return _load_synthetic(name)
    if isinstance(name, str) and name.startswith("hub:"):
        # a hub dataset with problem/answer fields, e.g. hub:HuggingFaceH4/MATH-500 (online only)
        from prefix_rft.data.readers import read_problems

        label = benchmark_label(name)
        return [BenchmarkProblem(label, p.id, p.prompt, (p.answer,))
                for p in read_problems(name, split="test", require_demos=False)]
    if isinstance(name, str) and name in ALL_BENCHMARKS:
        if source == "luffy" or name in OOD_BENCHMARKS:
            return _load_luffy(name, path)
        return _load_default(name, path)
    if _looks_like_path(name):
        if path is not None:
            raise UserError(
                f"load_benchmark({str(name)!r}, path={str(path)!r}): give a benchmark name with "
                f"path=, or a problems file as the name, not both"
            )
        return _load_problems_file(Path(name))  # read as it is, whatever the source
    raise _unknown_name(name)


def _unknown_name(name) -> UserError:
    return UserError(
        f"unknown benchmark {name!r}; expected one of {', '.join(ALL_BENCHMARKS)}, "
        f"synthetic:LEVEL, or the path of a .jsonl/.json/.parquet problems file"
    )


def _load_synthetic(spec: str) -> list[BenchmarkProblem]:
    from prefix_rft.data.synthetic import pool_size, synthetic_arithmetic

    level = synthetic_level(spec)
    label = benchmark_label(spec)
    problems = synthetic_arithmetic(pool_size(level, "test"), seed=SYNTHETIC_ORDER_SEED,
                                    levels=(level,), split="test")
    return [BenchmarkProblem(label, p.id, p.prompt, (p.answer,)) for p in problems]


def _check_name(name: str) -> None:
    if name not in ALL_BENCHMARKS:
        raise _unknown_name(name)


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise UserError(
            f"unknown benchmark source {source!r}; expected one of {', '.join(SOURCES)}"
        )


def _looks_like_path(name: str | Path) -> bool:
    if isinstance(name, Path):
        return True
    if not isinstance(name, str) or not name.strip():
        return False
    return (
        "/" in name or "\\" in name or name.lower().endswith(_DATA_SUFFIXES) or Path(name).exists()
    )


# ---------------------------------------------------------------------------------------------
# Source "default": one vendored file per benchmark


def _load_default(name: str, path: str | Path | None) -> list[BenchmarkProblem]:
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

    def get(self, field: str, types: type | tuple[type, ...] = str, value=None):
        """``data[field]`` checked against ``types`` (or ``value``, a nested field's value, named
        ``field`` in messages)."""
        if value is None:
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
    """``"023"`` -> ``("23", "023")``; ``"204"`` -> ``("204",)``; LUFFY's float strings and
    degrees: ``"142.0"`` -> ``("142", "142.0")``, ``"336^\\circ"`` -> ``("336", "336^\\circ")``."""
    a = answer.strip()
    m = re.fullmatch(r"([+-]?\d+)(?:\.0*)?(?:\s*\^\s*\{?\s*\\circ\s*\}?)?", a)
    if m and str(int(m.group(1))) != a:
        return (str(int(m.group(1))), a)
    return (a,)


_E_NOTATION = re.compile(r"([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d+)")
_NUMPY_CALL = re.compile(r"\bnp\.([A-Za-z]+)\(")
_BARE_DECIMAL_POINT = re.compile(r"(\d)\.(?!\d)")


def _latex_form(answer: str) -> str | None:
    """A LaTeX spelling of an answer Math-Verify misreads, or None if it reads it as meant."""
    m = _E_NOTATION.fullmatch(answer)
    if m:
        return f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}"
    fixed = _NUMPY_CALL.sub(r"\\\1(", answer)
    if "\\" not in answer and "$" not in answer:
        fixed = _BARE_DECIMAL_POINT.sub(r"\1", fixed)
    return fixed if fixed != answer else None


def _with_latex_forms(answers) -> tuple[str, ...]:
    """Each answer preceded by its `_latex_form` (if any); duplicates dropped, order kept."""
    out: list[str] = []
    for a in answers:
        fixed = _latex_form(a)
        if fixed is not None:
            out.append(fixed)
        out.append(a)
    return tuple(dict.fromkeys(out))


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


def _ws(text: str) -> str:
    return " ".join(text.split())


def _minerva(row: _Row) -> BenchmarkProblem:
    problem = row.get("problem")
    raw = row.get("answer", (list, str))
    raw = [raw] if isinstance(raw, str) else raw
    listed = [a.strip() for a in raw if isinstance(a, str) and a.strip()]
    solution = row.data.get("solution")
    boxed = extract_final_boxed(solution) if isinstance(solution, str) else None
    boxed = boxed.strip() if boxed and boxed.strip() else None
    if boxed is None:
        answers = listed
    elif (extract_final_boxed(problem) or "").strip():
        # a worked earlier subproblem in the problem text: the list may hold its answer
        answers = [boxed] + [a for a in listed if _ws(a) == _ws(boxed)]
    else:
        answers = [boxed] + listed
    if not answers:
        row.fail("answer", "a non-empty list of answer strings (or a \\boxed{} in 'solution')")
    return BenchmarkProblem(
        "minerva", str(row.get("idx", (int, str))), problem, _with_latex_forms(answers)
    )


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


# ---------------------------------------------------------------------------------------------
# Source "luffy" (and the OOD sets): LUFFY's parquet layout

_LUFFY_COLUMNS = ("data_source", "prompt", "reward_model", "extra_info")

# how LUFFY's ground truth becomes our answers (the ground truth itself always stays one)
_LUFFY_ANSWERS: dict[str, Callable[[str], tuple[str, ...]]] = {
    "aime24": _integer_answers,
    "aime25": _integer_answers,
    "amc": _integer_answers,
    "minerva": lambda gold: _with_latex_forms([gold]),
}


def _read_parquet_rows(file: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as e:  # OSError, ArrowInvalid, ...
        raise UserError(f"{file}: cannot read as Parquet ({' '.join(str(e).split())})") from e
    missing = [c for c in _LUFFY_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(
            f"{file}: missing column(s) {', '.join(missing)} (expected LUFFY's layout: "
            f"{', '.join(_LUFFY_COLUMNS)})"
        )
    return table.select(list(_LUFFY_COLUMNS)).to_pylist()


def _user_text(row: _Row) -> str:
    messages = row.get("prompt", (list, str))
    if isinstance(messages, str):
        return messages
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return row.get("prompt.content", str, msg.get("content") or "")
    row.fail("prompt", "a chat list of {role, content} messages with a user message")


def _nested(row: _Row, field: str, key: str, types):
    outer = row.get(field, dict)
    name = f"{field}.{key}"
    if outer.get(key) is None:
        raise UserError(f"{row.file}: row {row.index}: missing field {name!r}")
    return row.get(name, types, outer[key])


def _load_luffy(name: str, path: str | Path | None) -> list[BenchmarkProblem]:
    file = Path(path) if path is not None else DATA_DIR / _LUFFY_FILES[name][0]
    data_source = LUFFY_DATA_SOURCES[name]
    rows = [(i, r) for i, r in enumerate(_read_parquet_rows(file))]
    selected = [_Row(file, i, r) for i, r in rows if r.get("data_source") == data_source]
    if not selected:
        found = ", ".join(sorted({str(r.get("data_source")) for _, r in rows})) or "no rows"
        raise UserError(
            f"{file}: no rows with data_source {data_source!r} for benchmark {name!r} "
            f"(found: {found})"
        )
    indices = [str(_nested(row, "extra_info", "index", (int, str))) for row in selected]
    copies = Counter(indices)
    seen: Counter = Counter()
    answers_of = _LUFFY_ANSWERS.get(name, lambda gold: (gold,))
    problems = []
    for row, index in zip(selected, indices):
        gold = _nested(row, "reward_model", "ground_truth", str).strip()
        pid = index if copies[index] == 1 else f"{index}#{seen[index]}"
        seen[index] += 1
        problems.append(BenchmarkProblem(name, pid, _user_text(row), answers_of(gold)))
    return problems


# ---------------------------------------------------------------------------------------------
# A problems file of the user's own


def _load_problems_file(file: Path) -> list[BenchmarkProblem]:
    from prefix_rft.data.readers import read_problems

    problems = read_problems(file, split="test", require_demos=False)
    if not problems:
        raise UserError(f"{file}: no problems")
    name = benchmark_label(file)
    return [BenchmarkProblem(name, p.id, p.prompt, (p.answer,)) for p in problems]
