"""Helpers shared by the command-line tools: argparse value types and text tables."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

__all__ = [
    "choice_list",
    "format_table",
    "markdown_table",
    "positive_float",
    "positive_int",
    "positive_int_list",
]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_int_list(limit: int | None = None) -> Callable[[str], list[int]]:
    """An argparse type for ``N`` or ``N,M,...`` with every value in ``1..limit``."""

    def parse(text: str) -> list[int]:
        values = [_positive_int(part.strip()) for part in text.split(",")]
        if limit is not None:
            for value in values:
                if value > limit:
                    raise argparse.ArgumentTypeError(f"{value} is too large (at most {limit})")
        return list(dict.fromkeys(values))

    return parse


def positive_int(limit: int | None = None) -> Callable[[str], int]:
    """An argparse type for one integer in ``1..limit``."""

    def parse(text: str) -> int:
        values = positive_int_list(limit)(text)
        if len(values) != 1:
            raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
        return values[0]

    return parse


def positive_float(text: str) -> float:
    """An argparse type for a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (0.0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type for ``a`` or ``a,b,...`` with every item one of ``choices``."""

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",")]
        for value in values:
            if value not in choices:
                raise argparse.ArgumentTypeError(
                    f"invalid choice {value!r} (choose from {', '.join(choices)})"
                )
        return list(dict.fromkeys(values))

    return parse


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = ["---"] + ["---:"] * (len(headers) - 1)
    return "\n".join([line(headers), line(align), *(line(row) for row in rows)])
