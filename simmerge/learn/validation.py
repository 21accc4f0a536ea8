"""Selector evaluation: held-out splits and the metrics of DESIGN.md.

A *selector* ranks the candidates of a pair by a predicted pair objective (the mean predicted
normalized score over the pair's tasks, :func:`~simmerge.learn.datasets.pair_objective`). On
held-out pairs we compare its pick with the **oracle** (best actual candidate), **best-fixed**
(the one candidate with the best mean on the *training* pairs) and **random**:

* gap closure = Σ(selected − best_fixed) / Σ(oracle − best_fixed);
* % of oracle = Σ selected / Σ oracle; with k verifications, the best actual of the top k;
* top-1 accuracy (the pick is an oracle candidate); Spearman ρ of predicted vs actual within a
  pair (mean over pairs); risk = share of pairs where the pick is worse than best-fixed by more
  than 0.01;
* ``gap_closure_90``: a 90 % bootstrap interval of the gap closure over the test pairs.

Splits never share a model between training and test (:func:`model_folds`), or never share a
task (:func:`task_folds`): random row splits would leak a pair's other candidates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

PAIR = ["catalog", "a", "b"]
RISK_MARGIN = 0.01
TIE = 1e-9


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray  # boolean masks over the rows of the training frame
    test: np.ndarray


def model_folds(frame: pd.DataFrame, k: int = 5, seed: int = 0) -> Iterator[Fold]:
    """Group k-fold by model: test pairs have both models in the fold, training pairs neither
    (pairs with one model on each side are unused in that fold)."""
    models = sorted(
        set(zip(frame["catalog"], frame["a"], strict=True))
        | set(zip(frame["catalog"], frame["b"], strict=True))
    )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(models))
    a_key = list(zip(frame["catalog"], frame["a"], strict=True))
    b_key = list(zip(frame["catalog"], frame["b"], strict=True))
    for i in range(k):
        held = {models[j] for j in order[i::k]}
        in_a = np.array([m in held for m in a_key])
        in_b = np.array([m in held for m in b_key])
        yield Fold(f"models-{i}", train=~in_a & ~in_b, test=in_a & in_b)


def task_folds(frame: pd.DataFrame) -> Iterator[Fold]:
    """Leave one task out: test pairs involve the task, training pairs do not."""
    pair_tasks = frame.groupby(PAIR)["task"].agg(lambda s: frozenset(s))
    keys = list(zip(frame["catalog"], frame["a"], frame["b"], strict=True))
    tasks_of = [pair_tasks[k] for k in keys]
    for task in sorted(frame["task"].unique()):
        involved = np.array([task in ts for ts in tasks_of])
        yield Fold(f"task-{task}", train=~involved, test=involved)


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


def per_pair(
    actual: pd.Series,
    predicted: pd.Series,
    best_fixed: str,
    k_verify: int = 3,
    verified: pd.Series | None = None,
) -> list[PairOutcome]:
    """Outcome of selecting by ``predicted`` on every pair (both series indexed by
    PAIR + candidate); pairs lacking the best-fixed candidate are skipped.

    ``verified`` is the measurement that the k verifications see, when it is not ``actual``:
    with a second, independent measurement as ``actual`` (:func:`cross_validate`'s
    ``remeasured``), a user verifies the top k with the first one and gets the second's
    score of the one that measured best."""
    from scipy.stats import spearmanr

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
        "gap_closure_90": list(gap_closure_interval(outcomes)),
    }


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


class LinearBaseline:
    """The Mergeability-Bench approach: a ridge regression on the same features
    (median-imputed, standardized). Same fit/predict contract as the predictor."""

    def __init__(self, columns, alpha: float = 1.0) -> None:
        self.columns = tuple(columns)
        self.alpha = alpha
        self._model = None

    def fit(self, frame: pd.DataFrame, y) -> LinearBaseline:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._model = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            Ridge(alpha=self.alpha),
        )
        self._model.fit(frame[list(self.columns)].to_numpy(dtype=float), np.asarray(y))
        return self

    def predict(self, frame: pd.DataFrame):
        pred = self._model.predict(frame[list(self.columns)].to_numpy(dtype=float))
        return pred, np.zeros_like(pred)


def anchor(predicted: pd.Series, best_fixed: str, margin: float) -> pd.Series:
    """The anchored selection rule: the best-fixed candidate's predicted score gets a bonus of
    ``margin``, so another candidate is picked (or ranked above it) only when the predictor
    expects it to beat best-fixed by more than ``margin``. Trades a little gap closure for
    much lower risk when predictions are noisy."""
    if margin == 0:
        return predicted
    bonus = np.where(predicted.index.get_level_values("candidate") == best_fixed, margin, 0.0)
    return predicted + bonus


def with_extra(train: pd.DataFrame, extra: pd.DataFrame | None) -> pd.DataFrame:
    """A fold's training rows plus training-only rows from other catalogs (``extra``). Extra
    pairs that involve a task absent from ``train`` are dropped, so a held-out task stays
    unseen; extra catalogs hold other models, so held-out models stay unseen too."""
    if extra is None or extra.empty:
        return train
    unseen = ~extra["task"].isin(set(train["task"]))
    drop = unseen.groupby([extra[k] for k in PAIR]).transform("any")
    return pd.concat([train, extra[~drop.to_numpy()]], ignore_index=True)


MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
MAX_RISK = 0.10


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
        train, test = with_extra(frame[fold.train], extra), frame[fold.test].copy()
        if train.empty or test.empty:
            continue
        model = factory().fit(train, train["target"].to_numpy())
        test["pred"] = model.predict(test)[0]
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
            test[f"pred_{name}"] = model.predict(test)[0]
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
