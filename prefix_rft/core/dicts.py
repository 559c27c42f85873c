"""Nested-dict helpers of the configuration: merging layers, dotted keys in and out.

A config is a tree of mappings (sections) with values at the leaves. `model.random_init` is the
one leaf whose value is itself a mapping (a small model description taken as a whole), so it is
replaced rather than merged, and kept whole when flattening.
"""

from __future__ import annotations

from typing import Any

from prefix_rft.errors import UserError

LEAF_MAPPINGS = ("random_init",)  # keys whose mapping value is one leaf, not a section


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge `over` into a copy of `base` (mappings merge, other values replace)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in LEAF_MAPPINGS:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def dotted_to_nested(flat: dict[str, Any]) -> dict:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`; a UserError when a key runs through a leaf."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return nested


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value} (used for experiment-tracking params)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in LEAF_MAPPINGS:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
