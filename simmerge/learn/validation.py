"""Cross-validation of selectors: every method scored on the same held-out pairs.

:func:`cross_validate` fits each selector on a fold's training pairs (:mod:`simmerge.learn.
splits`) and scores its picks with :mod:`simmerge.learn.metrics` against best-fixed, random and
the oracle; anchored variants use the rule of :mod:`simmerge.learn.anchoring`.
:class:`LinearBaseline` is the linear predictor of the Mergeability-Bench kind we compare with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from simmerge.learn.anchoring import anchor, choose_margin
from simmerge.learn.metrics import (
    PairOutcome,
    best_fixed_candidate,
    per_pair,
    random_outcomes,
    summarize,
)
from simmerge.learn.splits import Fold, with_extra


class LinearBaseline:
    """The Mergeability-Bench approach: a ridge regression on the same features
    (median-imputed, standardized). Same fit/predict contract as the predictor."""

    def __init__(self, columns, alpha: float = 1.0) -> None:
        self.columns = columns
        self.alpha = alpha

    def fit(self, frame: pd.DataFrame, y) -> LinearBaseline:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model_ = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            Ridge(alpha=self.alpha),
        )
        self.model_.fit(frame[list(self.columns)].to_numpy(dtype=float), np.asarray(y))
        return self

    def predict(self, frame: pd.DataFrame, return_std: bool = False):
        pred = self.model_.predict(frame[list(self.columns)].to_numpy(dtype=float))
        return (pred, np.zeros_like(pred)) if return_std else pred


@dataclass(frozen=True)
class CrossValidation:
    pooled: dict[str, list[PairOutcome]]  # per-pair outcomes of each method over all folds
    margins: list[float]  # anchoring margin chosen in each fold (anchored models)

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: summarize(outs) for name, outs in self.pooled.items()}


def cross_validate(
    frame: pd.DataFrame,
    folds: Iterator[Fold],
    models: dict[str, object],
    k_verify: int = 3,
    anchored: tuple[str, ...] = (),
    extra: pd.DataFrame | None = None,
    remeasured: pd.Series | None = None,
) -> CrossValidation:
    """Pooled per-pair outcomes over ``folds`` for each selector in ``models`` (name ->
    factory returning an unfitted model with ``fit(frame, y)`` / ``predict(frame)``), plus
    ``best_fixed``, ``random`` and ``oracle``. Models named in ``anchored`` are also scored
    with the anchored rule (as ``<name>_anchored``), its margin chosen by inner
    cross-validation on each fold's training pairs only. ``extra`` rows (other catalogs) are
    added to every fold's training set (:func:`with_extra`), never tested on.

    ``remeasured`` is a second, independent measurement of test pairs' objective (indexed by
    PAIR + candidate; ``scripts/remeasure_outcomes.py``). With it only the pairs it covers are
    tested, and every method's pick is scored on it, while the k verifications see the first
    measurement: the test labels then carry no noise that selection, verification or the
    oracle's own argmax was exposed to. It adds ``exhaustive``: the argmax of the first
    measurement, i.e. what merging and evaluating every candidate would have picked."""
    from simmerge.learn.datasets import pair_objective

    pooled: dict[str, list[PairOutcome]] = {
        name: [] for name in [*models, *(f"{n}_anchored" for n in anchored)]
    }
    pooled.update({"best_fixed": [], "random": [], "oracle": []})
    if remeasured is not None:
        pooled["exhaustive"] = []
    margins: list[float] = []
    for fold in folds:
        test = frame[fold.test].copy()
        if remeasured is not None:
            pairs = set(remeasured.index.droplevel("candidate"))
            keys = zip(test["catalog"], test["a"], test["b"], strict=True)
            test = test[[k in pairs for k in keys]]
        train = with_extra(frame[fold.train], extra)
        if fold.train.sum() == 0 or test.empty:
            continue
        best_fixed = best_fixed_candidate(pair_objective(train, "target"))
        first = pair_objective(test, "target")
        scored = first if remeasured is None else remeasured.reindex(first.index)
        outcomes = partial(
            per_pair, scored, best_fixed=best_fixed, k_verify=k_verify, verified=first
        )

        for name, factory in models.items():
            model = factory().fit(train, train["target"].to_numpy())
            test[f"pred_{name}"] = model.predict(test)
            predicted = pair_objective(test, f"pred_{name}")
            pooled[name] += outcomes(predicted)
            if name in anchored:
                margin = choose_margin(frame[fold.train], factory, extra=extra)
                margins.append(margin)
                pooled[f"{name}_anchored"] += outcomes(anchor(predicted, best_fixed, margin))
        fixed = pd.Series(
            [float(c == best_fixed) for c in first.index.get_level_values("candidate")],
            index=first.index,
        )
        pooled["best_fixed"] += outcomes(fixed)
        pooled["oracle"] += outcomes(scored)
        pooled["random"] += random_outcomes(scored, best_fixed, k_verify, verified=first)
        if remeasured is not None:
            pooled["exhaustive"] += outcomes(first)
    return CrossValidation(pooled, margins)
