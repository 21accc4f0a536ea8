"""2-way commands: ``features``, ``collect``, ``train``, ``rank`` and ``verify`` of a pair."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from simmerge.cli.options import (
    MARGIN_HELP,
    add_cache,
    add_catalog,
    add_device,
    add_executor,
    add_pair,
    comma_list,
)
from simmerge.cli.output import emit, progress

RESUME_COLLECT = (
    "Finished (pair, candidate) merges are kept in {store}: run the same command again to resume."
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "features",
        parents=[common],
        help="pair similarity features for every ordered expert pair (x task)",
    )
    add_catalog(p)
    p.add_argument("--out", required=True, help="output parquet file")
    p.add_argument(
        "--probes", default="general", help="general probe set: a shipped name or a file"
    )
    p.add_argument("--probe-column", default="text", help="prompt column of the probe files")
    p.add_argument("--no-general", action="store_true", help="task probe sets only")
    add_device(p)
    add_cache(p)
    p.set_defaults(func=run_features)

    p = sub.add_parser(
        "collect",
        parents=[common],
        help="merge + evaluate every expert pair x candidate into an outcome store (resumable)",
    )
    add_catalog(p)
    p.add_argument("--store", required=True, help="outcome store (SQLite; resumed if present)")
    p.add_argument(
        "--candidates",
        type=comma_list,
        default=None,
        help="candidate ids, comma-separated (default: the whole grid)",
    )
    p.add_argument("--models", type=comma_list, default=None, help="expert subset, comma-separated")
    p.add_argument(
        "--shard", default=None, help="K/N: only shard K of N (run N processes on one store)"
    )
    add_executor(
        p,
        "where the merges run (one job per pair x block of candidates; this process alone "
        "writes the store)",
    )
    add_device(p)
    p.set_defaults(func=run_collect, resume=RESUME_COLLECT)

    p = sub.add_parser(
        "train", parents=[common], help="fit a merge predictor on training data and/or a store"
    )
    p.add_argument(
        "--data",
        type=lambda s: comma_list(s) if s else (),
        default=("zoo-large",),
        help="shipped datasets or folders, comma-separated ('' = none; default: zoo-large)",
    )
    p.add_argument("--store", default=None, help="outcome store to add (needs --catalog)")
    p.add_argument("--catalog", default=None, help="catalog of the store's outcomes")
    p.add_argument("--out", required=True, help="output predictor folder")
    p.add_argument(
        "--n-models", type=int, default=None, help="ensemble size (default: the predictor's, 5)"
    )
    p.add_argument("--cv-folds", type=int, default=5, help="held-out-model folds for the card")
    p.add_argument("--seed", type=int, default=0, help="LightGBM and fold seed")
    add_device(p)
    add_cache(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "rank",
        parents=[common],
        help="rank every candidate merge of two experts from similarity features (no merge run)",
    )
    add_pair(p)
    p.add_argument("--top", type=int, default=5, help="number of candidates to show")
    p.add_argument("--margin", type=float, default=None, help=MARGIN_HELP)
    p.add_argument(
        "--configs",
        type=comma_list,
        default=None,
        help="your mergekit YAML files, comma-separated: each is predicted and ranked with the "
        "built-in candidates (or listed as not predictable, with the reason)",
    )
    p.set_defaults(func=run_rank)

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="rank two experts' merges, then really merge and evaluate the top k",
    )
    add_pair(p)
    p.add_argument("--k", type=int, default=None, help="number of candidates to verify (3)")
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="instead of k full evaluations, spend N evaluated examples (one example of one "
        "task for one candidate) by successive halving over the ranking",
    )
    p.add_argument("--margin", type=float, default=None, help=MARGIN_HELP)
    p.add_argument("--store", default=None, help="outcome store to record the verified merges")
    add_executor(p, "where the k merges run (ray: k tasks side by side; not with --budget)")
    p.set_defaults(func=run_verify)


def _options(args: argparse.Namespace, **extra):
    from simmerge.signals.profiles import FeatureOptions

    return FeatureOptions(device=args.device, cache_dir=args.cache_dir, **extra)


def run_features(args: argparse.Namespace) -> int:
    from simmerge.catalog import Catalog
    from simmerge.signals.profiles import build_profiles, feature_rows, write_feature_table

    catalog = Catalog.load(args.catalog)
    options = _options(
        args,
        general_probes=None if args.no_general else args.probes,
        probe_column=args.probe_column,
    )
    rows = feature_rows(build_profiles(catalog, options, progress=progress(args)))
    out = write_feature_table(rows, args.out)
    n_cols = len(rows[0].names) if rows else 0
    payload = {"rows": len(rows), "features": n_cols, "out": str(out)}
    return emit(args, payload, f"{len(rows)} rows x {n_cols} features -> {out}")


def run_collect(args: argparse.Namespace) -> int:
    from simmerge.catalog import Catalog
    from simmerge.merging.grid import grid_from_ids
    from simmerge.outcomes.collection import (
        collect_outcomes,
        expert_pairs,
        parse_shard,
        shard_pairs,
    )
    from simmerge.outcomes.store import OutcomeStore

    catalog = Catalog.load(args.catalog)
    grid = grid_from_ids(list(args.candidates) if args.candidates else None)
    pairs = expert_pairs(catalog, args.models)
    if args.shard:
        pairs = shard_pairs(pairs, *parse_shard(args.shard))
    with OutcomeStore(args.store) as store:
        summary = collect_outcomes(
            catalog,
            store,
            grid,
            pairs=pairs,
            device=args.device,
            progress=progress(args),
            executor=args.executor,
            workers=args.workers,
            address=args.address,
        )
        total = len(store)
    text = (
        f"{summary.jobs} (pair, candidate) jobs: {summary.skipped} already stored, "
        f"{summary.merged} merged+evaluated, {summary.reused} reused from an equal merge; "
        f"{summary.rows} new rows ({total} in {args.store}) in {summary.seconds:.0f} s"
    )
    payload = {**asdict(summary), "store": args.store, "store_rows": total}
    return emit(args, {**payload, "executor": args.executor}, text)


def run_train(args: argparse.Namespace) -> int:
    from simmerge.learn.fitting import fit_predictor, gather_training_tables
    from simmerge.learn.predictor import DEFAULT_ENSEMBLE

    features, outcomes, sources = gather_training_tables(
        args.data, store=args.store, catalog=args.catalog, options=_options(args)
    )
    model = fit_predictor(
        features,
        outcomes,
        n_models=DEFAULT_ENSEMBLE if args.n_models is None else args.n_models,
        seed=args.seed,
        cv_folds=args.cv_folds,
        sources=sources,
    )
    out = model.save(args.out)
    cv = model.card_.get("cv_held_out_models", {}).get("simmerge", {})
    text = f"trained on {model.card_['training_rows']} rows ({', '.join(sources)}) -> {out}" + (
        f"; held-out-model gap closure {cv['gap_closure']:.3f}" if cv else ""
    )
    payload = {
        "out": str(out),
        "training_rows": model.card_["training_rows"],
        "sources": sources,
        "cv_held_out_models": cv or None,
    }
    return emit(args, payload, text)


def _ranked(args: argparse.Namespace, top: int | None, grid=None):
    from simmerge.catalog import Catalog
    from simmerge.merging.grid import DEFAULT_GRID
    from simmerge.pairwise.rank import rank_merges

    catalog = Catalog.load(args.catalog)
    ranked = rank_merges(
        catalog,
        args.models,
        args.tasks,
        top=top,
        grid=DEFAULT_GRID if grid is None else grid,
        predictor=args.predictor,
        options=_options(args),
        progress=progress(args),
        margin=args.margin,
    )
    return catalog, ranked


def run_rank(args: argparse.Namespace) -> int:
    from simmerge.cli.formatting import format_config_verdicts, format_ranking

    if not args.configs:
        _, ranked = _ranked(args, args.top)
        return emit(args, [c.to_dict() for c in ranked], format_ranking(ranked))
    from simmerge.catalog import Catalog
    from simmerge.pairwise.rank import config_verdicts

    catalog = Catalog.load(args.catalog)
    verdicts, grid = config_verdicts(catalog, args.models, args.configs)
    _, ranked = _ranked(args, None, grid)
    verdicts = [v.placed(ranked) for v in verdicts]
    mine = {v.candidate for v in verdicts if v.candidate}
    shown = [c for c in ranked if c.rank <= args.top or c.candidate in mine]
    payload = {"ranking": [c.to_dict() for c in shown], "configs": [v.to_dict() for v in verdicts]}
    text = format_ranking(shown) + "\n\n" + format_config_verdicts(verdicts)
    return emit(args, payload, text)


def run_verify(args: argparse.Namespace) -> int:
    from simmerge.cli.formatting import format_budgeted, format_verify
    from simmerge.errors import ConfigError
    from simmerge.infra.executors import in_process
    from simmerge.pairwise.budgeted import verify_budgeted
    from simmerge.pairwise.verify import verify

    if args.budget is not None and args.k is not None:
        raise ConfigError(
            "verify takes --k or --budget, not both.",
            "pass --k K for k full evaluations, or --budget N to spend N evaluated examples.",
        )
    if args.budget is not None and not in_process(args.executor, args.workers):
        raise ConfigError(
            "verify --budget runs in this process (its rounds depend on each other).",
            "drop --executor/--workers, or verify with --k on the executor.",
        )
    catalog, ranked = _ranked(args, None)
    if args.budget is not None:
        report = verify_budgeted(catalog, ranked, args.budget, store=args.store, device=args.device)
        return emit(args, report.to_dict(), format_budgeted(report))
    k = 3 if args.k is None else args.k
    report = verify(
        catalog,
        ranked,
        k=k,
        store=args.store,
        device=args.device,
        executor=args.executor,
        workers=args.workers,
        address=args.address,
    )
    return emit(args, report.to_dict(), format_verify(report))
