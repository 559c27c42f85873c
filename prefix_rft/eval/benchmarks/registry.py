"""The names a benchmark can be given, the vendored file each name and source reads, and the
names results are filed under.

Nothing here reads a file: `default_path` says which vendored file a built-in benchmark comes
from, `benchmark_label` what its scores are called, and the ``check_*`` helpers turn an unknown
name or source into one `UserError` listing what is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # where it was read ("FILE row N") for a problems file, for error messages; not compared
    origin: str = field(default="", compare=False, repr=False)


BENCHMARKS = ("aime24", "aime25", "amc", "math500", "minerva", "olympiadbench")
OOD_BENCHMARKS = ("arc_c", "gpqa_diamond")
ALL_BENCHMARKS = BENCHMARKS + OOD_BENCHMARKS
SOURCES = ("default", "luffy")

# benchmark -> the vendored file it is loaded from (relative to DATA_DIR), source "default"
DEFAULT_FILES = {
    "aime24": "aime24/aime.json",
    "aime25": "aime25/test.json",
    "amc": "amc/amc.json",
    "math500": "math500/test.jsonl",
    "minerva": "minerva_math/minerva.json",
    "olympiadbench": "olympiadbench/test.jsonl",
}

LUFFY_FILE = "luffy/valid.all.parquet"
# benchmark -> (LUFFY file relative to DATA_DIR, its data_source value)
LUFFY_FILES = {
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
LUFFY_DATA_SOURCES = {name: ds for name, (_, ds) in LUFFY_FILES.items()}

SYNTHETIC_PREFIX = "synthetic:"
HUB_PREFIX = "hub:"


def is_synthetic(spec) -> bool:
    """Whether ``spec`` names a synthetic level's held-out split (``synthetic:add``)."""
    return isinstance(spec, str) and spec.startswith(SYNTHETIC_PREFIX)


def reads_luffy_layout(name: str, source: str) -> bool:
    """Whether a built-in benchmark is read from LUFFY's parquet layout (the ``"luffy"`` source,
    and always for the OOD sets, which have no other file)."""
    return source == "luffy" or name in OOD_BENCHMARKS


def benchmark_label(name: str | Path) -> str:
    """The name a benchmark's results are filed under: a known name itself, a problems file's
    stem (``data/mine.jsonl`` -> ``mine``), a hub dataset's name (``hub:org/MATH-500`` ->
    ``MATH-500``), a synthetic level's split (``synthetic:add`` -> ``synthetic_add``; MLflow
    metric names cannot hold a colon)."""
    s = str(name)
    if is_synthetic(s):
        return "synthetic_" + s[len(SYNTHETIC_PREFIX):].strip()
    if s.startswith(HUB_PREFIX):
        return s[len(HUB_PREFIX):].split(":")[0].split("/")[-1]
    return s if s in ALL_BENCHMARKS else Path(s).stem


def default_path(name: str, source: str = "default") -> Path:
    """The vendored file a benchmark is loaded from (for ``source``)."""
    check_name(name)
    check_source(source)
    if reads_luffy_layout(name, source):
        return DATA_DIR / LUFFY_FILES[name][0]
    return DATA_DIR / DEFAULT_FILES[name]


def unknown_name(name) -> UserError:
    """The error for a name that is neither a benchmark, a synthetic level nor a file."""
    return UserError(
        f"unknown benchmark {name!r}; expected one of {', '.join(ALL_BENCHMARKS)}, "
        f"synthetic:LEVEL, or the path of a .jsonl/.json/.parquet problems file"
    )


def check_name(name: str) -> None:
    """Raise `unknown_name` unless ``name`` is one of `ALL_BENCHMARKS`."""
    if name not in ALL_BENCHMARKS:
        raise unknown_name(name)


def check_source(source: str) -> None:
    """Raise `UserError` listing `SOURCES` unless ``source`` is one of them."""
    if source not in SOURCES:
        raise UserError(
            f"unknown benchmark source {source!r}; expected one of {', '.join(SOURCES)}"
        )
