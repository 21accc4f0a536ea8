"""Budgeted verification: spend a budget of evaluated examples by successive halving over the
predictor's ranking (:mod:`simmerge.pairwise.halving`) instead of k full evaluations.

The rungs score prefixes of a fixed shuffle of each task's eval set
(:meth:`~simmerge.evaluation.scorer.MergeScorer.example_order`), so a low-fidelity score is an
unbiased sample of the full one and all candidates see the same examples. Each rung merges its
candidates again (one merged state in memory at a time, as in :func:`verify`): the budget counts
evaluated examples, the report also counts merges. A candidate that reached every example of
its tasks was fully measured: its outcome rows equal what :func:`verify` records, and only
those go to the store (a partial score is not an outcome of the eval set).

The rungs compare candidates by their measured score shrunk toward the predictor's
(:mod:`simmerge.pairwise.halving`), unless the ranking is flagged out of the predictor's domain:
a prediction the model cannot back is not evidence, so then only measurements decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simmerge.catalog import Catalog
from simmerge.errors import ConfigError
from simmerge.evaluation.scorer import MergeScorer, reference_score
from simmerge.merging import merge
from simmerge.outcomes.collection import outcome_rows
from simmerge.outcomes.store import OutcomeStore
from simmerge.pairwise.halving import (
    ETA,
    MIN_EXAMPLES,
    PRIOR_EXAMPLES,
    Rung,
    successive_halving,
)
from simmerge.pairwise.rank import RankedCandidate
from simmerge.pairwise.verify import distinct_top


@dataclass(frozen=True)
class ScoredCandidate:
    rank: int
    candidate: str
    predicted: float
    examples: int  # examples per task it was scored on
    measured: float  # its mean normalized score over the pair's tasks on those examples
    full: bool  # scored on every example of its tasks (then ``measured`` is its outcome)


@dataclass(frozen=True)
class BudgetedReport:
    models: tuple[str, str]
    tasks: tuple[str, ...]
    budget: int
    spent: int  # example evaluations used
    merges: int  # merges made (a candidate is merged again at each rung it is scored in)
    rungs: tuple[Rung, ...]
    winner: str
    scored: tuple[ScoredCandidate, ...]  # best measured first
    in_distribution: bool | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # (candidate, the same merge ranked better)
    survivors: tuple[tuple[str, ...], ...] = field(default=())
    prior_examples: float = 0.0  # what the predictions counted for (0: measurements alone)

    @property
    def best(self) -> ScoredCandidate:
        return next(s for s in self.scored if s.candidate == self.winner)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "tasks": list(self.tasks),
            "budget": self.budget,
            "spent": self.spent,
            "merges": self.merges,
            "rungs": [asdict(r) for r in self.rungs],
            "winner": self.winner,
            "scored": [asdict(s) for s in self.scored],
            "in_distribution": self.in_distribution,
            "skipped_as_same_merge": [{"candidate": c, "same_as": o} for c, o in self.skipped],
            "survivors": [list(s) for s in self.survivors],
            "prior_examples": self.prior_examples,
        }


def verify_budgeted(
    catalog: Catalog,
    candidates: Sequence[RankedCandidate],
    budget: int,
    *,
    store: OutcomeStore | str | Path | None = None,
    device: Any | None = None,
    scorer: MergeScorer | None = None,
    cache_dir: str | Path | None = None,
    eta: int = ETA,
    min_examples: int = MIN_EXAMPLES,
    prior_examples: float = PRIOR_EXAMPLES,
) -> BudgetedReport:
    """Successive halving over the distinct merges of ``candidates`` (one pair's ranking, best
    first) within ``budget`` example evaluations (module docs); fully measured candidates are
    recorded in ``store`` when given. ``prior_examples``: what a prediction is worth in examples
    per task (0: measurements alone; ignored out of the predictor's domain)."""
    if not candidates:
        raise ConfigError("verify got no candidates.", "rank a pair first (rank_merges).")
    if len({c.models for c in candidates}) != 1:
        raise ConfigError(
            "budgeted verification expects the candidates of one pair.",
            "verify each pair's ranking separately.",
        )
    a, b = (catalog.model(n) for n in candidates[0].models)
    tasks = list(candidates[0].tasks)
    scorer = scorer or MergeScorer(catalog, device)
    missing = [t for t in tasks if t not in scorer.tasks]
    if missing:
        raise ConfigError(
            f"Cannot verify on task(s) {missing}: the catalog has no eval data for them.",
            "add `tasks: {NAME: {eval: FILE}}` to the catalog or rank for other tasks.",
        )
    picked, skipped = distinct_top(candidates, len(candidates))
    by_id = {c.candidate: c for c in picked}
    refs = scorer.expert_scores(tasks, cache_dir=cache_dir)
    ref = {t: reference_score(catalog, refs, t, (a.name, b.name)) for t in tasks}
    sizes = {t: len(scorer.tasks[t].examples) for t in tasks}
    raw: dict[str, dict[str, list[float]]] = {}  # candidate -> task -> [sum, n] of raw scores
    merges = 0

    def score(cand: str, start: int, stop: int) -> dict[str, tuple[float, int]]:
        nonlocal merges
        config = by_id[cand].config
        plan = config.plan(str(catalog.base.path), str(a.path), str(b.path))
        merges += 1
        part = scorer.score_state_slice(merge(plan, device=str(scorer.device)), tasks, start, stop)
        out = {}
        for t, (s, n) in part.items():
            acc = raw.setdefault(cand, {}).setdefault(t, [0.0, 0])
            acc[0] += s
            acc[1] += n
            out[t] = (s / ref[t] if ref[t] > 0 else 0.0, n)
        return out

    prior = prior_of(picked)
    result = successive_halving(
        [c.candidate for c in picked],
        budget,
        len(tasks),
        max(sizes.values()),  # a smaller task's slices just end sooner
        score,
        eta=eta,
        min_examples=min_examples,
        prior=prior,
        prior_examples=prior_examples,
    )
    scored = []
    for cand, (examples, measured) in result.scores.items():
        full = all(raw[cand][t][1] == sizes[t] for t in tasks)
        c = by_id[cand]
        scored.append(ScoredCandidate(c.rank, cand, c.predicted, examples, measured, full))
    scored.sort(key=lambda s: (-s.examples, -s.measured, s.rank))
    _record(store, catalog, a, b, by_id, raw, scored, scorer, refs, tasks)
    return BudgetedReport(
        models=(a.name, b.name),
        tasks=tuple(tasks),
        budget=budget,
        spent=result.spent,
        merges=merges,
        rungs=tuple(result.rungs),
        winner=result.winner,
        scored=tuple(scored),
        in_distribution=candidates[0].in_distribution,
        skipped=tuple(skipped),
        survivors=tuple(tuple(s) for s in result.survivors),
        prior_examples=prior_examples if prior is not None else 0.0,
    )


def prior_of(picked: Sequence[RankedCandidate]) -> dict[str, float] | None:
    """The predictions the rungs may lean on: none when the ranking is out of the predictor's
    domain (module docs)."""
    if any(c.in_distribution is False for c in picked):
        return None
    return {c.candidate: c.predicted for c in picked}


def _record(store, catalog, a, b, by_id, raw, scored, scorer, refs, tasks) -> None:
    full = [s for s in scored if s.full]
    if store is None or not full:
        return
    own_store = isinstance(store, (str, Path))
    db = OutcomeStore(store) if own_store else store
    try:
        hashes = {t: scorer.eval_hash(t) for t in tasks}
        for s in full:
            config = by_id[s.candidate].config
            plan_id = config.plan(str(catalog.base.path), str(a.path), str(b.path)).plan_id
            means = {t: raw[s.candidate][t][0] / raw[s.candidate][t][1] for t in tasks}
            db.add(outcome_rows(catalog, a, b, config, plan_id, means, hashes, refs))
    finally:
        if own_store:
            db.close()
