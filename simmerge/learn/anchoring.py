"""The anchored selection rule, the one copy that training evaluation and serving both call.

The best-fixed candidate's predicted score gets a bonus of ``margin``, so another candidate is
picked (or ranked above it) only when the predictor expects it to beat best-fixed by more than
``margin``: a little gap closure traded for much lower risk when predictions are noisy. The
margin is chosen by inner cross-validation (:func:`choose_margin`) and kept in the
predictor's card; ``rank_merges`` orders candidates by :func:`anchored_scores` with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from simmerge.errors import ConfigError
from simmerge.learn.metrics import best_fixed_candidate, per_pair, summarize
from simmerge.learn.splits import model_folds, with_extra

MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
MAX_RISK = 0.10


def check_margin(margin: float | None) -> None:
    """A margin must be a finite number >= 0 (None: the card's)."""
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(
            f"The anchoring margin must be a number >= 0, not {margin!r}.",
            "pass 0 for the plain pick, or leave it out for the predictor card's margin.",
        )


def anchored_scores(
    scores: Sequence[float] | np.ndarray,
    candidates: Sequence[str],
    best_fixed: str | None,
    margin: float,
) -> np.ndarray:
    """``scores`` of ``candidates`` with ``margin`` added to best-fixed's: what is ranked."""
    scores = np.asarray(scores, dtype=float)
    if margin == 0 or best_fixed is None:
        return scores
    return scores + np.where(np.asarray(candidates) == best_fixed, margin, 0.0)


def anchor(predicted: pd.Series, best_fixed: str, margin: float) -> pd.Series:
    """:func:`anchored_scores` of pair objectives indexed by PAIR + candidate."""
    if margin == 0:
        return predicted
    candidates = predicted.index.get_level_values("candidate")
    return pd.Series(
        anchored_scores(predicted.to_numpy(), candidates, best_fixed, margin),
        index=predicted.index,
        name=predicted.name,
    )


def choose_margin(
    frame: pd.DataFrame,
    factory,
    k: int = 3,
    seed: int = 0,
    margins=MARGINS,
    extra: pd.DataFrame | None = None,
) -> float:
    """Pick the anchoring margin by inner cross-validation on ``frame`` (held-out models):
    the margin with the largest total gain over best-fixed among those whose risk is at most
    :data:`MAX_RISK`; the smallest-risk margin when none is."""
    from simmerge.learn.datasets import pair_objective

    preds, actuals, fixed = [], [], []
    for fold in model_folds(frame, k, seed):
        test = frame[fold.test].copy()
        train = with_extra(frame[fold.train], extra, test)
        if train.empty or test.empty:
            continue
        model = factory().fit(train, train["target"].to_numpy())
        test["pred"] = model.predict(test)
        preds.append(pair_objective(test, "pred"))
        actuals.append(pair_objective(test, "target"))
        fixed.append(best_fixed_candidate(pair_objective(train, "target")))
    if not preds:
        return 0.0
    scored = []
    for m in margins:
        outs = []
        for p, a, bf in zip(preds, actuals, fixed, strict=True):
            outs += per_pair(a, anchor(p, bf, m), bf)
        res = summarize(outs)
        gain = sum(o.selected - o.best_fixed for o in outs)
        scored.append(
            (res["risk"] <= MAX_RISK, gain if res["risk"] <= MAX_RISK else -res["risk"], m)
        )
    return max(scored)[2]
