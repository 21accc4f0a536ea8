"""Fit a :class:`~simmerge.learn.predictor.MergePredictor` on training tables and save it with a
card.

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

from simmerge.learn.anchoring import choose_margin
from simmerge.learn.conformal import LEVEL, IntervalCalibration
from simmerge.learn.datasets import load_training_tables, pair_objective, training_frame
from simmerge.learn.metrics import best_fixed_candidate, summarize
from simmerge.learn.predictor import DEFAULT_ENSEMBLE, MergePredictor
from simmerge.learn.splits import model_folds
from simmerge.learn.validation import calibration_of, conformal_coverage, cross_validate


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
    interval = None
    if cv_folds >= 2:
        factory = partial(MergePredictor, n_models=n_models, seed=seed)
        cv = cross_validate(frame, model_folds(frame, cv_folds, seed), {"simmerge": factory})
        card["cv_held_out_models"] = {
            name: summarize(cv.pooled[name]) for name in ("simmerge", "best_fixed", "oracle")
        }
        oof = cv.predictions["simmerge"]
        interval = calibrate_interval(oof) if len(oof) >= MIN_CALIBRATION_ROWS else None
    factory = partial(MergePredictor, n_models=n_models, seed=seed)
    card["selection"] = {
        "best_fixed": best_fixed_candidate(pair_objective(frame, "target")),
        "margin": choose_margin(frame, factory, seed=seed) if cv_folds >= 2 else 0.0,
        "rule": "predicted score; best_fixed's raised by margin (simmerge.learn.anchoring.anchor)",
    }
    model = factory().fit(frame, frame["target"].to_numpy())
    model.card_.update(card)
    if interval is not None:
        model.set_interval(*interval)
    return model


# fewer held-out (pair, candidate) rows than this give no interval (the card says so)
MIN_CALIBRATION_ROWS = 20


def calibrate_interval(
    oof: pd.DataFrame, level: float = LEVEL
) -> tuple[IntervalCalibration, dict[str, Any]]:
    """The interval calibration from held-out-model out-of-fold predictions (all of them), and
    its coverage measured the cross-conformal way (each fold by the other folds' calibration)."""
    calibration = calibration_of(oof, level)
    coverage = conformal_coverage(oof, level)
    return calibration, {
        "split": "held-out models",
        "coverage": coverage["coverage"],
        "mean_width": coverage["mean_width"],
        "rows": coverage["rows"],
        "out_of_distribution_rows": coverage["out_of_distribution"]["rows"],
    }


def gather_training_tables(
    datasets: Sequence[str] = (),
    *,
    store: str | Path | None = None,
    catalog: str | Path | None = None,
    options: Any | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Feature and outcome tables to fit on, and their source names: shipped or local
    ``datasets``, plus the outcomes of ``store`` (measured on ``catalog``, whose pair features
    are computed with ``options``). Outcome rows measured twice (same pair, candidate, task and
    eval config) are kept once."""
    from simmerge.catalog import Catalog
    from simmerge.errors import ConfigError
    from simmerge.learn.datasets import feature_frame, outcome_frame
    from simmerge.outcomes.store import OutcomeStore

    features, outcomes, sources = [], [], []
    for name in datasets:
        f, o = load_training_tables(name)
        features.append(f)
        outcomes.append(o)
        sources.append(f"dataset:{name}")
    if store is not None:
        if catalog is None:
            raise ConfigError(
                "--store needs --catalog (the catalog whose outcomes the store holds).",
                "add --catalog CATALOG.yaml.",
            )
        cat = Catalog.load(catalog)
        with OutcomeStore(store) as db:
            outcomes.append(outcome_frame(db, cat))
        features.append(feature_frame(cat, options, progress=False))
        sources.append(f"store:{Path(store).name}:{cat.name}")
    if not outcomes:
        raise ConfigError("Nothing to train on.", "pass --data NAME and/or --store + --catalog.")
    outcome_table = pd.concat(outcomes, ignore_index=True).drop_duplicates(
        subset=["catalog", "a", "b", "candidate", "task", "eval_hash"]
    )
    return pd.concat(features, ignore_index=True), outcome_table, sources
