"""Single-model skills: how well each expert does each target task on its own.

Why the multi-way planner needs them. A multi-way merge for tasks {t1, t2, t3} often leaves a
task to members that were not trained on it (two experts covering two tasks can beat three
covering all three), and even a covered task gets help or harm from the other members. What
survives then depends on those members' own skill on the task -- on the tiny zoos a
non-expert keeps anywhere from 0 to 0.4 of a task's best score, and the same recipe built
with another seed puts it elsewhere -- which no similarity signal of simmerge tracked (the
members' top-1 agreement with the task's expert on its probes did not). So the plan model
(:mod:`simmerge.learn.plan_model`, column ``others_skill``) takes it measured: one evaluation per
(model, target task), never a merge, shared by every plan and every task set of a catalog.

A skill is normalized like every multi-way score (:mod:`simmerge.evaluation.scorer`): the
model's score on the task divided by the best score of the catalog's experts *of* that task
(those experts are scored too). Raw scores come from the scorer's single-model score cache, so
a catalog's experts are evaluated once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from simmerge.catalog import Catalog
from simmerge.evaluation.scorer import MergeScorer, normalized, reference_score

# (model name, task) -> normalized single-model score
Skills = Mapping[tuple[str, str], float]


def measure_skills(
    catalog: Catalog,
    models: Sequence[str],
    tasks: Iterable[str],
    *,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    scorer: MergeScorer | None = None,
) -> dict[tuple[str, str], float]:
    """Normalized skill of every model of ``models`` on every task of ``tasks`` (module docs).

    Tasks without eval data, or whose experts all score 0, are left out (with a warning):
    the plan model then sees the column as missing. ``scorer`` (a :class:`MergeScorer` of this
    catalog) reuses an already loaded model."""
    tasks = list(dict.fromkeys(tasks))
    if scorer is None:
        scorer = MergeScorer(catalog, device=device)
    missing = [t for t in tasks if t not in scorer.tasks]
    if missing:
        warnings.warn(
            f"No eval data for task(s) {missing} in catalog {catalog.name!r}: the plan model "
            "plans them without the members' single-model skill. Add `eval:` files to the "
            "catalog's tasks to measure it.",
            UserWarning,
            stacklevel=2,
        )
    tasks = [t for t in tasks if t in scorer.tasks]
    # the experts of each task normalize it, so they are scored too
    names = list(dict.fromkeys([*models, *(e.name for t in tasks for e in catalog.experts_for(t))]))
    raw = scorer.model_scores(names, tasks, cache_dir=cache_dir, progress=progress)
    return normalize_skills(catalog, raw, models, tasks)


def normalize_skills(
    catalog: Catalog,
    raw: Mapping[tuple[str, str], float],
    models: Sequence[str],
    tasks: Sequence[str],
) -> dict[tuple[str, str], float]:
    """Raw single-model scores -> skills: each normalized by the task's reference, the best
    score of the catalog's experts of it (tasks whose experts all score 0 are left out, with a
    warning)."""
    out = {}
    for t in tasks:
        best = reference_score(catalog, raw, t)
        if best <= 0:
            warnings.warn(
                f"No expert of task {t!r} scores above 0 on it: its skills are left out.",
                UserWarning,
                stacklevel=3,
            )
            continue
        out.update({(m, t): normalized(raw[(m, t)], best) for m in models})
    return out
