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

Every file is read by `prefix_rft.data.readers.iter_file`, so a bad file fails with the readers'
messages (file, row, field, what was expected). The modules, one concern each:

``registry``  names, sources, the vendored file of each, result labels
``load``      `load_benchmark`: dispatch on the kind of name
``vendored``  source ``"default"``: one row parser per benchmark's own file layout
``luffy``     source ``"luffy"`` and the OOD sets: LUFFY's parquet layout
``answers``   repairs of the public copies' gold answers
``fields``    typed fields of a row, with the readers' error messages
``synthetic`` ``synthetic:LEVEL`` held-out splits

``data/PROVENANCE.md`` records each vendored file's source, licence and sha256, which file each
name and source reads, and the known defects of the public copies with the repair applied to
each (leading zeros, float answers, JSON-escape damage, Minerva's answer lists and the forms
Math-Verify misreads). ``tests/test_benchmark_grader_check.py`` grades every gold with the real
grader; the exceptions it allows are listed in ``tests/data/grader_exceptions.yaml``.
"""

from prefix_rft.eval.benchmarks.load import load_benchmark
from prefix_rft.eval.benchmarks.registry import (
    ALL_BENCHMARKS,
    BENCHMARKS,
    DATA_DIR,
    LUFFY_DATA_SOURCES,
    OOD_BENCHMARKS,
    SOURCES,
    SYNTHETIC_PREFIX,
    BenchmarkProblem,
    benchmark_label,
    default_path,
    is_synthetic,
)
from prefix_rft.eval.benchmarks.synthetic import SYNTHETIC_ORDER_SEED, synthetic_level

__all__ = [
    "ALL_BENCHMARKS",
    "BENCHMARKS",
    "DATA_DIR",
    "LUFFY_DATA_SOURCES",
    "OOD_BENCHMARKS",
    "SOURCES",
    "SYNTHETIC_ORDER_SEED",
    "SYNTHETIC_PREFIX",
    "BenchmarkProblem",
    "benchmark_label",
    "default_path",
    "is_synthetic",
    "load_benchmark",
    "synthetic_level",
]
