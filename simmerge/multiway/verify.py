"""Verification of multi-way plans: really merge and evaluate the top k of :func:`plan_merge`.

Why. Choosing a multi-way plan with no evaluation at all is the planner's goal, and on the tiny
zoos it falls short: its top plan closes about a third of the gap between best-fixed and the
best plan of the space (docs/results/multiway.md). Its ranking is better than its first
place, though -- the best measured plan is often a few places down -- so, as for 2-way merges
(:mod:`simmerge.pairwise.verify`), merging and evaluating the top k and keeping the best is the
cheap step between trusting the prediction and the exhaustive search: k merges (a chain's
intermediates are merged on the way) and k x |tasks| evaluations, against hundreds of each.

Scores are normalized like every multi-way score: by the best score of the catalog's experts of
each task (so 1.0 is "as good as the task's best expert").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simmerge.catalog import Catalog
from simmerge.errors import ConfigError
from simmerge.pairwise.verify import VerifiedCandidate


@dataclass(frozen=True)
class PlanVerifyReport:
    """Verified plans: each a :class:`~simmerge.pairwise.verify.VerifiedCandidate` whose
    ``candidate`` is the plan (:attr:`MultiwayPlan.id`) and ``plan_id`` its short id."""

    tasks: tuple[str, ...]
    verified: tuple[VerifiedCandidate, ...]

    @property
    def best(self) -> VerifiedCandidate:
        return max(self.verified, key=lambda v: v.actual)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": list(self.tasks),
            "verified": [{**asdict(v), "error": v.error} for v in self.verified],
            "best": self.best.candidate,
        }


def verify_plans(
    catalog: Catalog,
    plans: Sequence[Any],
    k: int = 3,
    *,
    device: Any | None = None,
    scorer: Any | None = None,
    cache_dir: str | Path | None = None,
) -> PlanVerifyReport:
    """Merge and evaluate the ``k`` best of ``plans`` (the ranked
    :class:`~simmerge.multiway.search.PlannedMerge` list of
    :func:`~simmerge.multiway.search.plan_merge`)
    on their target tasks. The experts' scores that normalize them come from the
    single-model score cache under ``cache_dir`` (simmerge.evaluation.scorer; filled by planning
    with the shipped plan model), evaluated only where missing."""
    from simmerge.evaluation.scorer import MergeScorer, normalized, reference_score
    from simmerge.multiway.search import execute_plan

    if k < 1:
        raise ConfigError(f"verify needs k >= 1, got {k}.", "verify at least one plan.")
    if not plans:
        raise ConfigError("verify got no multi-way plans.", "plan a merge first (plan_merge).")
    task_sets = {tuple(p.per_task) for p in plans}
    if len(task_sets) != 1:
        raise ConfigError(
            f"verify expects plans for one task set, got {sorted(task_sets)}.",
            "verify each task set's plans separately.",
        )
    (tasks,) = task_sets
    scorer = scorer or MergeScorer(catalog, device)
    missing = [t for t in tasks if t not in scorer.tasks or not catalog.experts_for(t)]
    if missing:
        raise ConfigError(
            f"Cannot verify on task(s) {missing}: the catalog has no eval data or no expert "
            "for them (an expert's score is what a score is normalized by).",
            "add `tasks: {NAME: {eval: FILE}}` and an expert of each target task to the catalog.",
        )
    experts = list(dict.fromkeys(e.name for t in tasks for e in catalog.experts_for(t)))
    expert_scores = scorer.model_scores(experts, tasks, cache_dir=cache_dir)
    refs = {t: reference_score(catalog, expert_scores, t) for t in tasks}
    verified = []
    for planned in sorted(plans, key=lambda p: p.rank)[:k]:
        state = execute_plan(planned.plan, catalog, device=str(scorer.device))
        raw = scorer.score_state(state, tasks)
        per_task = {t: normalized(raw[t], refs[t]) for t in tasks}
        verified.append(
            VerifiedCandidate(
                rank=planned.rank,
                candidate=planned.plan.id,
                plan_id=planned.plan.plan_id,
                predicted=planned.predicted,
                actual=sum(per_task.values()) / len(per_task),
                per_task=per_task,
                raw=raw,
            )
        )
    return PlanVerifyReport(tasks=tuple(tasks), verified=tuple(verified))
