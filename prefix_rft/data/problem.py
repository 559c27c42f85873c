"""The `Problem` record every data source is turned into, and its own save format.

A `Problem` is one training or evaluation item: the bare problem statement (no instruction suffix,
no chat template: those are applied later, with the policy's tokenizer), the gold final answer, and
the worked expert solutions (demonstrations) that Prefix-RFT cuts prefixes from.

The save format (schema "problems") is one record per row with the fields `id`, `prompt`,
`answer`, `demonstrations` (list of strings) and `source`, written as JSON lines (`.jsonl`) or
Parquet (`.parquet`), chosen by the file extension. `prefix_rft.data.readers.load_problems` reads
it back. This module imports nothing else of `prefix_rft.data`: every reader depends on it, not
the other way round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prefix_rft.errors import UserError

SAVE_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Problem:
    """One problem with its gold answer and its worked demonstrations."""

    id: str
    prompt: str  # the problem statement only (no instruction suffix, no chat template)
    answer: str  # gold final answer (as a string)
    demonstrations: tuple[str, ...]  # worked expert solutions ending in a \boxed{} answer
    source: str = ""  # dataset / data_source name
    # where it was read ("FILE row N"), for error messages; not saved, not compared
    origin: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        # Accept any iterable of strings (a list read back from JSON) but store a tuple, so the
        # record stays hashable and immutable.
        if not isinstance(self.demonstrations, tuple):
            object.__setattr__(self, "demonstrations", tuple(self.demonstrations))

    def to_dict(self) -> dict:
        """The record as written by `save_problems` (demonstrations as a list)."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "demonstrations": list(self.demonstrations),
            "source": self.source,
        }


def save_problems(problems: Iterable[Problem], path: str | Path) -> Path:
    """Write `problems` to `path` (.jsonl or .parquet, by extension); returns the path.

    The file is written next to its final name and renamed into place, so a crash never leaves a
    half-written file under the final name. Parent directories are created.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise UserError(
            f"{path}: cannot save problems with extension '{path.suffix}' "
            f"(expected one of {', '.join(SAVE_SUFFIXES)})"
        )
    records = [p.to_dict() for p in problems]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [
                ("id", pa.string()),
                ("prompt", pa.string()),
                ("answer", pa.string()),
                ("demonstrations", pa.list_(pa.string())),
                ("source", pa.string()),
            ]
        )
        pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
    os.replace(tmp, path)
    return path

