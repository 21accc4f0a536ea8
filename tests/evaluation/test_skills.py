"""Single-model skills (evaluation.skills): normalized by the task's best expert, measured once
per model and task (cached), missing where a task has no eval data; and plan_merge measures
them only when its plan model reads them."""

from __future__ import annotations

import pandas as pd
import pytest

from simmerge.evaluation.skills import measure_skills
from simmerge.learn.plan_model import PlanModel, plan_columns
from simmerge.multiway.search import plan_feature_rows, plan_merge

# micro zoo: reverse_a (reverse), sort_a (sort), both (reverse, sort)
RAW = {
    ("reverse_a", "reverse"): 0.8,
    ("reverse_a", "sort"): 0.1,
    ("sort_a", "reverse"): 0.2,
    ("sort_a", "sort"): 0.5,
    ("both", "reverse"): 0.4,
    ("both", "sort"): 0.25,
}


@pytest.fixture
def scored(monkeypatch):
    """MergeScorer.score_folder answers RAW and records what it was asked."""
    calls = []

    def score_folder(self, model, tasks):
        calls.append((model.name, tuple(tasks)))
        return {t: RAW[(model.name, t)] for t in tasks}

    monkeypatch.setattr("simmerge.evaluation.scorer.MergeScorer.score_folder", score_folder)
    return calls


def test_skills_are_scores_over_the_best_expert_of_the_task_and_cached(trained, tmp_path, scored):
    cat = trained["catalog"]
    skills = measure_skills(cat, ["sort_a"], ["reverse", "sort"], cache_dir=tmp_path)
    # reverse's best expert is reverse_a (0.8), sort's is sort_a (0.5): both scored too
    assert skills == pytest.approx({("sort_a", "reverse"): 0.25, ("sort_a", "sort"): 1.0})
    assert {name for name, _ in scored} == {"reverse_a", "sort_a", "both"}
    assert all(len(tasks) == 2 for _, tasks in scored)  # one pass per model, both tasks
    scored.clear()
    again = measure_skills(cat, ["both", "sort_a"], ["reverse", "sort"], cache_dir=tmp_path)
    assert not scored  # every raw score came from the cache
    assert again[("both", "reverse")] == pytest.approx(0.5)
    assert again[("sort_a", "reverse")] == skills[("sort_a", "reverse")]


def test_a_task_without_eval_data_has_no_skill_and_warns(trained, tmp_path, scored):
    from simmerge.evaluation.scorer import MergeScorer

    scorer = MergeScorer(trained["catalog"])
    del scorer.tasks["sort"]
    with pytest.warns(UserWarning, match="No eval data for task"):
        skills = measure_skills(
            trained["catalog"], ["both"], ["reverse", "sort"], cache_dir=tmp_path, scorer=scorer
        )
    assert set(skills) == {("both", "reverse")}


def test_plan_merge_measures_skills_only_for_a_plan_model_that_reads_them(trained, monkeypatch):
    cat, tasks = trained["catalog"], ["reverse", "sort"]
    kwargs = dict(max_models=3, top=None, predictor=trained["predictor"])
    kwargs["options"] = trained["options"]
    # the non-experts: sort_a does reverse well, reverse_a cannot sort
    given = {(m, t): 1.0 for m, t in RAW} | {("sort_a", "reverse"): 0.9, ("reverse_a", "sort"): 0.0}
    plans = [p.plan for p in plan_merge(cat, tasks, plan_model=False, **kwargs)]
    rows = plan_feature_rows(
        cat, tasks, plans, predictor=kwargs["predictor"], options=kwargs["options"], skills=given
    )
    frame = pd.DataFrame([r for _, _, r in rows])
    assert frame["others_skill"].notna().any()
    # a model that only looks at the others' skill: the plan whose non-experts do best wins
    model = PlanModel(
        n_models=1, num_boost_round=30, params={"num_threads": 1, "min_data_in_leaf": 2}
    )
    model.fit(frame, frame["others_skill"].fillna(0.0).to_numpy())
    assert model.needs_skills and list(model.columns) == list(plan_columns())
    measured = []

    def fake_measure(catalog, names, tasks, options, progress):
        measured.append(tuple(names))
        return given

    monkeypatch.setattr("simmerge.multiway.search._measure_skills", fake_measure)
    ranked = plan_merge(cat, tasks, plan_model=model, skills=given, **kwargs)
    assert not measured  # given skills are used as they are
    assert plan_merge(cat, tasks, plan_model=model, **kwargs)[0].plan == ranked[0].plan
    assert len(measured) == 1  # ...else measured once, for the candidate experts
    plan_merge(cat, tasks, plan_model=False, **kwargs)
    assert len(measured) == 1  # the analytic score needs none
    value = frame.assign(plan=[p.id for p, _, _ in rows], v=frame["others_skill"].fillna(0.0))
    value = value.groupby("plan")["v"].mean()
    assert value[ranked[0].plan.id] == pytest.approx(value.max(), abs=0.05)
    assert value.max() - value.min() > 0.3  # ...which a random pick would not be
