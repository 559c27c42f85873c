"""Repairs of the public benchmark copies' gold answers, so the grader reads each as meant.

``data/PROVENANCE.md`` lists the defects: AIME's leading zeros, LUFFY's float strings and
degrees (`integer_answers`), JSON escapes that ate a LaTeX backslash (`CONTROL_TO_LATEX`), and
Minerva answers that Math-Verify misreads (`with_latex_forms`). A repair only adds spellings: the
original answer always stays one of the accepted golds.
"""

from __future__ import annotations

import re

# JSON escapes that ate the backslash of a LaTeX command (\frac, \triangle, \binom, \right)
CONTROL_TO_LATEX = str.maketrans({"\x0c": "\\f", "\t": "\\t", "\x08": "\\b", "\r": "\\r"})

_E_NOTATION = re.compile(r"([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d+)")
_NUMPY_CALL = re.compile(r"\bnp\.([A-Za-z]+)\(")
_BARE_DECIMAL_POINT = re.compile(r"(\d)\.(?!\d)")


def integer_answers(answer: str) -> tuple[str, ...]:
    """``"023"`` -> ``("23", "023")``; ``"204"`` -> ``("204",)``; LUFFY's float strings and
    degrees: ``"142.0"`` -> ``("142", "142.0")``, ``"336^\\circ"`` -> ``("336", "336^\\circ")``."""
    a = answer.strip()
    m = re.fullmatch(r"([+-]?\d+)(?:\.0*)?(?:\s*\^\s*\{?\s*\\circ\s*\}?)?", a)
    if m and str(int(m.group(1))) != a:
        return (str(int(m.group(1))), a)
    return (a,)


def latex_form(answer: str) -> str | None:
    """A LaTeX spelling of an answer Math-Verify misreads, or None if it reads it as meant."""
    m = _E_NOTATION.fullmatch(answer)
    if m:
        return f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}"
    fixed = _NUMPY_CALL.sub(r"\\\1(", answer)
    if "\\" not in answer and "$" not in answer:
        fixed = _BARE_DECIMAL_POINT.sub(r"\1", fixed)
    return fixed if fixed != answer else None


def with_latex_forms(answers) -> tuple[str, ...]:
    """Each answer preceded by its `latex_form` (if any); duplicates dropped, order kept."""
    out: list[str] = []
    for a in answers:
        fixed = latex_form(a)
        if fixed is not None:
            out.append(fixed)
        out.append(a)
    return tuple(dict.fromkeys(out))


def same_up_to_spaces(a: str, b: str) -> bool:
    """Whether two answers differ only in whitespace."""
    return a.split() == b.split()
