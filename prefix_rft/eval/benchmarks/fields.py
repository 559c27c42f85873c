"""Typed fields of a benchmark file's rows (`prefix_rft.data.readers.RawRow`).

The vendored benchmarks keep their own field names and types (AIME's numbers as strings or
integers, Minerva's answer lists, LUFFY's nested ``reward_model.ground_truth``), so each parser
asks for a field with the types it accepts. Every failure is the readers' `RawRow.error`: one
line naming the file, the row (the line number for ``.jsonl``) and the field, and saying what
was expected.
"""

from __future__ import annotations

from prefix_rft.data.readers import RawRow

Types = type | tuple[type, ...]


def field(row: RawRow, name: str, types: Types = str):
    """``row.fields[name]``: present (not None), one of ``types``, and not a blank string."""
    value = row.fields.get(name)
    if value is None:
        raise row.error(name, _type_names(types), "is missing")
    return checked(row, name, value, types)


def nested(row: RawRow, outer: str, key: str, types: Types = str):
    """``row.fields[outer][key]``, checked like `field` and named ``outer.key`` in messages."""
    parent = field(row, outer, dict)
    name = f"{outer}.{key}"
    if parent.get(key) is None:
        raise row.error(name, _type_names(types), "is missing")
    return checked(row, name, parent[key], types)


def checked(row: RawRow, name: str, value, types: Types = str):
    """``value`` (found under ``name``) if it is one of ``types`` and not a blank string."""
    if not isinstance(value, types):
        raise row.error(name, _type_names(types), f"is a {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise row.error(name, _type_names(types), "is empty")
    return value


def _type_names(types: Types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)
