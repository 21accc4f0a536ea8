"""Fit a :class:`~simmerge.predictor.MergePredictor` on training tables and save it with a card.

The card records the data it was trained on (dataset names, row counts, the hash of the design
matrix) and held-out-model cross-validation metrics, so anyone can tell what a shipped
predictor is worth without rerunning anything. ``simmerge train`` can add the outcomes of a
store (e.g. merges verified with ``simmerge verify``) to the shipped data before fitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from simmerge.predictor import DEFAULT_ENSEMBLE, MergePredictor
from simmerge.selection import (
    best_fixed_candidate,
    choose_margin,
    cross_validate,
    model_folds,
    summarize,
)
from simmerge.training_data import load_training_tables, pair_objective, training_frame


def fit_predictor(
    features: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    n_models: int = DEFAULT_ENSEMBLE,
    seed: int = 0,
    cv_folds: int = 5,
    sources: Sequence[str] = (),
    progress: bool = False,
) -> MergePredictor:
    """Cross-validate by held-out models, choose the anchoring margin of the selection rule
    (inner cross-validation), then fit on everything; metrics and rule go in the card."""
    frame = training_frame(features, outcomes)
    card: dict[str, Any] = {"training_sources": list(sources)}
    if cv_folds >= 2:
        factory = partial(MergePredictor, n_models=n_models, seed=seed)
        cv = cross_validate(frame, model_folds(frame, cv_folds, seed), {"simmerge": factory})
        card["cv_held_out_models"] = {
            name: summarize(cv.pooled[name]) for name in ("simmerge", "best_fixed", "oracle")
        }
    factory = partial(MergePredictor, n_models=n_models, seed=seed)
    card["selection"] = {
        "best_fixed": best_fixed_candidate(pair_objective(frame, "target")),
        "margin": choose_margin(frame, factory, seed=seed) if cv_folds >= 2 else 0.0,
        "rule": "predicted score; best_fixed's raised by margin (simmerge.selection.anchor)",
    }
    model = factory().fit(frame, frame["target"].to_numpy())
    model.card.update(card)
    return model


def run_train_cli(args: Any) -> int:
    from simmerge.catalog import Catalog
    from simmerge.feature_table import FeatureOptions
    from simmerge.outcomes import OutcomeStore
    from simmerge.training_data import feature_frame, outcome_frame

    features, outcomes = [], []
    sources = []
    for name in args.data.split(",") if args.data else []:
        f, o = load_training_tables(name)
        features.append(f)
        outcomes.append(o)
        sources.append(f"dataset:{name}")
    if args.store:
        if not args.catalog:
            from simmerge.errors import ConfigError

            raise ConfigError(
                "--store needs --catalog (the catalog whose outcomes the store holds).",
                "add --catalog CATALOG.yaml.",
            )
        catalog = Catalog.load(args.catalog)
        with OutcomeStore(args.store) as store:
            outcomes.append(outcome_frame(store, catalog))
        options = FeatureOptions(device=args.device, cache_dir=args.cache_dir)
        features.append(feature_frame(catalog, options, progress=False))
        sources.append(f"store:{Path(args.store).name}:{catalog.name}")
    if not outcomes:
        from simmerge.errors import ConfigError

        raise ConfigError("Nothing to train on.", "pass --data NAME and/or --store + --catalog.")
    model = fit_predictor(
        pd.concat(features, ignore_index=True),
        pd.concat(outcomes, ignore_index=True).drop_duplicates(
            subset=["catalog", "a", "b", "candidate", "task", "eval_hash"]
        ),
        n_models=DEFAULT_ENSEMBLE if args.n_models is None else args.n_models,
        seed=args.seed,
        cv_folds=args.cv_folds,
        sources=sources,
    )
    out = model.save(args.out)
    cv = model.card.get("cv_held_out_models", {}).get("simmerge", {})
    print(
        f"trained on {model.card['training_rows']} rows ({', '.join(sources)}) -> {out}"
        + (f"; held-out-model gap closure {cv['gap_closure']:.3f}" if cv else "")
    )
    return 0
