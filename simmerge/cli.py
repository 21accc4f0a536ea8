"""``simmerge`` command line: a thin layer over the Python API.

Each stage module that has commands exposes ``add_cli(subparsers)``; this file only collects
them. Input errors (:class:`~simmerge.errors.SimmergeError`) are printed as one clear line and
exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from simmerge import __version__
from simmerge.errors import SimmergeError


def _cmd_merge(args: argparse.Namespace) -> int:
    from simmerge.merge import MergePlan, merge

    plan = MergePlan.from_yaml(args.plan)
    out = merge(
        plan,
        Path(args.out),
        device=args.device,
        shard_bytes=int(args.shard_size_mb * 1024 * 1024),
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        allow_remote_code=args.trust_remote_code,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps({"plan_id": plan.plan_id, "operator": plan.operator, "out": str(out)}))
    else:
        print(f"merged ({plan.operator}, plan {plan.plan_id}) -> {out}")
    return 0


def _add_merge_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge", help="execute a merge plan (mergekit-compatible YAML) into a model folder"
    )
    p.add_argument("plan", help="plan YAML (merge_method, base_model, models, parameters, dtype)")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--shard-size-mb", type=float, default=2048, help="max shard size in MiB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--allow-pickle", action="store_true", help="accept pytorch_model.bin inputs")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="accept models whose config asks for custom code (auto_map); review it first",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_merge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simmerge", description="Predict which model merge to make, then make it."
    )
    parser.add_argument("--version", action="version", version=f"simmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_merge_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SimmergeError as exc:
        print(f"simmerge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
