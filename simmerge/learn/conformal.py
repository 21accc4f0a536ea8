"""Prediction intervals with a stated coverage: split-conformal on held-out residuals.

The ensemble's spread says how much its members disagree, not how far their mean is from the
truth: members bagged from the same rows agree on the same mistakes. A calibrated interval
comes from the errors the predictor makes on models it did not see. Cross-validation by
held-out models (:func:`simmerge.learn.validation.out_of_fold`) gives, for every (pair,
candidate) of the training data, a prediction of the pair objective (the mean over the pair's
tasks, what ``rank`` shows) by a model that never saw either expert, and the spread of that
prediction. The nonconformity score of a row is ``|y - prediction| / ((spread + floor) *
widen)`` (normalized conformal: rows the members disagree on get wider intervals; ``floor``,
the median spread, keeps a near-zero spread from making a near-zero interval; ``widen`` is
below). The interval at level ``L`` is ``prediction +- q * (spread + floor) * widen``, with
``q`` the ``ceil((n + 1) L) / n`` empirical quantile of the n scores (split conformal).

Exchangeability is what makes the coverage hold, and a pair unlike the training pairs breaks
it. Out of distribution (:mod:`simmerge.learn.domain`) ``widen`` is the pair's domain score
over the threshold (at least 1; 1 in distribution): the further from the training data, the
wider. Calibration divides each held-out residual by the factor its own pair had (a held-out
model can lie outside a fold's training domain too), so one rule makes and uses the interval.
Whether it is wide enough far out is measured, not assumed (``scripts/interval_coverage.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simmerge.errors import PredictorError

LEVEL = 0.9


@dataclass(frozen=True)
class IntervalCalibration:
    """What a predictor's card keeps to turn a prediction and its spread into an interval."""

    level: float  # nominal coverage
    quantile: float  # q: the conformal quantile of the normalized residuals
    floor: float  # added to every spread (the calibration rows' median spread)
    calibration_rows: int  # (pair, candidate) rows the quantile was taken over
    split: str  # how the calibration residuals were held out

    @classmethod
    def fit(
        cls,
        residuals: Sequence[float],
        spreads: Sequence[float],
        level: float = LEVEL,
        split: str = "held-out models",
        widen: Sequence[float] | None = None,
    ) -> IntervalCalibration:
        """Calibrate on held-out absolute residuals and the spreads of the same predictions
        (``widen``: each row's out-of-distribution widening, as it will be applied)."""
        r = np.abs(np.asarray(residuals, dtype=np.float64))
        s = np.asarray(spreads, dtype=np.float64)
        w = np.ones_like(r) if widen is None else np.asarray(widen, dtype=np.float64)
        if not 0.0 < level < 1.0:
            raise PredictorError(f"Interval level {level} is not in (0, 1).", "use e.g. 0.9.")
        ok = np.isfinite(r) & np.isfinite(s) & np.isfinite(w)
        r, s, w = r[ok], s[ok], w[ok]
        if len(r) < 2:
            raise PredictorError(
                f"Interval calibration needs held-out residuals, got {len(r)}.",
                "calibrate on the out-of-fold predictions of a cross-validation.",
            )
        floor = max(float(np.median(s)), 1e-6)
        scores = r / ((s + floor) * w)
        return cls(level, conformal_quantile(scores, level), floor, int(len(r)), split)

    def half_width(self, spread: float | np.ndarray, widen: float | np.ndarray = 1.0):
        """Half the interval's width for a prediction with this ensemble ``spread``."""
        return self.quantile * (np.asarray(spread) + self.floor) * np.asarray(widen)

    def interval(self, predicted: float, spread: float, widen: float = 1.0) -> tuple[float, float]:
        h = float(self.half_width(spread, widen))
        return predicted - h, predicted + h

    def to_card(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_card(cls, entry: Mapping[str, Any] | None) -> IntervalCalibration | None:
        """The card's ``interval`` entry (None for a predictor saved without one)."""
        if not entry:
            return None
        try:
            return cls(
                float(entry["level"]),
                float(entry["quantile"]),
                float(entry["floor"]),
                int(entry["calibration_rows"]),
                str(entry["split"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PredictorError(
                f"The predictor card's interval entry is garbled ({exc!r}).",
                "recompute it: python scripts/add_interval_calibration.py --predictor FOLDER.",
            ) from None


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) level) / n`` empirical quantile (inf when n is too small for it)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    rank = math.ceil((n + 1) * level)
    return float(scores[rank - 1]) if rank <= n else math.inf


def widening(in_distribution: bool | None, score: float | None, threshold: float | None) -> float:
    """How much wider an interval is out of distribution: the domain score over its threshold
    (1 in distribution, or when the predictor has no training domain)."""
    if in_distribution is None or in_distribution or not score or not threshold:
        return 1.0
    return max(1.0, float(score) / float(threshold))


def combined_spread(stds: Sequence[float] | np.ndarray) -> float:
    """The spread of a mean over a pair's tasks from the per-task spreads (root mean square):
    the one rule for ranking and calibration."""
    stds = np.asarray(stds, dtype=np.float64)
    return float(math.sqrt(float(np.mean(stds**2))))
