"""Helpers shared by the command-line tools: argparse value types and text tables."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "add_max_hours",
    "check_memory",
    "check_time",
    "choice_list",
    "device",
    "duration",
    "format_table",
    "markdown_table",
    "output_file",
    "positive_float",
    "positive_int",
    "positive_int_list",
    "save",
    "seed",
    "write_json",
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


def seed(text: str) -> int:
    """An argparse type for a seed: an integer in ``0..2**63 - 1``, a range that both
    ``torch.manual_seed`` and ``numpy.random.default_rng`` take (they take more)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..2**63-1, got {value}")
    return value


def output_file(text: str) -> str:
    """An argparse type for a file to write at the end of a run: its directory must exist
    and be writable now, so that a long run does not end in a traceback and lose its
    results."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got ''")
    directory = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text) or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"no directory {directory!r} to write {text!r} in")
    if not os.access(directory, os.W_OK) or (os.path.exists(text) and not os.access(text, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}")
    return text


def check_plot_file(parser: argparse.ArgumentParser, path: str) -> None:
    """--plot's file: matplotlib must be installed and know the format its extension names
    (it would fail on ``.txt`` only after the run, and give a name without one ``.png``)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        parser.error("argument --plot: needs matplotlib (pip install matplotlib)")
    # (pgf needs a LaTeX installation at save time, so it too would fail after the run)
    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in formats:
        parser.error(
            f"argument --plot: expected a file name ending in one of "
            f"{', '.join('.' + f for f in formats)}, got {path!r}"
        )


def check_distinct_outputs(parser: argparse.ArgumentParser, **paths: str | None) -> None:
    """Output options (``json="out.json"``, ...) must name different files: the later
    write would replace the earlier one's file, silently, after the whole run."""
    seen: dict[str, str] = {}
    for option, path in paths.items():
        if not path:
            continue
        key = os.path.realpath(path)
        if key in seen:
            parser.error(
                f"arguments --{seen[key]} and --{option}: expected different files, both "
                f"name {path!r}"
            )
        seen[key] = option


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(parser: argparse.ArgumentParser, what: str, nbytes: float, lower: str) -> None:
    """An argument error where ``what`` needs more than half of this machine's memory
    (unknown memory: no check); ``lower`` names the options that shrink it."""
    memory = _available_memory()
    if memory is not None and nbytes > memory // 2:
        parser.error(
            f"{what} needs about {nbytes / 2**30:.1f} GiB, more than half of this machine's "
            f"{memory / 2**30:.1f} GiB: lower {lower}"
        )


def duration(seconds: float) -> str:
    """``seconds`` for a message: "40 s", "12 min", "4.7 h"; under a second "0.3 s" and
    "30 ms" (a limit of 1e-6 h refused "about 0 s")."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}".removesuffix(".0") + " h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    if seconds >= 0.95:
        return f"{seconds:.0f} s"
    if seconds >= 0.1:
        return f"{seconds:.1f} s"
    return f"{seconds * 1000:.2g} ms"


def add_max_hours(parser: argparse.ArgumentParser, default: float, counts: str) -> None:
    """The ``--max-hours H`` option of a command with a time guard (:func:`check_time`):
    a positive finite number, ``default`` hours unless given; ``counts``: what the
    command's estimate counts, for the help."""
    parser.add_argument(
        "--max-hours",
        type=positive_float,
        default=default,
        metavar="H",
        help=f"refuse to start a run estimated to take longer (default {default:g}; {counts})",
    )


def check_time(
    parser: argparse.ArgumentParser, what: str, seconds: float, limit: float, why: str,
    allowed: str, lower: str,
) -> None:  # fmt: skip
    """An argument error where ``what`` (e.g. "the 4 cases would take") would run for
    ``seconds``, an estimate, more than ``limit`` seconds: refused before anything runs,
    instead of hours without a word. ``why``: what the estimate counts; ``allowed``: the
    limit in words ("--max-hours 1"); ``lower``: what shortens the run."""
    if seconds > limit:
        parser.error(
            f"{what} about {duration(seconds)} ({why}), more than {allowed}: lower {lower}"
        )


def _finite_or_none(value):
    """``value`` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def save(prog: str, path: str, write: Callable[..., None], *args, **kwargs) -> bool:
    """``write(path, *args, **kwargs)`` at the end of a run; an ``OSError`` (a full disk, a
    directory removed since the start) is reported in one line on stderr, naming the file,
    instead of a traceback, so that the results printed and the other files written stand.
    False when it failed (the command then exits with status 1)."""
    try:
        write(path, *args, **kwargs)
    except OSError as e:
        print(f"{prog}: cannot write {path!r}: {e.strerror or e}", file=sys.stderr)
        return False
    return True


def write_json(path: str, data, indent: int | None = 2) -> None:
    """``data`` as strict JSON (NaN and infinities, which JSON has not, as null)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_finite_or_none(data), f, indent=indent, allow_nan=False)
        f.write("\n")


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


def device(parser: argparse.ArgumentParser, name: str, forms: str = "cpu, cuda or cuda:N"):
    """``--device name`` as a ``torch.device`` that exists here, else the parser's error
    naming it (``forms``: the spellings the option takes, for the message)."""
    import torch  # (the CLI's parser is built before torch is needed)

    try:
        dev = torch.device(name)
    except RuntimeError:
        parser.error(f"argument --device: invalid device {name!r} (use {forms})")
    if dev.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: {name!r} is not a CPU or CUDA device")
    if dev.type == "cpu" and dev.index not in (None, 0):
        parser.error(f"argument --device: {name!r}: the CPU is one device, 'cpu'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"argument --device: {name!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            parser.error(
                f"argument --device: {name!r} does not exist "
                f"({torch.cuda.device_count()} GPU(s) visible)"
            )
    return dev


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
