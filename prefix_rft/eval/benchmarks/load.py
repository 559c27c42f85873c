"""`load_benchmark`: a benchmark name, synthetic level, hub dataset or problems file to problems."""

from __future__ import annotations

from pathlib import Path

from prefix_rft.data.readers import DATA_SUFFIXES, read_problems
from prefix_rft.errors import UserError
from prefix_rft.eval.benchmarks.luffy import load_luffy
from prefix_rft.eval.benchmarks.registry import (
    ALL_BENCHMARKS,
    HUB_PREFIX,
    BenchmarkProblem,
    benchmark_label,
    check_source,
    default_path,
    is_synthetic,
    reads_luffy_layout,
    unknown_name,
)
from prefix_rft.eval.benchmarks.synthetic import load_synthetic
from prefix_rft.eval.benchmarks.vendored import load_default


def load_benchmark(
    name: str | Path, path: str | Path | None = None, *, source: str = "default"
) -> list[BenchmarkProblem]:
    """Load a benchmark: one of `ALL_BENCHMARKS`, or a problems file of your own.

    ``name`` a known benchmark: read from ``path`` if given, else from the vendored file of
    ``source`` (``"default"`` or ``"luffy"``; ``data/PROVENANCE.md`` says what each reads). A
    ``path`` is read by `prefix_rft.data.readers.iter_file` (``.jsonl``, ``.json`` or
    ``.parquet``) and its rows must carry the fields of the file it replaces (LUFFY's parquet
    layout for the ``"luffy"`` source and the OOD sets).

    ``name`` ``hub:owner/name[:config]``: a hub dataset's test split with problem/answer fields
    (needs network and the ``hub`` extra).

    ``name`` ``synthetic:LEVEL``: that level's whole held-out (``test``) split of the built-in
    arithmetic task, in a fixed order (`prefix_rft.eval.benchmarks.synthetic`).

    ``name`` a path (not a known name, and it has a ``/``, a ``.jsonl``/``.json``/``.parquet``
    suffix, or exists): a problems file read with `prefix_rft.data.readers.read_problems`.
    ``source`` applies to named benchmarks only (so one list of names and files can share it).

    Raises `UserError` for an unknown name or source, a file that cannot be read or parsed, or a
    row without a field the benchmark needs (the message names the file, the row and the field).
    """
    check_source(source)
    if is_synthetic(name):
        return load_synthetic(name)
    if isinstance(name, str) and name.startswith(HUB_PREFIX):
        return _as_benchmark(name, read_problems(name, split="test", require_demos=False))
    if isinstance(name, str) and name in ALL_BENCHMARKS:
        file = Path(path) if path is not None else default_path(name, source)
        if reads_luffy_layout(name, source):
            return load_luffy(name, file)
        return load_default(name, file)
    if _looks_like_path(name):
        if path is not None:
            raise UserError(
                f"load_benchmark({str(name)!r}, path={str(path)!r}): give a benchmark name with "
                f"path=, or a problems file as the name, not both"
            )
        return _load_problems_file(Path(name))  # read as it is, whatever the source
    raise unknown_name(name)


def _looks_like_path(name: str | Path) -> bool:
    if isinstance(name, Path):
        return True
    if not isinstance(name, str) or not name.strip():
        return False
    return (
        "/" in name or "\\" in name or name.lower().endswith(DATA_SUFFIXES) or Path(name).exists()
    )


def _load_problems_file(file: Path) -> list[BenchmarkProblem]:
    problems = read_problems(file, split="test", require_demos=False)
    if not problems:
        raise UserError(f"{file}: no problems")
    return _as_benchmark(file, problems)


def _as_benchmark(spec: str | Path, problems) -> list[BenchmarkProblem]:
    """Problems read by the data readers as one benchmark named `benchmark_label` (``spec``)."""
    label = benchmark_label(spec)
    return [BenchmarkProblem(label, p.id, p.prompt, (p.answer,), p.origin) for p in problems]
