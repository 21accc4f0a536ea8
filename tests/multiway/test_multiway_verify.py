"""Verification of multi-way plans (simmerge.multiway.verify, `simmerge verify --tasks`): the
top k plans are really merged and scored, normalized by each task's best expert, and the
score of a verified plan equals that of the same plan merged to a folder and evaluated on its
own; bad requests get typed errors."""

from __future__ import annotations

import json

import pytest

from simmerge.catalog import Catalog
from simmerge.cli.formatting import format_plan_verify
from simmerge.errors import ConfigError
from simmerge.multiway.search import execute_plan, plan_merge
from simmerge.multiway.verify import verify_plans

TASKS = ["reverse", "sort", "rotate"]


@pytest.fixture(scope="module")
def planned(tiny_zoo, tmp_path_factory):
    from simmerge.signals.profiles import FeatureOptions

    catalog = Catalog.load(tiny_zoo / "catalog.yaml")
    options = FeatureOptions(cache_dir=tmp_path_factory.mktemp("cache"))
    plans = plan_merge(catalog, TASKS, max_models=3, top=4, options=options)
    return catalog, plans, options


def test_verified_plans_are_scored_like_the_same_merge_evaluated_from_a_folder(planned, tmp_path):
    from simmerge.evaluation.harness import EvalTask, evaluate
    from simmerge.io.models import load_model, load_tokenizer

    catalog, plans, options = planned
    # the experts' scores were cached by planning (the plan model reads skills): reused
    report = verify_plans(catalog, plans, k=2, cache_dir=options.cache_dir)
    assert [v.rank for v in report.verified] == [1, 2]
    assert [v.candidate for v in report.verified] == [p.plan.id for p in plans[:2]]
    assert [v.plan_id for v in report.verified] == [p.plan.plan_id for p in plans[:2]]
    assert report.best.actual == max(v.actual for v in report.verified)
    # the second plan, merged to a folder and evaluated there, scores the same
    second = report.verified[1]
    folder = execute_plan(plans[1].plan, catalog, tmp_path / "merged")
    model, tok = load_model(folder), load_tokenizer(folder)
    for t in TASKS:
        spec = catalog.tasks[t]
        score = evaluate(model, EvalTask.load(spec.eval, name=t), tokenizer=tok).score
        assert second.raw[t] == pytest.approx(score)
        best = max(
            evaluate(load_model(e.path), EvalTask.load(spec.eval, name=t), tokenizer=tok).score
            for e in catalog.experts_for(t)
        )
        assert second.per_task[t] == pytest.approx(score / best)
    assert second.actual == pytest.approx(sum(second.per_task.values()) / len(TASKS))
    assert second.error == pytest.approx(second.predicted - second.actual)
    text = format_plan_verify(report)
    assert "best verified" in text and plans[0].plan.id in text


def test_verify_rejects_no_plans_bad_k_and_mixed_task_sets(planned):
    catalog, plans, options = planned
    with pytest.raises(ConfigError, match="k >= 1"):
        verify_plans(catalog, plans, k=0)
    with pytest.raises(ConfigError, match="no multi-way plans"):
        verify_plans(catalog, [], k=1)
    other = plan_merge(catalog, ["reverse", "caesar"], max_models=2, top=1, options=options)
    with pytest.raises(ConfigError, match="one task set"):
        verify_plans(catalog, [plans[0], other[0]], k=2)


def test_plan_verify_cli_plans_and_verifies_for_a_task_set(planned, tiny_zoo, capsys):
    from simmerge.cli.main import main

    _, plans, options = planned
    argv = ["plan", str(tiny_zoo / "catalog.yaml"), "--tasks", ",".join(TASKS), "--verify"]
    argv += ["--max-models", "3", "--k", "1", "--json", "--cache-dir", str(options.cache_dir)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"] == TASKS and out["best"] == plans[0].plan.id
    (only,) = out["verified"]
    assert only["predicted"] == pytest.approx(plans[0].predicted)
    # a multi-way plan is not a 2-way outcome: `plan` has no --store (a usage error, exit 2)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--store", "x.sqlite"])
    assert exc.value.code == 2 and "--store" in capsys.readouterr().err


def test_planning_without_a_predictor_uses_the_plan_models_own_step_predictor(planned):
    """The shipped plan model learned from models/tiny-zoo's step predictions: with no predictor
    given it plans with that one (no warning), while the real-model default, passed
    explicitly, is another distribution of inputs and is warned about."""
    import warnings

    catalog, _, options = planned
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*2-way predictor.*")
        assert plan_merge(catalog, TASKS[:2], max_models=2, top=1, options=options)
    with pytest.warns(UserWarning, match="2-way predictor"):
        plan_merge(catalog, TASKS[:2], max_models=2, top=1, predictor="default", options=options)
