"""What a predictor was trained on, so it can say when a pair is unlike anything it has seen.

A LightGBM model answers confidently everywhere; far from its training data its answer is an
extrapolation and its ensemble spread says nothing about that. The training domain keeps, for
the pair-level feature columns (the level model's: everything but the candidate's), a robust
standardization (median and inter-quartile range), the 0.5 % / 99.5 % quantiles, and up to
:data:`REFERENCE_ROWS` standardized training rows. A query row's **score** is its mean distance
to its ``k`` nearest reference rows; it is **in distribution** when that is at most the
threshold: the :data:`COVERAGE` quantile of the scores of training rows *of held-out models*
against the rows of the other models (:func:`held_out_scores`), so that a new model like the
training models is in distribution, while a pair from another family is not. The held-out
scores are pooled over :data:`HELD_OUT_PARTITIONS` partitions of the models: one partition
tests only the pairs whose two models fall in one group (a fifth of them), too few rows for a
99th percentile on a catalog of twenty models, whose estimate then falls short and flags new
models of the same kind too often. (Without the
rows' models, the threshold falls back to the reference rows' own scores, each without
itself, which is stricter: the other rows of a training pair are close.) The columns furthest
outside their training range (in IQR units) say what is unusual.

Missing values (NaN) sit at the median (z = 0), and standardized values are clipped to
``+-CLIP`` so that one absurd column cannot hide all the others. Everything is numpy: a query
costs one distance matrix against the reference rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simmerge.errors import PredictorError
from simmerge.learn.splits import deal_models

REFERENCE_ROWS = 2000
NEIGHBOURS = 5
COVERAGE = 0.99
CLIP = 20.0
DOMAIN_FILE = "domain.npz"
MIN_HELD_OUT = 20  # held-out-model scores needed to calibrate the threshold on them
HELD_OUT_PARTITIONS = 4  # partitions of the models into folds whose held-out scores are pooled


@dataclass(frozen=True)
class DomainCheck:
    """One row's verdict: inside the training data or not, how far, and which columns."""

    in_distribution: bool
    score: float
    threshold: float
    unusual: tuple[tuple[str, float], ...]  # (column, IQR units outside the training range)


@dataclass(frozen=True)
class TrainingDomain:
    columns: tuple[str, ...]
    median: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    reference: np.ndarray  # standardized rows
    threshold: float
    k: int

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        columns: Sequence[str],
        seed: int = 0,
        pairs: Sequence[tuple[str, str]] | None = None,
        partitions: int = HELD_OUT_PARTITIONS,
    ) -> TrainingDomain:
        """Fit on the training rows ``x`` (one per (pair, task), in ``columns`` order).

        With ``pairs`` (each row's two models) the threshold is calibrated on *held-out
        models* (:func:`held_out_scores`): what "in distribution" has to admit is a new model
        of the same kind, not another row of a training pair; ``partitions`` deals of the
        models into folds are pooled (:data:`HELD_OUT_PARTITIONS`)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(columns) or len(x) < 2:
            raise PredictorError(
                f"A training domain needs at least 2 rows of {len(columns)} columns, got "
                f"{x.shape}.",
                "fit it on the predictor's training rows.",
            )
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay at 0
            median = np.nan_to_num(np.nanmedian(x, axis=0))
            q25, q75 = np.nanpercentile(x, [25, 75], axis=0)
            low, high = np.nanpercentile(x, [0.5, 99.5], axis=0)
            std = np.nan_to_num(np.nanstd(x, axis=0))
        spread = np.nan_to_num(q75 - q25)
        scale = np.where(spread > 1e-12, spread, np.where(std > 1e-12, std, 1.0))
        picked = x
        if len(x) > REFERENCE_ROWS:
            rng = np.random.default_rng(seed)
            picked = x[np.sort(rng.choice(len(x), REFERENCE_ROWS, replace=False))]
        reference = _standardize(picked, median, scale)
        k = min(NEIGHBOURS, len(reference) - 1)
        own = None
        if pairs is not None:
            own = held_out_scores(
                _standardize(x, median, scale), pairs, k, seed, partitions=partitions
            )
        if own is None or len(own) < MIN_HELD_OUT:
            own = _knn_score(reference, reference, k, exclude_self=True)
        threshold = float(np.quantile(own, COVERAGE))
        return cls(tuple(columns), median, scale, np.nan_to_num(low), np.nan_to_num(high),
                   reference, threshold, k)  # fmt: skip

    def check(self, x: np.ndarray, top: int = 3) -> list[DomainCheck]:
        """A verdict per row of ``x`` (columns in :attr:`columns` order)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        scores = _knn_score(_standardize(x, self.median, self.scale), self.reference, self.k)
        out = []
        for row, score in zip(x, scores, strict=True):
            beyond = np.maximum(self.low - row, row - self.high) / self.scale
            beyond = np.nan_to_num(beyond, nan=0.0)
            order = [i for i in np.argsort(-beyond)[:top] if beyond[i] > 0]
            unusual = tuple((self.columns[i], float(beyond[i])) for i in order)
            out.append(DomainCheck(bool(score <= self.threshold), float(score), self.threshold,
                                   unusual))  # fmt: skip
        return out

    def save(self, path: Path) -> None:
        np.savez(
            path,
            columns=np.array(self.columns),
            median=self.median,
            scale=self.scale,
            low=self.low,
            high=self.high,
            reference=self.reference,
            threshold=np.array(self.threshold),
            k=np.array(self.k),
        )

    @classmethod
    def load(cls, path: Path) -> TrainingDomain:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    tuple(str(c) for c in data["columns"]),
                    data["median"],
                    data["scale"],
                    data["low"],
                    data["high"],
                    data["reference"],
                    float(data["threshold"]),
                    int(data["k"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise PredictorError(
                f"Training domain {str(path)!r} cannot be read ({exc}).",
                "recompute it: python scripts/add_training_domain.py --predictor FOLDER.",
            ) from None


def held_out_scores(
    z: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    k: int,
    seed: int,
    folds: int = 5,
    partitions: int = HELD_OUT_PARTITIONS,
) -> np.ndarray | None:
    """Domain scores of standardized rows ``z`` against the rows of the other models only
    (:func:`held_out_rows`, pooled); None when no group has both such rows and enough
    reference rows."""
    out = [scores for _, _, scores in held_out_rows(z, pairs, k, seed, folds, partitions)]
    return np.concatenate(out) if out else None


def held_out_rows(
    z: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    k: int,
    seed: int,
    folds: int = 5,
    partitions: int = HELD_OUT_PARTITIONS,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(deal, tested row indices, their scores) per fold: the models are dealt into ``folds``
    groups (as held-out-model cross-validation deals them), ``partitions`` times (seeds
    ``seed`` onwards); a row whose two models are both in a group is scored against the rows
    that involve neither, so a row can count once per deal that tests it."""
    models = sorted({m for p in pairs for m in p})
    for part in range(partitions):
        rng = np.random.default_rng(seed + part)
        rng.permutation(len(models))  # the deal's draw: the subsampling below continues after it
        for held in deal_models(models, folds, seed + part):
            a = np.array([p[0] in held for p in pairs])
            b = np.array([p[1] in held for p in pairs])
            test, ref = a & b, ~a & ~b
            if test.any() and ref.sum() > k:
                r = z[ref]
                if len(r) > REFERENCE_ROWS:
                    r = r[np.sort(rng.choice(len(r), REFERENCE_ROWS, replace=False))]
                yield part, np.flatnonzero(test), _knn_score(z[test], r, k)


def pair_verdict(checks: Sequence[DomainCheck]) -> DomainCheck | None:
    """A pair's verdict from its rows' (one per target task): the worst one, the one furthest
    beyond its threshold (the domain ignores the candidate, so any candidate's rows will do)."""
    return max(checks, key=lambda c: c.score - c.threshold) if checks else None


def _standardize(x: np.ndarray, median: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - median) / scale
    return np.clip(np.nan_to_num(z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)


def _knn_score(
    query: np.ndarray, reference: np.ndarray, k: int, *, exclude_self: bool = False
) -> np.ndarray:
    """Mean Euclidean distance of each query row to its ``k`` nearest reference rows."""
    scores = np.empty(len(query))
    for start in range(0, len(query), 512):  # bounded memory: 512 x reference distances
        q = query[start : start + 512]
        d2 = (q**2).sum(1)[:, None] + (reference**2).sum(1)[None, :] - 2.0 * q @ reference.T
        d = np.sqrt(np.maximum(d2, 0.0))
        if exclude_self:
            rows = np.arange(len(q))
            d[rows, start + rows] = np.inf
        kk = min(k, d.shape[1] - (1 if exclude_self else 0))
        scores[start : start + len(q)] = np.sort(d, axis=1)[:, :kk].mean(axis=1)
    return scores
