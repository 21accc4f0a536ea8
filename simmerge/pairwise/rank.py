"""Rank the candidate merges of a pair without merging anything, then verify the top ones.

:func:`rank_merges` computes (cached) signatures and sketches of the two experts, their pair
features, and asks the predictor for every candidate x target task; a candidate's predicted
score is the mean over the target tasks of its predicted normalized score. :func:`verify`
really merges and evaluates the top k, writes the outcomes to a store (they can refit the
predictor: ``simmerge train``) and reports how far each prediction was off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from simmerge.catalog import Catalog, CatalogModel
from simmerge.errors import CatalogError, ConfigError, NotPredictableError
from simmerge.learn.anchoring import anchored_scores, check_margin
from simmerge.learn.conformal import combined_spread, widening
from simmerge.learn.domain import DomainCheck, pair_verdict
from simmerge.learn.loading import load_predictor
from simmerge.learn.predictor import MergePredictor, design_row
from simmerge.merging.grid import DEFAULT_GRID, OperatorConfig, distinct_merges
from simmerge.signals.profiles import FeatureOptions, build_profiles
from simmerge.signals.similarity import ModelProfile, functional_features, pair_features


@dataclass(frozen=True)
class RankedCandidate:
    """A ranked merge: the plan, its predicted score (mean predicted normalized score over the
    target tasks) with an uncertainty (ensemble spread), an interval with a stated coverage
    (:mod:`simmerge.learn.conformal`; widened out of distribution) and the features that drove
    it."""

    rank: int
    models: tuple[str, str]
    candidate: str  # OperatorConfig id
    plan_id: str
    tasks: tuple[str, ...]
    predicted: float
    uncertainty: float
    per_task: dict[str, float]
    top_features: tuple[tuple[str, float], ...]
    best_fixed: bool = False  # the predictor's training data's best single candidate
    # is the pair inside the predictor's training data (None: the predictor has no domain)
    in_distribution: bool | None = None
    domain_score: float | None = None  # distance to the nearest training pairs
    domain_threshold: float | None = None  # the largest distance called in distribution
    unusual: tuple[tuple[str, float], ...] = ()  # columns furthest outside the training range
    # the calibrated interval (None: the predictor's card has no interval calibration)
    interval: tuple[float, float] | None = None
    interval_level: float | None = None  # its nominal coverage, measured in distribution
    # the better-ranked candidate that is the same merge (merging.grid.merge_key), if any:
    # verification skips it, as measuring it again would buy nothing
    same_merge_as: str | None = None

    @property
    def config(self) -> OperatorConfig:
        return OperatorConfig.from_id(self.candidate)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_features"] = [{"feature": f, "contribution": c} for f, c in self.top_features]
        d["unusual"] = [{"feature": f, "iqr_beyond_range": v} for f, v in self.unusual]
        return d


@dataclass(frozen=True)
class ConfigVerdict:
    """What ranking made of one user config: its candidate and rank, or why it has none."""

    path: str
    candidate: str | None
    reason: str | None = None
    rank: int | None = None
    predicted: float | None = None

    def placed(self, ranked: Sequence[RankedCandidate]) -> ConfigVerdict:
        hit = next((c for c in ranked if c.candidate == self.candidate), None)
        if hit is None:
            return self
        return replace(self, rank=hit.rank, predicted=hit.predicted)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_verdicts(
    catalog: Catalog,
    experts: Sequence[str],
    paths: Sequence[str],
    grid: Sequence[OperatorConfig] = DEFAULT_GRID,
) -> tuple[list[ConfigVerdict], tuple[OperatorConfig, ...]]:
    """Read the user's mergekit configs for the pair ``experts``; return a verdict per file and
    the grid extended by the predictable ones (a config equal to a grid entry adds nothing)."""
    from simmerge.merging import load_config
    from simmerge.merging.grid import candidate_from_config

    a, b = _pair(catalog, experts)
    extended = list(grid)
    verdicts = []
    for path in paths:
        config = load_config(path)
        try:
            cand = candidate_from_config(
                config, str(catalog.base.path), str(a.path), str(b.path), extended
            )
        except NotPredictableError as exc:
            verdicts.append(ConfigVerdict(path=str(path), candidate=None, reason=exc.what))
            continue
        if cand not in extended:
            extended.append(cand)
        verdicts.append(ConfigVerdict(path=str(path), candidate=cand.id))
    return verdicts, tuple(extended)


def _pair(catalog: Catalog, experts: Sequence[str]) -> tuple[CatalogModel, CatalogModel]:
    if len(experts) != 2 or experts[0] == experts[1]:
        raise ConfigError(
            f"rank_merges ranks merges of two distinct experts, got {list(experts)}.",
            "pass exactly two expert names (multi-way plans come from plan_merge).",
        )
    a, b = (catalog.model(n) for n in experts)
    for m in (a, b):
        if m is catalog.base:
            raise CatalogError(
                f"{m.name!r} is the catalog's base model, not an expert.",
                f"pick experts among: {', '.join(catalog.expert_names)}.",
            )
    return a, b


@dataclass(frozen=True)
class PairInputs:
    """What the predictor needs about a pair: its general features and, per target task, the
    task's functional features (None when the task has no probe set)."""

    a: CatalogModel
    b: CatalogModel
    tasks: tuple[str, ...]
    general: dict[str, float]
    task_features: dict[str, dict[str, float] | None]


def pair_inputs(
    catalog: Catalog,
    experts: Sequence[str],
    tasks: Sequence[str] | None = None,
    *,
    options: FeatureOptions | None = None,
    progress: bool = False,
) -> PairInputs:
    """Signatures and sketches of the two experts (cached) and their pair features.
    ``tasks`` defaults to the union of the two experts' tasks."""
    a, b = _pair(catalog, experts)
    tasks = list(tasks) if tasks else sorted({*a.tasks, *b.tasks})
    if not tasks:
        raise ConfigError(
            f"Experts {a.name!r} and {b.name!r} declare no tasks, so there is nothing to rank for.",
            "pass tasks=[...] (CLI: --tasks t1,t2).",
        )
    profiles = build_profiles(catalog, options, experts=[a.name, b.name], progress=progress)
    return inputs_from_profiles(a, b, tasks, profiles[a.name], profiles[b.name])


def inputs_from_profiles(
    a: CatalogModel, b: CatalogModel, tasks: Sequence[str], pa: ModelProfile, pb: ModelProfile
) -> PairInputs:
    """:class:`PairInputs` from already-loaded profiles (a catalog scan ranks every pair)."""
    task_feats = {
        t: functional_features(pa.signatures[t], pb.signatures[t])
        if t in pa.signatures and t in pb.signatures
        else None
        for t in tasks
    }
    return PairInputs(a, b, tuple(tasks), pair_features(pa, pb).as_dict(), task_feats)


def rank_merges(
    catalog: Catalog,
    experts: Sequence[str],
    tasks: Sequence[str] | None = None,
    top: int | None = 5,
    *,
    predictor: MergePredictor | str | Path | None = None,
    grid: Sequence[OperatorConfig] = DEFAULT_GRID,
    options: FeatureOptions | None = None,
    contributions: int = 5,
    progress: bool = False,
    inputs: PairInputs | None = None,
    explain: int | None = None,
    margin: float | None = None,
) -> list[RankedCandidate]:
    """Candidates for merging ``experts`` (a, b), best first (see the module docs).

    Order: predicted score, except that the predictor's best-fixed candidate is kept first
    unless another is predicted to beat it by more than the card's margin (the anchored rule
    of :func:`simmerge.learn.anchoring.anchor`, with the margin chosen by cross-validation).
    ``margin`` overrides the card's; 0 is the plain pick (the argmax of the prediction), which
    closes more of the gap and takes more risk (docs/results/pairwise.md). When the pair lies
    outside the predictor's training data (its training domain, :mod:`simmerge.learn.domain`)
    and no ``margin`` is given, the anchor is kept first whatever the predictions say.

    ``tasks`` defaults to the union of the two experts' tasks; a task with a probe set in the
    catalog also contributes its task-specific functional features. ``inputs`` (from
    :func:`pair_inputs`) skips recomputing the pair's features. ``contributions`` features
    (LightGBM ``pred_contrib``, the costly part) are listed for the ``explain`` best candidates
    (default: every candidate returned).
    """
    check_margin(margin)
    model = load_predictor(predictor)
    inputs = inputs or pair_inputs(catalog, experts, tasks, options=options, progress=progress)
    a, b, tasks = inputs.a, inputs.b, list(inputs.tasks)
    general, task_feats = inputs.general, inputs.task_features
    rows, keys = [], []
    for config in grid:
        for t in tasks:
            rows.append(design_row(general, task_feats[t], t in a.tasks, t in b.tasks, config))
            keys.append((config, t))
    mean, std = model.predict(rows, return_std=True)
    domain = _pair_domain(model, rows[: len(tasks)])

    scored = []
    n_tasks = len(tasks)
    for i, config in enumerate(grid):
        sl = slice(i * n_tasks, (i + 1) * n_tasks)
        plan = config.plan(str(catalog.base.path), str(a.path), str(b.path))
        scored.append(
            (
                float(mean[sl].mean()),
                combined_spread(std[sl]),
                config,
                plan.plan_id,
                {t: float(v) for t, v in zip(tasks, mean[sl], strict=True)},
                i,
            )
        )
    # the predictor's selection rule (card "selection", chosen by cross-validation): best-fixed
    # is preferred unless another candidate is predicted to beat it by more than the margin
    rule = model.card_.get("selection") or {}
    best_fixed = rule.get("best_fixed")
    outside = domain is not None and not domain.in_distribution
    if margin is None and outside and best_fixed:
        margin = math.inf  # out of distribution the predicted gaps mean little: keep the anchor
    margin = float(rule.get("margin", 0.0)) if margin is None else float(margin)
    ranked = anchored_scores([s[0] for s in scored], [s[2].id for s in scored], best_fixed, margin)
    order = [scored[i] for i in np.argsort(-ranked, kind="stable")]
    same = distinct_merges([s[2].id for s in order])
    kept = order[:top]
    n_explain = len(kept) if explain is None else min(explain, len(kept))
    feats = _top_features(model, rows, [s[5] for s in kept[:n_explain]], n_tasks, contributions)
    calibration = getattr(model, "interval_", None)
    widen = 1.0 if domain is None else widening(domain.in_distribution, domain.score,
                                                  domain.threshold)  # fmt: skip
    return [
        RankedCandidate(
            rank=r + 1,
            models=(a.name, b.name),
            candidate=config.id,
            plan_id=plan_id,
            tasks=tuple(tasks),
            predicted=pred,
            uncertainty=unc,
            per_task=per_task,
            top_features=feats[r] if r < len(feats) else (),
            best_fixed=config.id == best_fixed,
            in_distribution=None if domain is None else domain.in_distribution,
            domain_score=None if domain is None else domain.score,
            domain_threshold=None if domain is None else domain.threshold,
            unusual=() if domain is None else domain.unusual,
            interval=None if calibration is None else calibration.interval(pred, unc, widen),
            interval_level=None if calibration is None else calibration.level,
            same_merge_as=same.get(config.id),
        )
        for r, (pred, unc, config, plan_id, per_task, _) in enumerate(kept)
    ]


def _pair_domain(model: MergePredictor, rows: list) -> DomainCheck | None:
    """The pair's verdict: its worst target task's (the domain ignores the candidate)."""
    return pair_verdict(model.check_domain(rows) or [])


def _top_features(
    model: MergePredictor, rows: list, configs: list[int], n_tasks: int, k: int
) -> list[tuple[tuple[str, float], ...]]:
    """The ``k`` largest mean contributions over the tasks, for each of the grid positions
    ``configs`` (only their rows go through pred_contrib)."""
    if not k or not configs:
        return []
    picked = [rows[i * n_tasks + j] for i in configs for j in range(n_tasks)]
    contrib = model.contributions(picked)[:, :-1]
    out = []
    for n in range(len(configs)):
        c = contrib[n * n_tasks : (n + 1) * n_tasks].mean(axis=0)
        order = np.argsort(-np.abs(c))[:k]
        out.append(tuple((model.columns[j], float(c[j])) for j in order))
    return out
