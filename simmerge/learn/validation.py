"""Cross-validation of selectors: every method scored on the same held-out pairs.

:func:`cross_validate` fits each selector on a fold's training pairs (:mod:`simmerge.learn.
splits`) and scores its picks with :mod:`simmerge.learn.metrics` against best-fixed, random and
the oracle; anchored variants use the rule of :mod:`simmerge.learn.anchoring`.
:class:`LinearBaseline` is the linear predictor of the Mergeability-Bench kind we compare with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
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
    # each model's out-of-fold predictions of the pair objective (:func:`out_of_fold`'s rows)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)

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
    distinct: bool = False,
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
    measurement, i.e. what merging and evaluating every candidate would have picked.
    ``distinct``: the k verified are k distinct merges (:func:`~simmerge.learn.metrics.
    per_pair`), as ``simmerge verify`` picks them."""
    from simmerge.learn.datasets import pair_objective

    pooled: dict[str, list[PairOutcome]] = {
        name: [] for name in [*models, *(f"{n}_anchored" for n in anchored)]
    }
    pooled.update({"best_fixed": [], "random": [], "oracle": []})
    if remeasured is not None:
        pooled["exhaustive"] = []
    margins: list[float] = []
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in models}
    for fold in folds:
        test = frame[fold.test].copy()
        if remeasured is not None:
            pairs = set(remeasured.index.droplevel("candidate"))
            keys = zip(test["catalog"], test["a"], test["b"], strict=True)
            test = test[[k in pairs for k in keys]]
        train = with_extra(frame[fold.train], extra, test)
        if fold.train.sum() == 0 or test.empty:
            continue
        # best-fixed from the catalog's own training pairs: what a user of this catalog knows
        best_fixed = best_fixed_candidate(pair_objective(frame[fold.train], "target"))
        first = pair_objective(test, "target")
        scored = first if remeasured is None else remeasured.reindex(first.index)
        outcomes = partial(
            per_pair,
            scored,
            best_fixed=best_fixed,
            k_verify=k_verify,
            verified=first,
            distinct=distinct,
        )

        for name, factory in models.items():
            model = factory().fit(train, train["target"].to_numpy())
            mean, std = predict_with_spread(model, test)
            test[f"pred_{name}"] = mean
            parts[name].append(
                objective_rows(test, mean, std, fold.name, pair_widening(model, test))
            )
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
    return CrossValidation(pooled, margins, {n: _concat_oof(p) for n, p in parts.items()})


OOF_KEYS = ["catalog", "a", "b", "candidate"]


def out_of_fold(frame: pd.DataFrame, folds: Iterator[Fold], factory) -> pd.DataFrame:
    """Held-out predictions of the pair objective: for each fold, a model from ``factory``
    fitted on its training rows predicts its test rows; per (pair, candidate) the mean over the
    pair's tasks of target and prediction, and the combined ensemble spread
    (:func:`simmerge.learn.conformal.combined_spread`). One row per (fold, pair, candidate),
    with the fold's name in ``fold``: what interval calibration and its coverage check use."""
    parts = []
    for fold in folds:
        test = frame[fold.test]
        if fold.train.sum() == 0 or test.empty:
            continue
        model = factory().fit(frame[fold.train], frame.loc[fold.train, "target"].to_numpy())
        mean, std = predict_with_spread(model, test)
        parts.append(objective_rows(test, mean, std, fold.name, pair_widening(model, test)))
    return _concat_oof(parts)


def predict_with_spread(model, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, ensemble spread) of any selector; NaN spread for one that has none."""
    import inspect

    if "return_std" in inspect.signature(model.predict).parameters:
        mean, std = model.predict(frame, return_std=True)
        return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    mean = np.asarray(model.predict(frame), dtype=np.float64)
    return mean, np.full(len(mean), np.nan)


def pair_widening(model, frame: pd.DataFrame) -> np.ndarray:
    """Per row of ``frame``, the interval widening of its pair under ``model``'s training domain
    (:func:`simmerge.learn.conformal.widening` of :func:`simmerge.learn.domain.pair_verdict`,
    as ranking applies it); 1 for a selector without a domain."""
    from simmerge.learn.conformal import widening
    from simmerge.learn.domain import pair_verdict

    check = getattr(model, "check_domain", None)
    checks = check(frame) if check is not None else None
    if not checks:
        return np.ones(len(frame))
    keys = list(zip(frame["catalog"], frame["a"], frame["b"], strict=True))
    by_pair: dict[tuple, list] = {}
    for key, c in zip(keys, checks, strict=True):
        by_pair.setdefault(key, []).append(c)
    factor = {}
    for key, cs in by_pair.items():
        v = pair_verdict(cs)
        factor[key] = widening(v.in_distribution, v.score, v.threshold)
    return np.array([factor[k] for k in keys])


def objective_rows(test: pd.DataFrame, mean, std, fold: str, widen: np.ndarray) -> pd.DataFrame:
    """Per (pair, candidate) of a fold's test rows: mean target and prediction over the pair's
    tasks, the combined spread (root mean square, as ranking combines it) and the pair's
    out-of-distribution widening (``in_distribution`` where it is 1)."""
    rows = test[OOF_KEYS].copy()
    rows["target"] = test["target"].to_numpy()
    rows["pred"] = np.asarray(mean, dtype=np.float64)
    rows["var"] = np.asarray(std, dtype=np.float64) ** 2
    rows["widen"] = np.asarray(widen, dtype=np.float64)
    agg = rows.groupby(OOF_KEYS, sort=True).mean().reset_index()
    agg["in_distribution"] = agg["widen"] <= 1.0
    agg["spread"] = np.sqrt(agg.pop("var"))
    agg["fold"] = fold
    return agg


def _concat_oof(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(
            columns=[*OOF_KEYS, "target", "pred", "widen", "in_distribution", "spread", "fold"]
        )
    return pd.concat(parts, ignore_index=True)


def conformal_coverage(oof: pd.DataFrame, level: float) -> dict[str, object]:
    """Cross-conformal check of the interval rule on out-of-fold predictions: each fold's rows
    are covered or not by the interval calibrated on the other folds' rows of *other pairs*
    (a pair tested in two folds, as with held-out tasks, never calibrates itself). Returns the
    pooled coverage and mean interval width (overall, in and out of distribution) and the
    per-fold figures."""
    pair = list(zip(oof["catalog"], oof["a"], oof["b"], strict=True))
    pair_s = pd.Series(pair, index=oof.index)
    hits: list[pd.Series] = []
    halves: list[pd.Series] = []
    per_fold = []
    for name, test in oof.groupby("fold", sort=True):
        pairs = set(pair_s[test.index])
        calib = oof[(oof["fold"] != name) & ~pair_s.isin(pairs)]
        if len(calib) < 2:
            continue
        cal = calibration_of(calib, level)
        half = cal.half_width(test["spread"].to_numpy(), _widen(test))
        hit = np.abs(test["target"].to_numpy() - test["pred"].to_numpy()) <= half
        per_fold.append(
            {
                "fold": name,
                "rows": len(test),
                "coverage": float(hit.mean()),
                "mean_width": float(2 * half.mean()),
                "out_of_distribution": int((~_inside(test)).sum()),
            }
        )
        hits.append(pd.Series(hit, index=test.index))
        halves.append(pd.Series(half, index=test.index))
    if not hits:
        return {"level": level, "rows": 0, "coverage": float("nan"),
                "mean_width": float("nan"), "folds": per_fold}  # fmt: skip
    return {"level": level, **coverage_summary(oof.loc[pd.concat(hits).index],
                                               pd.concat(hits), pd.concat(halves)),
            "folds": per_fold}  # fmt: skip


def calibration_of(oof: pd.DataFrame, level: float):
    """:class:`~simmerge.learn.conformal.IntervalCalibration` of out-of-fold rows."""
    from simmerge.learn.conformal import IntervalCalibration

    return IntervalCalibration.fit(
        oof["target"] - oof["pred"], oof["spread"], level, widen=_widen(oof)
    )


def coverage_summary(rows: pd.DataFrame, hit: pd.Series, half: pd.Series) -> dict[str, object]:
    """Coverage and mean width of scored rows, overall and in / out of distribution."""
    inside = _inside(rows).to_numpy()
    hit, half = hit.to_numpy(dtype=bool), half.to_numpy(dtype=np.float64)

    def part(mask: np.ndarray) -> dict[str, float | int]:
        n = int(mask.sum())
        return {
            "rows": n,
            "coverage": float(hit[mask].mean()) if n else float("nan"),
            "mean_width": float(2 * half[mask].mean()) if n else float("nan"),
        }

    everything = part(np.ones(len(hit), dtype=bool))
    return {**everything, "in_distribution": part(inside), "out_of_distribution": part(~inside)}


def _widen(oof: pd.DataFrame) -> np.ndarray:
    return oof["widen"].to_numpy() if "widen" in oof else np.ones(len(oof))


def _inside(oof: pd.DataFrame) -> pd.Series:
    if "in_distribution" in oof:
        return oof["in_distribution"].astype(bool)
    return pd.Series(True, index=oof.index)
