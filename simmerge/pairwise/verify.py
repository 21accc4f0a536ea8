"""Verification: really merge and evaluate the top-k ranked candidates.

The only step of simmerge's loop that costs merges and evaluations, k of them instead of the
whole grid, so the k are k distinct merges: a candidate that is the same merge as a
better-ranked one (the average of two experts under several names) is passed over. Each
verified merge becomes :class:`~simmerge.outcomes.store.Outcome` rows (in a store when given,
so ``simmerge train`` can refit the predictor on them) and is compared with its prediction.

The k merges run in this process one after the other, or, given an ``executor`` (``"ray"``, a
process pool), as k :class:`~simmerge.outcomes.collection.MergeBlock` jobs side by side (on
Ray, one GPU each when the cluster has GPUs); this process alone writes the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simmerge.catalog import Catalog
from simmerge.errors import ConfigError
from simmerge.evaluation.scorer import MergeScorer, normalized, reference_score
from simmerge.infra.executors import Executor, in_process, running
from simmerge.merging import merge
from simmerge.merging.grid import distinct_merges
from simmerge.outcomes.collection import MergeBlock, outcome_rows, run_merge_block
from simmerge.outcomes.store import OutcomeStore
from simmerge.pairwise.rank import RankedCandidate


@dataclass(frozen=True)
class VerifiedCandidate:
    rank: int
    candidate: str
    plan_id: str
    predicted: float
    actual: float  # mean normalized score over the candidate's tasks
    per_task: dict[str, float]  # normalized score per task
    raw: dict[str, float]  # raw task scores (general tasks too)
    # share of the base's score kept on each of the catalog's general tasks (not in ``actual``:
    # what the predictor predicts is the pair's skills; this says what the merge forgot)
    kept_general: dict[str, float] = field(default_factory=dict)

    @property
    def error(self) -> float:
        return self.predicted - self.actual


@dataclass(frozen=True)
class VerifyReport:
    models: tuple[str, str]
    tasks: tuple[str, ...]
    verified: tuple[VerifiedCandidate, ...]
    # the ranking's verdict on the pair (simmerge.learn.domain); None: no training domain
    in_distribution: bool | None = None
    # candidates passed over because a better-ranked one is the same merge: (skipped, same as)
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def best(self) -> VerifiedCandidate:
        return max(self.verified, key=lambda v: v.actual)

    @property
    def mean_abs_error(self) -> float:
        return sum(abs(v.error) for v in self.verified) / len(self.verified)

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "tasks": list(self.tasks),
            "verified": [{**asdict(v), "error": v.error} for v in self.verified],
            "best": self.best.candidate,
            "mean_abs_error": self.mean_abs_error,
            "in_distribution": self.in_distribution,
            "skipped_as_same_merge": [{"candidate": c, "same_as": o} for c, o in self.skipped],
        }


def verify(
    catalog: Catalog,
    candidates: Sequence[RankedCandidate],
    k: int = 3,
    *,
    store: OutcomeStore | str | Path | None = None,
    device: Any | None = None,
    scorer: MergeScorer | None = None,
    cache_dir: str | Path | None = None,
    distinct: bool = True,
    executor: str | Executor = "local",
    workers: int = 1,
    address: str | None = None,
) -> VerifyReport:
    """Merge and evaluate the ``k`` best of ``candidates`` (ranked output of
    :func:`~simmerge.pairwise.rank.rank_merges`); record outcomes in ``store`` when given.
    With ``distinct`` (the default) the k are distinct merges (:func:`distinct_top`); without
    it, the k best-ranked whatever they repeat (an exhaustive measurement of a grid).
    ``executor``, ``workers``, ``address``: as for
    :func:`~simmerge.outcomes.collection.collect_outcomes` (module docs)."""
    if k < 1:
        raise ConfigError(f"verify needs k >= 1, got {k}.", "verify at least one candidate.")
    if not candidates:
        raise ConfigError("verify got no candidates.", "rank a pair first (rank_merges).")
    pairs = {c.models for c in candidates}
    if len(pairs) != 1:
        raise ConfigError(
            f"verify expects the candidates of one pair, got {sorted(pairs)}.",
            "verify each pair's ranking separately.",
        )
    a, b = (catalog.model(n) for n in candidates[0].models)
    tasks = candidates[0].tasks
    own_store = isinstance(store, (str, Path))
    db = OutcomeStore(store) if own_store else store
    try:
        scorer = scorer or MergeScorer(catalog, device)
        missing = [t for t in tasks if t not in scorer.tasks]
        if missing:
            raise ConfigError(
                f"Cannot verify on task(s) {missing}: the catalog has no eval data for them.",
                "add `tasks: {NAME: {eval: FILE}}` to the catalog or rank for other tasks.",
            )
        general = [t for t in catalog.general_tasks if t in scorer.tasks and t not in tasks]
        refs = scorer.expert_scores([*tasks, *general], cache_dir=cache_dir)
        hashes = {t: scorer.eval_hash(t) for t in tasks}
        verified = []
        if distinct:
            picked, skipped = distinct_top(candidates, k)
        else:
            picked, skipped = sorted(candidates, key=lambda c: c.rank)[:k], []
        scored = [*tasks, *general]
        if in_process(executor, workers):
            plans = (
                cand.config.plan(str(catalog.base.path), str(a.path), str(b.path))
                for cand in picked
            )
            measured = (
                (scorer.score_state(merge(plan, device=str(scorer.device)), scored), plan.plan_id)
                for plan in plans
            )  # lazily: each merge is recorded before the next one starts
        else:
            blocks = [
                MergeBlock.of(catalog, a.name, b.name, (c.config,), scored, device) for c in picked
            ]
            with running(executor, workers=workers, address=address) as runner:
                done = runner.map(
                    run_merge_block, blocks, desc="verify", progress=False, gpu=blocks[0].gpu
                )
            measured = iter([d[0] for d in done])
        for cand, (raw, plan_id) in zip(picked, measured, strict=True):
            own = {t: raw[t] for t in tasks}
            rows = outcome_rows(catalog, a, b, cand.config, plan_id, own, hashes, refs)
            if db is not None:
                db.add(rows)
            per_task = {r.task: r.normalized for r in rows}
            verified.append(
                VerifiedCandidate(
                    rank=cand.rank,
                    candidate=cand.candidate,
                    plan_id=plan_id,
                    predicted=cand.predicted,
                    actual=sum(per_task.values()) / len(per_task),
                    per_task=per_task,
                    raw=raw,
                    kept_general={
                        t: normalized(raw[t], reference_score(catalog, refs, t)) for t in general
                    },
                )
            )
    finally:
        if own_store and db is not None:
            db.close()
    return VerifyReport(
        models=(a.name, b.name),
        tasks=tuple(tasks),
        verified=tuple(verified),
        in_distribution=candidates[0].in_distribution if candidates else None,
        skipped=tuple(skipped),
    )


def distinct_top(
    candidates: Sequence[RankedCandidate], k: int
) -> tuple[list[RankedCandidate], list[tuple[str, str]]]:
    """The ``k`` best-ranked candidates that are distinct merges, and the (candidate, same as)
    pairs passed over on the way (:func:`simmerge.merging.grid.distinct_merges`)."""
    ordered = sorted(candidates, key=lambda c: c.rank)
    same = distinct_merges([c.candidate for c in ordered])
    picked, skipped = [], []
    for c in ordered:
        if len(picked) == k:
            break
        if c.candidate in same:
            skipped.append((c.candidate, same[c.candidate]))
        else:
            picked.append(c)
    return picked, skipped
