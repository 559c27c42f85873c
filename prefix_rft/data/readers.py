"""Read training/evaluation problems from local files or the hub into `Problem` records.

`read_problems(spec)` accepts
  * a local file: `.jsonl` (one JSON object per line), `.json` (a JSON array of objects; a `.json`
    file holding JSON lines is read too) or `.parquet`;
  * a directory of such files (not recursive, read in name order). When some file names start with
    a split name (`train.parquet`, `test-00000-of-00002.parquet`, `validation.jsonl`) only the
    files of the requested `split` are read; otherwise every data file is;
  * the same behind an fsspec URL: `s3://bucket/train.parquet`, `s3://bucket/data/` (a prefix
    read like a directory), `gs://...` when that backend is installed;
  * a hub dataset written `hub:owner/name[:config]`.
All of them load through `datasets.load_dataset` and its cache (`prefix_rft.data.loading`); the
parsing, schema checks and errors below are this module's, the same for every source.
`iter_file` is the direct reader of one local file that the benchmark registry uses for the
files it ships (no datasets cache copy of package data).

Row schemas (auto-detected from the first row of each file, or forced with `schema=`):
  openr1    raw OpenR1-Math-220k: `problem`, `answer`, `uuid`, `generations` (DeepSeek-R1 traces),
            `correctness_math_verify` (one bool per generation). The demonstrations are the
            generations marked Math-Verify-correct, in order (no length filter: for LUFFY's filter
            use `prefix_rft.data.filter_openr1`).
  luffy     LUFFY's Openr1-Math-46k-8192: `prompt` (chat list; the last user message, without its
            trailing "Please reason step by step..." instruction), `target` (the R1 trace: a
            string, or a list of {role, content} or of strings), `reward_model.ground_truth`,
            `data_source`, `extra_info.index`. A `demos` list (Prefix-RFT's processed files) is
            used instead of `target` when present.
  messages  `messages` [user, assistant] plus `ground_truth_answer_from_column` (a `\\boxed{X}`,
            unwrapped) or `answer`.
  plain     `problem` (or `question`, or a string `prompt`), `answer` (or `final_answer`),
            `demonstrations` / `solutions` / `solution` (a string or a list of strings).
  problems  our own save format (`prefix_rft.data.save_problems`).

Ids are the dataset's own (`uuid`, else `extra_info.index`, else `id`), else `<file stem>-<row>`.
Ids returned by one call are unique: a repeated id (e.g. LUFFY's eval sets repeat AIME 32 times)
gets `@<file stem>-<row>` appended.

Every user-caused problem raises `UserError` with one line naming the file, the 1-based row (the
line number for .jsonl) and the field, and saying what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prefix_rft.data.loading import DATA_SUFFIXES, HUB_PREFIX, Part, open_parts
from prefix_rft.data.problem import Problem
from prefix_rft.errors import UserError

__all__ = ["DATA_SUFFIXES", "HUB_PREFIX", "SCHEMAS", "RawRow", "detect_schema", "iter_file",
           "iter_rows", "load_problems", "part_rows", "read_problems", "strip_instruction",
           "unwrap_boxed"]

SCHEMAS = ("openr1", "luffy", "messages", "plain", "problems")

# The instruction suffixes LUFFY / Prefix-RFT / Qwen-Math append to the user turn. The project
# applies its own instruction at prompt-building time, so the stored prompt is the bare problem.
_INSTRUCTION_SUFFIX = re.compile(
    r"\s*(?:"
    r"Please reason step by step,?\s*and put your final answer within\s*\\boxed\{\}\.?"
    r"|Let's think step by step and output the final answer within\s*\\boxed\{\}\.?"
    r")\s*$"
)


@dataclass(frozen=True)
class RawRow:
    """One row of a data source, before it is parsed into a `Problem`."""

    where: str  # the file (path or URL) as given, or `hub:owner/name [split]`
    number: int  # 1-based row number as in the file (the line number for .jsonl)
    stem: str  # the file stem (or hub dataset name), for fallback ids `<stem>-<number>`
    fields: dict

    def error(self, field: str, expected: str, problem: str = "is missing or empty") -> UserError:
        return UserError(
            f"{self.where} row {self.number}: field '{field}' {problem} (expected {expected})"
        )


# ---------------------------------------------------------------------------------------------
# Public API


def read_problems(
    spec: str | Path,
    *,
    schema: str = "auto",
    split: str = "train",
    require_demos: bool = True,
    limit: int | None = None,
) -> list[Problem]:
    """Read problems from a file, a directory of files (local or a URL) or `hub:owner/name`.

    schema: "auto" (detect from each file's first row) or one of `SCHEMAS`.
    split: the hub split, or which split's files to read from a directory (see the module doc).
    require_demos: raise `UserError` for a row without a demonstration (training data); pass
        False for prompt-only data (evaluation sets, RL-only training).
    limit: stop after this many problems.
    """
    if schema != "auto" and schema not in SCHEMAS:
        raise UserError(
            f"{spec}: unknown schema '{schema}' (expected one of auto, {', '.join(SCHEMAS)})"
        )
    if limit is not None and limit < 0:
        raise UserError(
            f"{spec}: limit={limit} (expected a non-negative number of problems or None)"
        )
    problems: list[Problem] = []
    seen_ids: set[str] = set()
    parse: Callable[[RawRow, bool], Problem] | None = None
    current_where = None
    rows = iter_rows(spec, split=split)
    for row in rows:
        if limit is not None and len(problems) >= limit:
            break
        if row.where != current_where:  # detect per file: a directory may mix schemas
            current_where = row.where
            name = schema if schema != "auto" else _detect_or_raise(row)
            parse = _PARSERS[name]
        problem = parse(row, require_demos)
        problem = dataclasses.replace(problem, origin=f"{row.where} row {row.number}")
        if problem.id in seen_ids:
            problem = _with_id(problem, f"{problem.id}@{row.stem}-{row.number}")
        seen_ids.add(problem.id)
        problems.append(problem)
    rows.close()
    return problems


def load_problems(path: str | Path, *, require_demos: bool = False) -> list[Problem]:
    """Read a file written by `prefix_rft.data.problem.save_problems` (schema "problems")."""
    return read_problems(path, schema="problems", require_demos=require_demos)


def detect_schema(fields: dict) -> str | None:
    """The schema a row's fields belong to, or None when none fits."""
    if "generations" in fields or "correctness_math_verify" in fields:
        return "openr1"
    if "messages" in fields:
        return "messages"
    if (
        "prompt" in fields
        and "demonstrations" in fields
        and "answer" in fields
        and isinstance(fields["prompt"], str)
    ):
        return "problems"
    if "prompt" in fields and ("reward_model" in fields or "target" in fields):
        return "luffy"
    if "problem" in fields or "question" in fields or isinstance(fields.get("prompt"), str):
        return "plain"
    return None


def iter_rows(spec: str | Path, *, split: str = "train") -> Iterator[RawRow]:
    """Every row of a file, a directory of files (local or a URL) or a hub dataset, as plain
    dicts, loaded through `datasets` (see `prefix_rft.data.loading`)."""
    for part in open_parts(spec, split=split):
        yield from part_rows(part)


def part_rows(part: Part) -> Iterator[RawRow]:
    """The rows of one loaded part, numbered from 1 (the line number for `.jsonl`)."""
    if part.kind == "jsonl":
        yield from _rows_from_lines(part.where, part.stem, _text_column(part.dataset))
    elif part.kind == "json":
        yield from _rows_from_document(part.where, part.stem, "".join(_text_column(part.dataset)))
    else:
        yield from _table_rows(part)


def _text_column(ds) -> Iterator[str]:
    for batch in ds.with_format("arrow").iter(batch_size=4096):
        yield from batch.column("text").to_pylist()


def _table_rows(part: Part) -> Iterator[RawRow]:
    ds = part.dataset
    if hasattr(ds, "with_format"):
        rows = (obj for batch in ds.with_format("arrow").iter(batch_size=1024)
                for obj in batch.to_pylist())
    else:  # any iterable of mappings
        rows = (dict(obj) for obj in ds)
    number = 0
    for number, obj in enumerate(rows, 1):
        yield RawRow(part.where, number, part.stem, obj)
    if number == 0 and part.file:
        raise UserError(f"{part.where}: file has no rows (expected a Parquet table of problems)")


def strip_instruction(prompt: str) -> str:
    """The problem statement without a trailing "Please reason step by step..." instruction."""
    return _INSTRUCTION_SUFFIX.sub("", prompt).strip()


def unwrap_boxed(text: str) -> str:
    """`X` for a string holding `\\boxed{X}` (the last one; braces balanced), else the text."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return text.strip()
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return text.strip()  # unbalanced: leave it to the grader


# ---------------------------------------------------------------------------------------------
# Sources


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def iter_file(path: Path) -> Iterator[RawRow]:
    """Every row of one `.jsonl`, `.json` or `.parquet` file, by its suffix (the one file reader
    of the library: `iter_rows` and the benchmark registry read through it). Rows are numbered
    from 1 as in the file (the line number for `.jsonl`); an unreadable file, malformed JSON, a
    row that is not an object or a file without rows raises `UserError` naming the file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        raise UserError(
            f"{path}: unsupported file type '{path.suffix}' (expected .jsonl, .json or .parquet)"
        )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}) (expected JSON text)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or _one_line(e)})") from None


def _row(where: str, stem: str, number: int, obj) -> RawRow:
    if not isinstance(obj, dict):
        raise UserError(
            f"{where} row {number}: got a JSON {type(obj).__name__} (expected a JSON object)"
        )
    return RawRow(where, number, stem, obj)


def _rows_from_lines(where: str, stem: str, lines: Iterable[str]) -> Iterator[RawRow]:
    """JSON lines, numbered by line (blank lines are skipped but counted)."""
    any_row = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{where} row {number}: malformed JSON ({e.msg} at column {e.colno}) "
                f"(expected one JSON object per line)"
            ) from None
        any_row = True
        yield _row(where, stem, number, obj)
    if not any_row:
        raise UserError(f"{where}: file has no rows (expected one JSON object per line)")


def _rows_from_document(where: str, stem: str, text: str) -> Iterator[RawRow]:
    """A `.json` file's text: an array of objects, or JSON lines saved as `.json`."""
    if text.lstrip().startswith("{"):
        yield from _rows_from_lines(where, stem, text.splitlines())
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{where} line {e.lineno}: malformed JSON ({e.msg} at column {e.colno}) "
            f"(expected a JSON array of objects)"
        ) from None
    if not isinstance(data, list):
        raise UserError(
            f"{where}: holds a JSON {type(data).__name__} (expected an array of objects)"
        )
    if not data:
        raise UserError(f"{where}: file has no rows (expected a JSON array of objects)")
    for number, obj in enumerate(data, 1):
        yield _row(where, stem, number, obj)


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    number = 0
    try:
        with open(path, encoding="utf-8") as f:
            for row in _rows_from_lines(str(path), path.stem, f):
                number = row.number
                yield row
    except UnicodeDecodeError:
        raise UserError(
            f"{path}: not UTF-8 text after row {number} (expected JSON lines)"
        ) from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or _one_line(e)})") from None


def _iter_json(path: Path) -> Iterator[RawRow]:
    text = _read_text(path)
    if text.lstrip().startswith("{"):  # JSON lines saved as .json: stream them from the file
        del text
        yield from _iter_jsonl(path)
        return
    yield from _rows_from_document(str(path), path.stem, text)


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read as Parquet ({_one_line(e)})") from None
    except Exception as e:  # pyarrow raises ArrowInvalid and friends for corrupt files
        raise UserError(f"{path}: cannot read as Parquet ({_one_line(e)})") from None
    if pf.metadata.num_rows == 0:
        raise UserError(f"{path}: file has no rows (expected a Parquet table of problems)")
    number = 0
    for batch in pf.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            number += 1
            yield RawRow(str(path), number, path.stem, obj)


# ---------------------------------------------------------------------------------------------
# Schemas


def _detect_or_raise(row: RawRow) -> str:
    name = detect_schema(row.fields)
    if name is None:
        fields = ", ".join(sorted(row.fields)) or "none"
        raise UserError(
            f"{row.where} row {row.number}: cannot tell the schema from the fields ({fields}) "
            f"(expected one of {', '.join(SCHEMAS)}; pass schema= to force one)"
        )
    return name


def _with_id(problem: Problem, new_id: str) -> Problem:
    return Problem(new_id, problem.prompt, problem.answer, problem.demonstrations, problem.source,
                   problem.origin)


def _row_id(row: RawRow) -> str:
    f = row.fields
    extra = f.get("extra_info")
    for value in (
        f.get("uuid"),
        extra.get("index") if isinstance(extra, dict) else None,
        f.get("id"),
    ):
        if value is not None and str(value).strip():
            return str(value).strip()
    return f"{row.stem}-{row.number}"


def _text(row: RawRow, value, field: str, expected: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise row.error(field, expected)
    if not isinstance(value, str):
        raise row.error(field, expected, f"is a {type(value).__name__}")
    return value


def _answer(row: RawRow, value, field: str) -> str:
    expected = "the gold final answer"
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int, float))):
        raise row.error(field, expected + " as a string or number", f"is a {type(value).__name__}")
    text = "" if value is None else str(value).strip()
    if not text:
        raise row.error(field, expected)
    return text


def _string_list(row: RawRow, value, field: str) -> list[str]:
    """A demonstration field: a string, or a list of strings / {content} messages."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("content")
        if item is None:
            continue
        if not isinstance(item, str):
            raise row.error(
                field,
                "a string or a list of strings / {role, content} messages",
                f"holds a {type(item).__name__}",
            )
        if item.strip():
            out.append(item)
    return out


def _need_demos(row: RawRow, demos: list[str], field: str, require: bool, expected: str) -> None:
    if require and not demos:
        raise row.error(
            field,
            f"{expected}; pass require_demos=False for prompt-only data",
            "has no demonstration",
        )


def _last_user_message(row: RawRow, messages, field: str) -> str:
    if isinstance(messages, str):
        return messages
    if hasattr(messages, "tolist"):  # numpy arrays from pandas-made rows
        messages = messages.tolist()
    expected = "a chat list of {role, content} messages with a user message"
    if not isinstance(messages, (list, tuple)):
        raise row.error(field, expected)
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return _text(row, msg.get("content"), f"{field}.content", "the problem statement")
    raise row.error(field, expected, "has no user message")


def _parse_openr1(row: RawRow, require_demos: bool) -> Problem:
    f = row.fields
    prompt = _text(row, f.get("problem"), "problem", "the problem statement")
    answer = _answer(row, f.get("answer"), "answer")
    gens = f.get("generations")
    flags = f.get("correctness_math_verify")
    demos: list[str] = []
    if gens is not None or flags is not None:
        if not isinstance(gens, (list, tuple)):
            raise row.error("generations", "a list of DeepSeek-R1 traces")
        if not isinstance(flags, (list, tuple)) or len(flags) != len(gens):
            raise row.error(
                "correctness_math_verify",
                f"one bool per generation ({len(gens)})",
                "is missing or has the wrong length",
            )
        demos = [g for g, ok in zip(gens, flags) if ok is True and isinstance(g, str) and g.strip()]
    _need_demos(
        row,
        demos,
        "generations",
        require_demos,
        "a generation marked correct in 'correctness_math_verify'; "
        "for the raw 220k set run prefix_rft.data.filter_openr1 first",
    )
    return Problem(_row_id(row), prompt.strip(), answer, tuple(demos), "openr1")


def _parse_luffy(row: RawRow, require_demos: bool) -> Problem:
    f = row.fields
    prompt = strip_instruction(_last_user_message(row, f.get("prompt"), "prompt"))
    if not prompt:
        raise row.error("prompt", "the problem statement before the instruction")
    reward_model = f.get("reward_model")
    gold = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    answer = _answer(row, gold, "reward_model.ground_truth")
    field = "demos" if f.get("demos") is not None else "target"
    demos = _string_list(row, f.get(field), field)
    _need_demos(row, demos, field, require_demos, "the DeepSeek-R1 trace")
    source = f.get("data_source") or ""
    return Problem(_row_id(row), prompt, answer, tuple(demos), str(source))


def _parse_messages(row: RawRow, require_demos: bool) -> Problem:
    f = row.fields
    messages = f.get("messages")
    if hasattr(messages, "tolist"):  # numpy arrays from pandas-made rows
        messages = messages.tolist()
    prompt = strip_instruction(_last_user_message(row, messages, "messages"))
    if not prompt:
        raise row.error("messages", "the problem statement in the user message")
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
        default=-1,
    )
    demos = _string_list(
        row,
        [
            m
            for m in messages[last_user + 1 :]
            if isinstance(m, dict) and m.get("role") == "assistant"
        ],
        "messages",
    )
    if f.get("ground_truth_answer_from_column") is not None:
        field, value = "ground_truth_answer_from_column", f["ground_truth_answer_from_column"]
    else:
        field, value = "answer", f.get("answer")
    answer = _answer(row, value, field)
    answer = unwrap_boxed(answer) or answer
    _need_demos(
        row, demos, "messages", require_demos, "an assistant message with a worked solution"
    )
    source = f.get("data_source") or f.get("source") or ""
    return Problem(_row_id(row), prompt, answer, tuple(demos), str(source))


def _parse_plain(row: RawRow, require_demos: bool) -> Problem:
    f = row.fields
    key = next((k for k in ("problem", "question", "prompt") if f.get(k) is not None), "problem")
    prompt = _text(row, f.get(key), key, "the problem statement in 'problem' or 'question'")
    answer_key = "final_answer" if f.get("answer") is None and "final_answer" in f else "answer"
    answer = _answer(row, f.get(answer_key), answer_key)
    field = next(
        (k for k in ("demonstrations", "solutions", "solution") if f.get(k) is not None), "solution"
    )
    demos = _string_list(row, f.get(field), field)
    _need_demos(
        row,
        demos,
        field,
        require_demos,
        "a worked solution in 'solution', 'solutions' or 'demonstrations'",
    )
    source = f.get("data_source") or f.get("source") or ""
    return Problem(_row_id(row), strip_instruction(prompt), answer, tuple(demos), str(source))


def _parse_problems(row: RawRow, require_demos: bool) -> Problem:
    f = row.fields
    prompt = _text(row, f.get("prompt"), "prompt", "the problem statement")
    answer = _answer(row, f.get("answer"), "answer")
    demos = _string_list(row, f.get("demonstrations"), "demonstrations")
    _need_demos(row, demos, "demonstrations", require_demos, "a worked solution")
    return Problem(_row_id(row), prompt, answer, tuple(demos), str(f.get("source") or ""))


_PARSERS: dict[str, Callable[[RawRow, bool], Problem]] = {
    "openr1": _parse_openr1,
    "luffy": _parse_luffy,
    "messages": _parse_messages,
    "plain": _parse_plain,
    "problems": _parse_problems,
}
