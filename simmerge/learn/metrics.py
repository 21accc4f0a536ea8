"""The selection metrics, one definition each (docs/design.md, "Metrics").

A *selector* ranks the candidates of a pair by a predicted pair objective (the mean predicted
normalized score over the pair's tasks, :func:`~simmerge.learn.datasets.pair_objective`). On
held-out pairs its pick is compared with the **oracle** (best actual candidate), **best-fixed**
(the one candidate with the best mean on the *training* pairs) and **random**:

* gap closure = Σ(selected − best_fixed) / Σ(oracle − best_fixed);
* % of oracle = Σ selected / Σ oracle; with k verifications, the best actual of the top k;
* top-1 accuracy (the pick is an oracle candidate); Spearman ρ of predicted vs actual within a
  pair (mean over pairs); risk = share of pairs where the pick is worse than best-fixed by more
  than :data:`RISK_MARGIN`;
* ``gap_closure_90``: a 90 % bootstrap interval of the gap closure over the test pairs;
* ``mean_abs_error``: mean over pairs of the mean |predicted - actual| over their candidates
  (for selectors that predict the score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from simmerge.learn.splits import PAIR

RISK_MARGIN = 0.01
TIE = 1e-9


def best_fixed_candidate(actual: pd.Series) -> str:
    """The candidate with the best mean pair objective (``actual`` indexed by PAIR+candidate)."""
    return str(actual.groupby("candidate").mean().idxmax())


@dataclass
class PairOutcome:
    oracle: float
    best_fixed: float
    selected: float
    top_k: float
    top1: float  # 1.0 when the pick is an oracle candidate (random: the chance of that)
    spearman: float
    # mean |predicted - actual| over the pair's candidates (meaningful for predictors of the
    # score, not for indicator selectors such as best-fixed; NaN where not computed)
    abs_error: float = float("nan")


def per_pair(
    actual: pd.Series,
    predicted: pd.Series,
    best_fixed: str,
    k_verify: int = 3,
    verified: pd.Series | None = None,
    distinct: bool = False,
) -> list[PairOutcome]:
    """Outcome of selecting by ``predicted`` on every pair (both series indexed by
    PAIR + candidate); pairs lacking the best-fixed candidate are skipped.

    ``verified`` is the measurement that the k verifications see, when it is not ``actual``:
    with a second, independent measurement as ``actual`` (:func:`cross_validate`'s
    ``remeasured``), a user verifies the top k with the first one and gets the second's
    score of the one that measured best. With ``distinct`` the k verified are k distinct merges,
    as ``simmerge verify`` picks them (:func:`simmerge.merging.grid.distinct_merges`)."""
    from scipy.stats import spearmanr

    from simmerge.merging.grid import distinct_merges

    df = pd.DataFrame({"actual": actual, "pred": predicted}).dropna(subset=["actual"])
    df["verified"] = df["actual"] if verified is None else verified.reindex(df.index)
    out = []
    for _, g in df.groupby(level=PAIR, sort=True):
        cands = g.index.get_level_values("candidate")
        if best_fixed not in cands:
            continue
        act = g["actual"].to_numpy()
        pred = g["pred"].to_numpy()
        order = np.argsort(-pred, kind="stable")
        top = order[:k_verify]
        if distinct:
            same = distinct_merges([cands[i] for i in order])
            top = np.array([i for i in order if cands[i] not in same][:k_verify])
        oracle = float(act.max())
        rho = float("nan")
        if np.ptp(act) > TIE and np.ptp(pred) > TIE:
            rho = float(spearmanr(act, pred).statistic)
        out.append(
            PairOutcome(
                oracle=oracle,
                best_fixed=float(act[list(cands).index(best_fixed)]),
                selected=float(act[order[0]]),
                top_k=float(act[top[np.argmax(g["verified"].to_numpy()[top])]]),
                top1=float(act[order[0]] >= oracle - TIE),
                spearman=rho,
                abs_error=float(np.mean(np.abs(pred - act))),
            )
        )
    return out


def summarize(outcomes: list[PairOutcome]) -> dict[str, float]:
    """Aggregate metrics over pairs (see the module docs)."""
    if not outcomes:
        return {"pairs": 0}
    sel = np.array([o.selected for o in outcomes])
    bf = np.array([o.best_fixed for o in outcomes])
    ora = np.array([o.oracle for o in outcomes])
    topk = np.array([o.top_k for o in outcomes])
    gap = float((ora - bf).sum())
    rhos = [o.spearman for o in outcomes if o.spearman == o.spearman]
    return {
        "pairs": len(outcomes),
        "mean_selected": float(sel.mean()),
        "mean_best_fixed": float(bf.mean()),
        "mean_oracle": float(ora.mean()),
        "gap_closure": float((sel - bf).sum() / gap) if gap > TIE else float("nan"),
        "pct_of_oracle": float(sel.sum() / ora.sum()) if ora.sum() > 0 else float("nan"),
        "pct_of_oracle_top_k": float(topk.sum() / ora.sum()) if ora.sum() > 0 else float("nan"),
        "top1_accuracy": float(np.mean([o.top1 for o in outcomes])),
        "spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "risk": float(np.mean(sel < bf - RISK_MARGIN)),
        "mean_abs_error": _nanmean([o.abs_error for o in outcomes]),
        "gap_closure_90": list(gap_closure_interval(outcomes)),
    }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def gap_closure_interval(
    outcomes: list[PairOutcome], level: float = 0.9, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of the gap closure, resampling pairs: how far the
    figure could move with other test pairs of the same kind (it is a ratio of sums over a
    few dozen pairs, so it moves a lot)."""
    sel = np.array([o.selected for o in outcomes])
    bf = np.array([o.best_fixed for o in outcomes])
    ora = np.array([o.oracle for o in outcomes])
    if len(outcomes) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(outcomes), size=(draws, len(outcomes)))
    gap = (ora - bf)[idx].sum(axis=1)
    ok = gap > TIE
    values = (sel - bf)[idx].sum(axis=1)[ok] / gap[ok]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def random_outcomes(
    actual: pd.Series,
    best_fixed: str,
    k_verify: int = 3,
    draws: int = 50,
    seed: int = 0,
    verified: pd.Series | None = None,
) -> list[PairOutcome]:
    """The random selector, averaged over ``draws`` random rankings per pair (``verified``
    as in :func:`per_pair`)."""
    rng = np.random.default_rng(seed)
    seen = actual if verified is None else verified
    out = []
    for _, g in actual.dropna().groupby(level=PAIR, sort=True):
        cands = list(g.index.get_level_values("candidate"))
        if best_fixed not in cands:
            continue
        act = g.to_numpy()
        ver = seen.reindex(g.index).to_numpy()
        oracle = float(act.max())
        perms = [rng.permutation(len(act))[:k_verify] for _ in range(draws)]
        out.append(
            PairOutcome(
                oracle=oracle,
                best_fixed=float(act[cands.index(best_fixed)]),
                selected=float(act.mean()),
                top_k=float(np.mean([act[p[np.argmax(ver[p])]] for p in perms])),
                top1=float(np.mean(act >= oracle - TIE)),
                spearman=0.0,
            )
        )
    return out
