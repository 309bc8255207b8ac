"""Printing helpers of the diagnostics report."""

from __future__ import annotations

import textwrap

HEADER_WIDTH = 60


def print_header(txt: str, width: int = HEADER_WIDTH, filler: str = "=") -> None:
    """``txt`` centred in a line of ``width`` ``filler`` characters (a bare line when empty)."""
    print(f" {txt} ".center(width, filler) if txt else filler * width)


def print_dedented(text: str) -> None:
    """``text`` with its common indentation removed, without a leading or trailing blank line."""
    print("\n".join(textwrap.dedent(text).strip().split("\n")))
