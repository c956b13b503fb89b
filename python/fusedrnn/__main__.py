"""The ``fusedrnn`` command: ``fusedrnn bench``, ``fusedrnn gradcheck``, ``fusedrnn info``.

Also runs as ``python -m fusedrnn``. Each subcommand lives in its own module, which
provides ``add_arguments(parser)`` and ``run(args, parser, argv) -> exit status``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence


def _run_info(args: argparse.Namespace, parser: argparse.ArgumentParser, argv=None) -> int:
    from .sysinfo import collect, format_info

    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else format_info(facts))
    return 0


def _plain(doc: str | None) -> str | None:
    """A module docstring as a help text: reStructuredText's ``literal`` as `literal`."""
    return doc and doc.replace("``", "`")


def build_parser() -> argparse.ArgumentParser:
    from . import bench, gradcheck

    parser = argparse.ArgumentParser(
        prog="fusedrnn",
        description="Fused CPU/CUDA Elman RNN kernels: benchmarks, gradient checks, build info.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench_parser = commands.add_parser(
        "bench",
        help="time fusedrnn.RNN against torch.nn.RNN on identical inputs",
        description=_plain(bench.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=bench.run, parser=bench_parser)

    check_parser = commands.add_parser(
        "gradcheck",
        help="check every gradient three ways and forward mode; --flow: gradient norms over time",
        description=_plain(gradcheck.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gradcheck.add_arguments(check_parser)
    check_parser.set_defaults(handler=gradcheck.run, parser=check_parser)

    info_parser = commands.add_parser(
        "info", help="versions, CPU SIMD level, threads, CUDA build and GPUs"
    )
    info_parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    info_parser.set_defaults(handler=_run_info, parser=info_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    # The subcommand's own parser reports errors found after parsing (e.g. --device cuda
    # without a GPU), so the message names the subcommand and the option.
    try:
        status = args.handler(args, args.parser, argv[1:])
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except KeyboardInterrupt:  # Ctrl-C: one line instead of a traceback, then
        print(f"\nfusedrnn {args.command}: interrupted", file=sys.stderr)
        # ... end by SIGINT itself, as an uncaught KeyboardInterrupt does: a shell stops a
        # script only when its child died of the signal (a plain exit 130 lets it go on).
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130  # (not reached where the signal ends the process)
    except BrokenPipeError:  # the reader went away (`fusedrnn bench | head -1`)
        # Python flushes stdout again at exit: point it at /dev/null so that flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
