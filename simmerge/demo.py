"""The main job: rank merges for a catalog's expert pairs, verify the top 3, plan a multi-way
merge.

For a few expert pairs (experts of different tasks) the predictor ranks every candidate of
:data:`~simmerge.merging.grid.DEFAULT_GRID` from similarity features alone; the top ``k`` are
then really merged and evaluated (what a user pays: k merges). Beside them the demo measures the
predictor's *best fixed* candidate (the one operator that did best on its training data, from
its card) when the top ``k`` leave it out, so the table says whether ranking beat always making
that merge. With ``exhaustive`` it measures every other candidate of the grid as well (the loop
simmerge replaces: affordable on the tiny zoo, not on real LLMs) and compares the k-merge choice
with the best of all 20. Finally it plans one multi-way merge for three tasks
(:func:`~simmerge.multiway.search.plan_merge`, fast mode) and verifies its top 3 plans
(:func:`~simmerge.multiway.verify.verify_plans`). Scores are normalized: score of the merge /
score of that task's expert, averaged over the pair's tasks.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from simmerge.catalog import Catalog, CatalogModel
from simmerge.errors import CatalogError
from simmerge.evaluation.harness import evaluate
from simmerge.evaluation.scorer import MergeScorer
from simmerge.learn.loading import load_predictor
from simmerge.pairwise.rank import rank_merges
from simmerge.pairwise.verify import distinct_top, verify


def demo_pairs(catalog: Catalog, n_pairs: int) -> list[tuple[CatalogModel, CatalogModel]]:
    """The first ``n_pairs`` pairs of single-task experts with different tasks with eval data."""
    usable = [e for e in catalog.experts if len(e.tasks) == 1 and _eval_path(catalog, e.tasks[0])]
    pairs = [(a, b) for a, b in itertools.combinations(usable, 2) if a.tasks != b.tasks]
    if not pairs:
        raise CatalogError(
            f"Catalog {catalog.name!r} has no pair of single-task experts with eval data.",
            "add `tasks: {NAME: {eval: FILE}}` entries for the experts' tasks.",
        )
    step = max(1, len(pairs) // max(n_pairs, 1))  # spread the pairs over the catalog
    return pairs[::step][:n_pairs]


def _eval_path(catalog: Catalog, task: str) -> Path | None:
    spec = catalog.tasks.get(task)
    return spec.eval if spec else None


def run_demo(
    catalog: Catalog,
    n_pairs: int = 3,
    k: int = 3,
    *,
    predictor: Any = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    store: str | Path | None = None,
    exhaustive: bool = False,
) -> dict[str, Any]:
    """Rank and verify the top ``k`` (and the best fixed candidate; with ``exhaustive`` the
    whole grid) for ``n_pairs`` pairs; every measured merge is recorded in the outcome
    ``store`` when one is given (a scan's report plots them against the predictions)."""
    from simmerge.signals.profiles import FeatureOptions

    pairs = demo_pairs(catalog, n_pairs)
    scorer = MergeScorer(catalog, device)
    tasks = scorer.tasks
    experts = [
        {
            "name": e.name,
            "task": t,
            "expert_score": scorer.score_folder(e, [t])[t],
            "base_score": evaluate(str(catalog.base.path), tasks[t], scorer.device).score,
        }
        for e in catalog.experts
        for t in e.tasks
        if t in tasks
    ]
    options = FeatureOptions(device=device, cache_dir=cache_dir)
    given_predictor = predictor  # None: multi-way plans use the plan model's step predictor
    predictor = load_predictor(predictor)  # once, not once per pair
    fixed = _best_fixed(predictor)
    out_pairs = []
    for a, b in tqdm(pairs, desc="rank+verify", disable=not progress):
        ranked = rank_merges(
            catalog, [a.name, b.name], top=None, predictor=predictor, options=options
        )
        top = distinct_top(ranked, k)[0]  # what `simmerge verify --k` verifies
        wanted = ranked if exhaustive else top
        measured = verify(
            catalog, wanted, k=len(wanted), scorer=scorer, store=store, distinct=False
        ).verified
        actual = {v.candidate: v.actual for v in measured}
        kept = {v.candidate: v.kept_general for v in measured}
        if fixed is not None and fixed not in actual:
            extra = [c for c in ranked if c.candidate == fixed]
            if extra:
                one = verify(catalog, extra, k=1, scorer=scorer, store=store).verified[0]
                actual[fixed], kept[fixed] = one.actual, one.kept_general
        chosen = max(top, key=lambda c: actual[c.candidate])
        entry: dict[str, Any] = {
            "a": a.name,
            "b": b.name,
            "tasks": list(ranked[0].tasks),
            "top": [
                {
                    "rank": c.rank,
                    "candidate": c.candidate,
                    "predicted": c.predicted,
                    "uncertainty": c.uncertainty,
                    "actual": actual[c.candidate],
                    "kept_general": kept[c.candidate],
                }
                for c in top
            ],
            "chosen": chosen.candidate,
            "chosen_actual": actual[chosen.candidate],
            "best_fixed": fixed if fixed in actual else None,
            "best_fixed_actual": actual.get(fixed) if fixed else None,
            "grid_size": len(ranked),
            "measured": actual,
        }
        if exhaustive:
            oracle = max(actual, key=actual.__getitem__)
            entry |= {
                "oracle": oracle,
                "oracle_actual": actual[oracle],
                "oracle_predicted_rank": next(c.rank for c in ranked if c.candidate == oracle),
            }
        out_pairs.append(entry)
    return {
        "catalog": catalog.name,
        "k": k,
        "exhaustive": exhaustive,
        "predictor_training": (getattr(predictor, "card_", None) or {}).get("training_sources"),
        "experts": experts,
        "general": _general_scores(catalog, scorer),
        "pairs": out_pairs,
        "multiway": demo_multiway(catalog, scorer, given_predictor, options),
    }


def _general_scores(catalog: Catalog, scorer: MergeScorer) -> dict[str, dict[str, float]]:
    """Each model's raw score on each general task (the base's own ability; what each
    fine-tune kept of it)."""
    names = [catalog.base.name, *catalog.expert_names]
    tasks = [t for t in catalog.general_tasks if t in scorer.tasks]
    raw = scorer.model_scores(names, tasks) if tasks else {}
    return {t: {n: raw[(n, t)] for n in names} for t in tasks}


def _best_fixed(predictor: Any) -> str | None:
    card = getattr(predictor, "card_", None) or {}
    return (card.get("selection") or {}).get("best_fixed")


def demo_multiway(
    catalog: Catalog, scorer: MergeScorer, predictor: Any, options: Any
) -> dict[str, Any] | None:
    """Plan a merge for the first three tasks with eval data, merge and score the top 3."""
    from simmerge.multiway.search import plan_merge
    from simmerge.multiway.verify import verify_plans

    tasks = [t for t in catalog.task_names if t in scorer.tasks and catalog.experts_for(t)][:3]
    if len(tasks) < 3:
        return None
    plans = plan_merge(catalog, tasks, max_models=3, top=3, predictor=predictor, options=options)
    verified = verify_plans(catalog, plans, k=3, scorer=scorer, cache_dir=options.cache_dir)
    first = verified.verified[0]
    return {
        "tasks": tasks,
        "plans": [p.to_dict() for p in plans],
        "verified": verified.to_dict()["verified"],
        "best_verified": verified.best.candidate,
        # the top plan's measured scores (what a zero-evaluation pick gets)
        "actual_per_task": first.per_task,
        "actual": first.actual,
    }
