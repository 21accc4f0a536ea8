"""Verification: really merge and evaluate the top-k ranked candidates.

The only step of simmerge's loop that costs merges and evaluations, k of them instead of the
whole grid. Each verified merge becomes :class:`~simmerge.outcomes.Outcome` rows (in a store
when given, so ``simmerge train`` can refit the predictor on them) and is compared with its
prediction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simmerge.catalog import Catalog
from simmerge.collect import MergeScorer, outcome_rows, reference_scores
from simmerge.errors import ConfigError
from simmerge.merging import merge
from simmerge.outcomes import OutcomeStore
from simmerge.ranking import Candidate


@dataclass(frozen=True)
class VerifiedCandidate:
    rank: int
    candidate: str
    plan_id: str
    predicted: float
    actual: float  # mean normalized score over the candidate's tasks
    per_task: dict[str, float]  # normalized score per task
    raw: dict[str, float]  # raw task scores

    @property
    def error(self) -> float:
        return self.predicted - self.actual


@dataclass(frozen=True)
class VerifyReport:
    models: tuple[str, str]
    tasks: tuple[str, ...]
    verified: tuple[VerifiedCandidate, ...]

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
        }


def verify(
    catalog: Catalog,
    candidates: Sequence[Candidate],
    k: int = 3,
    *,
    store: OutcomeStore | str | Path | None = None,
    device: Any | None = None,
    scorer: MergeScorer | None = None,
) -> VerifyReport:
    """Merge and evaluate the ``k`` best of ``candidates`` (ranked output of
    :func:`~simmerge.ranking.rank_merges`); record outcomes in ``store`` when given."""
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
        refs = (
            reference_scores(catalog, db, scorer)
            if db is not None
            else {
                (e.name, t): scorer.score_folder(e, [t])[t]
                for e in catalog.experts
                for t in e.tasks
                if t in tasks and t in scorer.tasks
            }
        )
        hashes = {t: scorer.eval_hash(t) for t in tasks}
        verified = []
        for cand in sorted(candidates, key=lambda c: c.rank)[:k]:
            plan = cand.config.plan(str(catalog.base.path), str(a.path), str(b.path))
            raw = scorer.score_state(merge(plan, device=str(scorer.device)), tasks)
            rows = outcome_rows(catalog.name, a, b, cand.config, plan.plan_id, raw, hashes, refs)
            if db is not None:
                db.add(rows)
            per_task = {r.task: r.normalized for r in rows}
            verified.append(
                VerifiedCandidate(
                    rank=cand.rank,
                    candidate=cand.candidate,
                    plan_id=plan.plan_id,
                    predicted=cand.predicted,
                    actual=sum(per_task.values()) / len(per_task),
                    per_task=per_task,
                    raw=raw,
                )
            )
    finally:
        if own_store and db is not None:
            db.close()
    return VerifyReport(models=(a.name, b.name), tasks=tuple(tasks), verified=tuple(verified))


def format_verify(report: VerifyReport) -> str:
    title = f"verified merges of {' + '.join(report.models)} on {', '.join(report.tasks)}"
    rows = [(v.rank, v.candidate, v.predicted, v.actual) for v in report.verified]
    return format_verified(title, "candidate", 38, rows)


def format_verified(
    title: str, label: str, width: int, rows: list[tuple[int, str, float, float]]
) -> str:
    """A table of verified (rank, name, predicted, actual) rows and the best of them (2-way
    candidates and multi-way plans alike)."""
    lines = [title, f"{'rank':>4} {label:<{width}} {'predicted':>9} {'actual':>7} {'error':>7}"]
    for rank, name, predicted, actual in rows:
        error = predicted - actual
        lines.append(f"{rank:>4} {name:<{width}} {predicted:>9.3f} {actual:>7.3f} {error:>+7.3f}")
    _, best, _, actual = max(rows, key=lambda r: r[3])
    lines.append(f"best verified: {best} (actual {actual:.3f})")
    return "\n".join(lines)


def run_verify_cli(args: Any) -> int:
    from simmerge.feature_table import FeatureOptions
    from simmerge.ranking import is_multiway, rank_merges

    catalog = Catalog.load(args.catalog)
    if is_multiway(args):
        return _verify_multiway(catalog, args)
    ranked = rank_merges(
        catalog,
        args.models.split(","),
        args.tasks.split(",") if args.tasks else None,
        top=None,
        predictor=args.predictor,
        options=FeatureOptions(device=args.device, cache_dir=args.cache_dir),
        margin=args.margin,
    )
    report = verify(catalog, ranked, k=args.k, store=args.store, device=args.device)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_verify(report))
    return 0


def _verify_multiway(catalog: Catalog, args: Any) -> int:
    from simmerge.multiway_verify import format_plan_verify, verify_plans
    from simmerge.ranking import plans_from_args

    if args.store is not None:
        raise ConfigError(
            "--store records 2-way outcomes (a pair, a candidate); a multi-way plan is not one.",
            "drop --store and keep the report with --json (it lists every verified plan).",
        )
    if args.k < 1:
        raise ConfigError(f"verify needs k >= 1, got {args.k}.", "verify at least one plan.")
    plans = plans_from_args(catalog, args, args.k)
    report = verify_plans(catalog, plans, k=args.k, device=args.device, cache_dir=args.cache_dir)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_plan_verify(report))
    return 0
