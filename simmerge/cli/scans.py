"""Catalog-wide commands: ``scan`` (features, ranking, report; resumable) and ``export``."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from simmerge.cli.options import (
    add_catalog,
    add_device,
    add_executor,
    add_plan_search,
    add_predictor,
)
from simmerge.cli.output import emit, progress

RESUME_SCAN = (
    "Finished stages and cached signatures/sketches are kept: run the same command again "
    "(same --out {out}) to resume."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "scan",
        parents=[common],
        help="scan a catalog: features.parquet, ranking.json and report.html (resumable)",
    )
    add_catalog(p)
    p.add_argument("--out", required=True, help="output folder (re-run to resume)")
    add_executor(p, "where the O(N) work runs")
    add_predictor(p)
    p.add_argument("--top", type=int, default=5, help="candidates kept per pair")
    p.add_argument("--plans", type=int, default=5, help="multi-way plans kept (0: none)")
    add_plan_search(p, tasks_required=False)
    p.add_argument("--store", default=None, help="outcome store with verified outcomes to plot")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    add_device(p)
    p.add_argument(
        "--cache-dir", default=None, help="signature/sketch cache (a shared folder on Ray)"
    )
    p.set_defaults(func=run_scan, resume=RESUME_SCAN)

    p = sub.add_parser(
        "export", parents=[common], help="write a scanned merge as a mergekit config"
    )
    p.add_argument("plan_id", help="plan id from the scan's ranking.json / report.html")
    p.add_argument("--scan", required=True, help="scan folder (or its ranking.json)")
    p.add_argument("--format", default="mergekit", choices=("mergekit",), help="config format")
    p.add_argument("--out", default=None, help="output YAML (default: print it)")
    p.add_argument(
        "--catalog", default=None, help="catalog YAML (default: the one the scan recorded)"
    )
    p.set_defaults(func=run_export)


def run_scan(args: argparse.Namespace) -> int:
    from simmerge.catalog import Catalog
    from simmerge.cli.formatting import format_scan
    from simmerge.scanning.pipeline import ScanSettings, scan
    from simmerge.signals.profiles import FeatureOptions

    result = scan(
        Catalog.load(args.catalog),
        args.out,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        predictor=args.predictor,
        options=FeatureOptions(device=args.device, cache_dir=args.cache_dir),
        settings=ScanSettings(
            top=args.top,
            plans=args.plans,
            max_models=args.max_models,
            beam=args.beam,
            mode=args.mode,
            tasks=args.tasks or (),
            plan_model=args.plan_model,
        ),
        store=args.store,
        report=not args.no_report,
        progress=progress(args),
    )
    return emit(args, asdict(result), format_scan(result))


def run_export(args: argparse.Namespace) -> int:
    from simmerge.catalog import Catalog
    from simmerge.errors import ConfigError
    from simmerge.scanning.export import export_plan
    from simmerge.scanning.layout import load_ranking

    ranking = load_ranking(args.scan)
    source = args.catalog or ranking["catalog"].get("source")
    if not source:
        raise ConfigError(
            "This scan's catalog was built in memory, so its model paths are unknown.",
            "pass --catalog CATALOG.yaml.",
        )
    text = export_plan(ranking, args.plan_id, Catalog.load(source), fmt=args.format, out=args.out)
    runner = "mergekit-multimerge" if text.startswith("---") else "mergekit-yaml"
    payload = {"plan_id": args.plan_id, "out": args.out, "runner": runner, "config": text}
    if args.json:
        return emit(args, payload, "")
    print(f"wrote {args.out} (run it with {runner})" if args.out else text.rstrip("\n"))
    return 0
