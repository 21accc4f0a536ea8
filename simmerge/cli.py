"""``simmerge`` command line: a thin layer over the Python API.

Every command's arguments are declared here; its handler lives in the stage module and is
imported only when that command runs (``handler="module:function"``), so ``simmerge --help``
starts fast and needs neither torch nor numpy. Input errors
(:class:`~simmerge.errors.SimmergeError`) are printed as one clear line and exit with status 2
instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from simmerge import __version__
from simmerge.errors import SimmergeError

PLAN_MODEL_HELP = (
    "multi-way plan model: folder or shipped name (default: multiway); 'none': rank plans by "
    "the analytic score alone"
)


def _cmd_merge(args: argparse.Namespace) -> int:
    from simmerge.merging import MergePlan, merge

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


def _lazy(handler: str):
    """A ``func`` that imports ``module:function`` only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        module, name = handler.split(":")
        return getattr(importlib.import_module(module), name)(args)

    return run


def _add_eval_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a local model folder on a task file")
    p.add_argument("model_dir", help="local Hugging Face model folder")
    p.add_argument("--task", required=True, help="task file (.jsonl or .parquet)")
    p.add_argument(
        "--kind",
        choices=("exact_match", "multiple_choice", "token_accuracy"),
        default=None,
        help="task kind (default: the file's 'kind' field, else inferred)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_lazy("simmerge.evaluate:run_eval_cli"))


def _add_zoo_cli(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="the embedded tiny model zoo")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    b = zsub.add_parser("build", help="build (or reuse) the tiny zoo in a folder")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--size", choices=("default", "large"), default="default")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", choices=("cpu", "cuda"), default=None)
    b.set_defaults(func=_lazy("simmerge.zoo:run_build_cli"))


def _add_demo_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="main job on the embedded default: build the tiny zoo, rank merges, verify the top k",
    )
    p.add_argument("--zoo", default="runs/zoo", help="zoo folder (built if missing; cached)")
    p.add_argument("--pairs", type=int, default=3, help="number of expert pairs")
    p.add_argument("--k", type=int, default=3, help="merges verified per pair")
    p.add_argument(
        "--predictor", default=None, help="predictor folder or shipped name (default: default)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", default=None, help="also write the report as JSON to this path")
    p.add_argument("--store", default=None, help="outcome store to record every measured merge")
    p.set_defaults(func=_lazy("simmerge.demo:run_demo_cli"))


def _add_features_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features", help="pair similarity features for every ordered expert pair (x task)"
    )
    p.add_argument("catalog", help="catalog YAML")
    p.add_argument("--out", required=True, help="output parquet file")
    p.add_argument(
        "--probes", default="general", help="general probe set: a shipped name or a file"
    )
    p.add_argument("--probe-column", default="text", help="prompt column of the probe files")
    p.add_argument("--no-general", action="store_true", help="task probe sets only")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--cache-dir", default=None, help="signature/sketch cache (default: $SIMMERGE_CACHE)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_lazy("simmerge.feature_table:run_features_cli"))


def _add_collect_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect", help="merge + evaluate every expert pair x candidate into an outcome store"
    )
    p.add_argument("catalog", help="catalog YAML")
    p.add_argument("--store", required=True, help="outcome store (SQLite; resumed if present)")
    p.add_argument(
        "--candidates", default=None, help="comma-separated candidate ids (default: the grid)"
    )
    p.add_argument("--models", default=None, help="comma-separated expert subset (default: all)")
    p.add_argument(
        "--shard", default=None, help="K/N: only shard K of N (run N processes on one store)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_lazy("simmerge.collect:run_collect_cli"))


def _add_pair_arguments(p: argparse.ArgumentParser, models_required: bool = True) -> None:
    p.add_argument("catalog", help="catalog YAML")
    p.add_argument(
        "--models",
        required=models_required,
        help="the two experts, comma-separated: a,b (multi-way: the candidate experts)",
    )
    p.add_argument("--tasks", default=None, help="target tasks (default: both experts' tasks)")
    p.add_argument(
        "--predictor", default=None, help="predictor folder or shipped name (default: default)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--cache-dir", default=None, help="signature/sketch cache (default: $SIMMERGE_CACHE)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


MARGIN_HELP = (
    "2-way: keep the predictor's best-fixed candidate first unless another is predicted to "
    "beat it by more than this (default: the margin in the predictor's card; 0: plain argmax)"
)


def _add_rank_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank",
        help="rank the merges of two experts (--models a,b), or multi-way plans for a task set "
        "(--tasks t1,t2,t3 --max-models K)",
    )
    _add_pair_arguments(p, models_required=False)
    p.add_argument("--top", type=int, default=5, help="number of candidates to show")
    p.add_argument("--margin", type=float, default=None, help=MARGIN_HELP)
    _add_multiway_arguments(p)
    p.set_defaults(func=_lazy("simmerge.ranking:run_rank_cli"))


def _add_multiway_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-models", type=int, default=None, help="multi-way: most experts in a plan")
    p.add_argument(
        "--beam",
        type=int,
        default=None,
        help="multi-way: beam width (default: every chain in fast mode where feasible, else 4)",
    )
    p.add_argument(
        "--mode", default="fast", choices=("fast", "exact"), help="multi-way feature mode"
    )
    p.add_argument("--plan-model", default=None, help=PLAN_MODEL_HELP)


def _add_verify_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="rank, then really merge and evaluate the top k (of a pair: --models a,b; "
        "multi-way plans: --tasks t1,t2,t3 --max-models K)",
    )
    _add_pair_arguments(p, models_required=False)
    p.add_argument("--k", type=int, default=3, help="number of candidates to verify")
    p.add_argument("--margin", type=float, default=None, help=MARGIN_HELP)
    p.add_argument(
        "--store", default=None, help="2-way: outcome store to record the verified merges"
    )
    _add_multiway_arguments(p)
    p.set_defaults(func=_lazy("simmerge.verification:run_verify_cli"))


def _add_train_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fit a merge predictor on training data and/or a store")
    p.add_argument(
        "--data",
        default="zoo-large",
        help="comma-separated shipped datasets or folders ('' = none)",
    )
    p.add_argument("--store", default=None, help="outcome store to add (needs --catalog)")
    p.add_argument("--catalog", default=None, help="catalog of the store's outcomes")
    p.add_argument("--out", required=True, help="output predictor folder")
    p.add_argument(
        "--n-models", type=int, default=None, help="ensemble size (default: the predictor's, 5)"
    )
    p.add_argument("--cv-folds", type=int, default=5, help="held-out-model folds for the card")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (for the store's features)")
    p.add_argument(
        "--cache-dir", default=None, help="signature/sketch cache (default: $SIMMERGE_CACHE)"
    )
    p.set_defaults(func=_lazy("simmerge.training:run_train_cli"))


def _add_bandit_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bandit", help="online selection: select, update, add/remove arms")
    bsub = p.add_subparsers(dest="bandit_command", required=True)
    handler = _lazy("simmerge.bandit_cli:run_bandit_cli")

    sel = bsub.add_parser("select", help="choose a merge for two experts (state created if new)")
    _add_pair_arguments(sel)
    sel.add_argument("--state", required=True, help="bandit state file (JSON)")
    sel.add_argument(
        "--policy", default=None, help="lints, linucb, egreedy, random or predictor (new state)"
    )
    sel.add_argument("--seed", type=int, default=0, help="random seed of a new state")
    sel.set_defaults(func=handler)

    upd = bsub.add_parser("update", help="feed a pending choice's reward back")
    upd.add_argument("--state", required=True, help="bandit state file (JSON)")
    upd.add_argument("--choice", type=int, required=True, help="choice id printed by select")
    upd.add_argument("--reward", type=float, default=None, help="measured reward in [0, 1]")
    upd.add_argument("--verify", action="store_true", help="merge and evaluate to measure it")
    upd.add_argument("--store", default=None, help="outcome store for --verify's outcomes")
    upd.add_argument("--device", default=None, help="cpu or cuda (for --verify)")
    upd.set_defaults(func=handler)

    for name, text in (("add-arm", "add an operator configuration"), ("remove-arm", "drop one")):
        q = bsub.add_parser(name, help=text)
        q.add_argument("--state", required=True, help="bandit state file (JSON)")
        q.add_argument("arm", help="operator configuration id, e.g. 'ties[density=0.3]'")
        q.set_defaults(func=handler)


def _add_scan_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan",
        help="scan a catalog: features.parquet, ranking.json and report.html (resumable)",
    )
    p.add_argument("catalog", help="catalog YAML")
    p.add_argument("--out", required=True, help="output folder (re-run to resume)")
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument(
        "--workers", type=int, default=1, help="local: processes (1 = in-process); ray: CPUs"
    )
    p.add_argument(
        "--address", default=None, help="ray: cluster address ('auto' = this machine's cluster)"
    )
    p.add_argument(
        "--predictor", default=None, help="predictor folder or shipped name (default: default)"
    )
    p.add_argument("--top", type=int, default=5, help="candidates kept per pair")
    p.add_argument("--plans", type=int, default=5, help="multi-way plans kept (0: none)")
    p.add_argument("--tasks", default=None, help="multi-way target tasks (default: all)")
    p.add_argument("--max-models", type=int, default=3, help="multi-way: most experts in a plan")
    p.add_argument(
        "--beam",
        type=int,
        default=None,
        help="multi-way: beam width (default: every chain in fast mode where feasible, else 4)",
    )
    p.add_argument(
        "--mode", default="fast", choices=("fast", "exact"), help="multi-way feature mode"
    )
    p.add_argument("--plan-model", default=None, help=PLAN_MODEL_HELP)
    p.add_argument("--store", default=None, help="outcome store with verified outcomes to plot")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--cache-dir", default=None, help="signature/sketch cache (shared folder on Ray)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_lazy("simmerge.scanner:run_scan_cli"))


def _add_export_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a scanned merge as a mergekit config")
    p.add_argument("plan_id", help="plan id from the scan's ranking.json / report.html")
    p.add_argument("--scan", required=True, help="scan folder (or its ranking.json)")
    p.add_argument("--format", default="mergekit", choices=("mergekit",))
    p.add_argument("--out", default=None, help="output YAML (default: print)")
    p.add_argument(
        "--catalog", default=None, help="catalog YAML (default: the one the scan recorded)"
    )
    p.set_defaults(func=_lazy("simmerge.export:run_export_cli"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simmerge", description="Predict which model merge to make, then make it."
    )
    parser.add_argument("--version", action="version", version=f"simmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_merge_cli,
        _add_eval_cli,
        _add_zoo_cli,
        _add_demo_cli,
        _add_features_cli,
        _add_collect_cli,
        _add_rank_cli,
        _add_verify_cli,
        _add_train_cli,
        _add_bandit_cli,
        _add_scan_cli,
        _add_export_cli,
    ):
        add(sub)
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
