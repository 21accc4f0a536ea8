"""``simmerge plan``: multi-way merges for a set of tasks (which experts, in which order, with
which operators), and with ``--verify`` the top k plans merged and evaluated.

``rank --tasks ...`` and ``verify --tasks ...`` without ``--models`` were how multi-way plans
were asked for before this command existed; :func:`legacy_alias` keeps them working, as
aliases of ``plan`` that say so, so that every flag of ``rank`` and ``verify`` means one thing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from simmerge.cli.options import (
    add_cache,
    add_catalog,
    add_device,
    add_plan_search,
    add_predictor,
    comma_list,
)
from simmerge.cli.output import emit, progress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "plan",
        parents=[common],
        help="multi-way plans for a task set (--tasks t1,t2,t3); --verify merges the top k",
    )
    add_catalog(p)
    add_plan_search(p, tasks_required=True)
    p.add_argument(
        "--models",
        type=comma_list,
        default=None,
        help="candidate experts, comma-separated (default: every expert with a target task)",
    )
    p.add_argument("--top", type=int, default=5, help="number of plans to show")
    p.add_argument(
        "--verify", action="store_true", help="merge and evaluate the top k plans (see --k)"
    )
    p.add_argument("--k", type=int, default=3, help="with --verify: number of plans to verify")
    add_predictor(p)
    add_device(p)
    add_cache(p)
    p.set_defaults(func=run_plan)


def legacy_alias(argv: Sequence[str]) -> list[str]:
    """``rank|verify CATALOG --tasks ... [--max-models K ...]`` without ``--models`` -> the
    ``plan`` command line it meant (with a note on stderr); any other command line unchanged."""
    argv = list(argv)
    if not argv or argv[0] not in ("rank", "verify"):
        return argv
    flags = {a.split("=", 1)[0] for a in argv[1:]}
    if "--models" in flags or "--tasks" not in flags:
        return argv
    verify = ["--verify"] if argv[0] == "verify" else []
    print(
        f"simmerge: note: `{argv[0]} --tasks` without --models is an alias of "
        f"`simmerge {' '.join(['plan', *verify])}`; use that command (`simmerge plan --help`).",
        file=sys.stderr,
    )
    return ["plan", *argv[1:], *verify]


def run_plan(args: argparse.Namespace) -> int:
    from simmerge.catalog import Catalog
    from simmerge.cli.formatting import format_plan_verify, format_plans
    from simmerge.errors import ConfigError
    from simmerge.multiway.search import plan_merge
    from simmerge.multiway.verify import verify_plans
    from simmerge.signals.profiles import FeatureOptions

    if args.verify and args.k < 1:
        raise ConfigError(f"--verify needs k >= 1, got {args.k}.", "verify at least one plan.")
    catalog = Catalog.load(args.catalog)
    plans = plan_merge(
        catalog,
        args.tasks,
        max_models=args.max_models,
        beam=args.beam,
        mode=args.mode,
        top=args.k if args.verify else args.top,
        predictor=args.predictor,
        experts=args.models,
        options=FeatureOptions(device=args.device, cache_dir=args.cache_dir),
        progress=progress(args),
        plan_model=args.plan_model,
    )
    if not args.verify:
        return emit(args, [p.to_dict() for p in plans], format_plans(plans))
    report = verify_plans(catalog, plans, k=args.k, device=args.device, cache_dir=args.cache_dir)
    return emit(args, report.to_dict(), format_plan_verify(report))
