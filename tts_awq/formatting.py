"""Number, byte and Markdown-table formatting shared by the validation report and the model card."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt_number(value: Any, digits: int = 4) -> str:
    """``n/a`` for None, yes/no for bools, ints as is, floats to ``digits`` significant digits (scientific
    outside 1e-3..1e4), lists element-wise."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt_number(v, digits) for v in value) + "]"
    return str(value)


def human_bytes(n: int | float | None, si: bool = False) -> str:
    """``1.50 GiB`` (binary, the default) or ``1.61 GB`` (``si=True``, as the Hub shows sizes)."""
    if n is None:
        return "n/a"
    units = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if si else (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
    for unit, scale in units:
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub Markdown table as lines; string cells are written as given, anything else via :func:`fmt_number`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt_number(c) for c in row) + " |" for row in rows]
    return lines
