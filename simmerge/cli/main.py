"""``simmerge`` command line: a thin layer over the Python API.

One convention for every command: ``--json`` prints one JSON document on stdout (progress bars
and notes go to stderr), ``--quiet`` silences stderr's progress; exit status 0 is success, 2 a
usage error (argparse), 3 bad input or configuration (a :class:`~simmerge.errors.SimmergeError`,
printed as one line that ends with what to do), 130 an interruption (Ctrl-C; a resumable
command says how to resume, without a traceback), and 1 a bug (the traceback is kept, so it can
be reported). Handlers import their stage only when they run, so ``simmerge --help`` needs
neither torch nor numpy.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from simmerge import __version__
from simmerge.cli import models, online, pairwise, plans, scans
from simmerge.cli.options import output_options
from simmerge.errors import SimmergeError
from simmerge.infra.allocator import reuse_freed_memory

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simmerge", description="Predict which model merge to make, then make it."
    )
    parser.add_argument("--version", action="version", version=f"simmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = output_options()
    for group in (models, pairwise, plans, online, scans):
        group.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = plans.legacy_alias(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # commands stream tensors: keep freed blocks for the next one
    try:
        return int(args.func(args) or EXIT_OK)
    except SimmergeError as exc:
        print(f"simmerge: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        hint = getattr(args, "resume", None)
        note = f" {hint.format(**vars(args))}" if hint else ""
        print(f"\nsimmerge: interrupted.{note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug: keep the traceback, so that it can be reported
        traceback.print_exc()
        print(
            f"simmerge {__version__}: internal error (a bug, not a problem with your input); "
            "please report it with the traceback above.",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
