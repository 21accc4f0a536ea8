"""Option groups shared by several commands, each declared once.

A flag that two commands take (``--device``, ``--predictor``, the multi-way search flags) is
added by one function here, so its name, default and help text cannot drift between commands.
The multi-way search flags are generated from that stage's settings model
(:class:`simmerge.multiway.settings.PlanSearch`), so their defaults and help live in one place.
Comma lists are parsed once, by :func:`comma_list`, into tuples with no empty items.
"""

from __future__ import annotations

import argparse

from simmerge.multiway.settings import flag_specs

MARGIN_HELP = (
    "keep the predictor's best-fixed candidate first unless another is predicted to beat it by "
    "more than this (default: the margin in the predictor's card; 0: plain argmax)"
)


def comma_list(text: str) -> tuple[str, ...]:
    """``a,b , c`` -> ('a', 'b', 'c'); an empty item is a usage error (exit status 2)."""
    items = tuple(t.strip() for t in text.split(","))
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in the comma-separated list {text!r}")
    return items


def output_options() -> argparse.ArgumentParser:
    """``--json`` and ``--quiet``, which every command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout (progress and logs go to stderr)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars or notes on stderr")
    return p


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def add_executor(p: argparse.ArgumentParser, what: str) -> None:
    """``--executor``, ``--workers`` and ``--address`` (:mod:`simmerge.infra.executors`)."""
    p.add_argument("--executor", default="local", choices=("local", "ray"), help=what)
    p.add_argument(
        "--workers", type=int, default=1, help="local: processes (1 = in-process); ray: CPUs"
    )
    p.add_argument(
        "--address", default=None, help="ray: cluster address ('auto' = this machine's cluster)"
    )


def add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        default=None,
        help="signature/sketch/skill cache (default: $SIMMERGE_CACHE or ~/.cache/simmerge)",
    )


def add_predictor(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--predictor", default=None, help="predictor folder or shipped name (default: default)"
    )


def add_catalog(p: argparse.ArgumentParser) -> None:
    p.add_argument("catalog", help="catalog YAML")


def add_pair(p: argparse.ArgumentParser) -> None:
    """A catalog, two experts and their target tasks: what 2-way commands rank."""
    add_catalog(p)
    p.add_argument(
        "--models", type=comma_list, required=True, help="the two experts, comma-separated: a,b"
    )
    p.add_argument(
        "--tasks",
        type=comma_list,
        default=None,
        help="target tasks, comma-separated (default: both experts' tasks)",
    )
    add_predictor(p)
    add_device(p)
    add_cache(p)


def add_plan_search(p: argparse.ArgumentParser, *, tasks_required: bool) -> None:
    """The multi-way search flags (``plan``, ``scan``)."""
    p.add_argument(
        "--tasks",
        type=comma_list,
        required=tasks_required,
        default=None,
        help="target tasks, comma-separated"
        + ("" if tasks_required else " (default: every task an expert has)"),
    )
    for flag, kwargs in flag_specs():
        p.add_argument(flag, **kwargs)
