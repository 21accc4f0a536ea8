"""Option groups shared by several commands, each declared once.

A flag that two commands take (``--device``, ``--predictor``, the multi-way search flags) is
added by one function here, so its name, default and help text cannot drift between commands.
Defaults that are rules of a stage (the most experts in a plan, the feature mode) come from
that stage's constant, not from a second literal here. Comma lists are parsed once, by
:func:`comma_list`, into tuples with no empty items.
"""

from __future__ import annotations

import argparse

# Kept in step with simmerge.multiway.search (DEFAULT_MAX_MODELS, MODES) by
# tests/cli/test_cli.py: importing that module here would load torch for `simmerge --help`.
DEFAULT_MAX_MODELS = 3
MODES = ("fast", "exact")

PLAN_MODEL_HELP = (
    "multi-way plan model: folder or shipped name (default: multiway); 'none': rank plans by "
    "the analytic score alone"
)
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
    p.add_argument(
        "--max-models",
        type=int,
        default=DEFAULT_MAX_MODELS,
        help=f"most experts in a plan (default: {DEFAULT_MAX_MODELS})",
    )
    p.add_argument(
        "--beam",
        type=int,
        default=None,
        help="beam width (default: every chain in fast mode where feasible, else 4)",
    )
    p.add_argument(
        "--mode",
        default=MODES[0],
        choices=MODES,
        help="fast: plan from the members' pair features; exact: merge each chain's prefix and "
        "profile it",
    )
    p.add_argument("--plan-model", default=None, help=PLAN_MODEL_HELP)
