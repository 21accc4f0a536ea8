"""The learned multi-way plan model: its row features (holder, meeting operators, passes)
against hand-computed values, save/load and the card check, that plan_merge ranks by it, and
the pipeline that trains it (evaluate_multiway --data-out, then scripts/train_plan_model.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from _factories import load_script

from simmerge.errors import PredictorError
from simmerge.learn.plan_model import (
    PlanModel,
    analysis_columns,
    load_plan_model,
    plan_columns,
    plan_rows,
)
from simmerge.learn.predictor import MergePredictor
from simmerge.multiway.search import plan_feature_rows, plan_merge

TA, TIES = "task_arithmetic[lambda=0.5]", "ties[density=0.2]"
TASKS_OF = {"a": {"x", "z"}, "b": set(), "c": {"y", "z"}}


def _pair(a, b):
    general = {"js_mean": 0.1 * len(a + b), "top1_agreement": 0.5, "cka_mean": 0.9}
    general |= {"cos_all": 0.3, "sign_conflict_d20_all": 0.2}
    per_task = {"x": None, "y": {"js_mean": 0.2, "top1_agreement": 0.7, "kl_p90": 1.0}, "z": None}
    return general, per_task


def _table():
    """(holder, other, operator, task) -> (prediction, variance): distinct values."""
    out = {}
    for i, (h, o) in enumerate((h, o) for h in "abc" for o in "abc" if h != o):
        for j, op in enumerate((TA, TIES)):
            for k, t in enumerate("xyz"):
                out[(h, o, op, t)] = (0.5 + 0.01 * i + 0.1 * j + 0.001 * k, 0.0)
    return out


def _rows(members, steps, oneshot, tasks=("x", "y")):
    kept = {"x": 0.4, "y": 0.6, "z": 0.5}
    return dict(
        plan_rows(members, steps, oneshot, kept, tasks, TASKS_OF.__getitem__, _table(), _pair)
    )


def test_chain_rows_use_the_operators_where_the_holder_meets_each_member():
    table = _table()
    rows = _rows(("a", "b", "c"), (TA, TIES), False)
    x, y = rows["x"], rows["y"]
    # x: holder a joins at step 0 -> meets b there (TA) and c at step 1 (TIES)
    preds = [table[("a", "b", TA, "x")][0], table[("a", "c", TIES, "x")][0]]
    assert x["step_min"] == min(preds) and x["step_mean"] == pytest.approx(np.mean(preds))
    assert (x["passes"], x["op_task_arithmetic"], x["op_ties"]) == (2, 0.5, 0.5)
    assert x["hp_lambda"] == pytest.approx((0.5 + 1.0) / 2)  # ties' default lambda is 1
    assert x["hp_density"] == pytest.approx(0.2) and math.isnan(x["hp_t"])
    # y: holder c joins at the last step -> meets a and b there (TIES)
    preds = [table[("c", "a", TIES, "y")][0], table[("c", "b", TIES, "y")][0]]
    assert y["step_mean"] == pytest.approx(np.mean(preds))
    assert (y["passes"], y["op_ties"], y["holders"], y["n_members"]) == (1, 1.0, 1, 3)
    assert (x["analytic"], y["analytic"]) == (0.4, 0.6)
    assert y["task_sim_top1_agreement"] == pytest.approx(0.7)
    assert math.isnan(x["task_sim_js_mean"])  # x has no probes in any pair
    assert y["sim_js_mean"] == pytest.approx(np.mean([0.2, 0.2]))  # len("ca") = len("cb")
    assert list(x) == [*plan_columns(), *analysis_columns()]  # with pair(): analysis columns
    plain = dict(plan_rows(("a", "b", "c"), (TA, TIES), False, {}, "x", TASKS_OF.get, table))
    assert list(plain["x"]) == list(plan_columns())


def test_oneshot_rows_meet_every_member_in_one_step_and_pick_the_best_holder():
    table = _table()
    rows = _rows(("a", "b", "c"), (TIES,), True, tasks=("z", "w"))
    z, w = rows["z"], rows["w"]
    # no member has w: what survives of the base's skill, through every step
    assert (w["holders"], w["passes"], w["analytic"]) == (0, 1, 0.0)
    assert math.isnan(w["step_min"]) and math.isnan(w["step_mean"])
    assert w["sim_js_mean"] == pytest.approx(0.2)  # over all six ordered member pairs
    products = {
        h: np.prod([table[(h, o, TIES, "z")][0] for o in "abc" if o != h]) for h in ("a", "c")
    }
    best = max(products, key=products.get)
    expected = [table[(best, o, TIES, "z")][0] for o in "abc" if o != best]
    assert z["step_mean"] == pytest.approx(np.mean(expected))
    assert (z["oneshot"], z["passes"], z["holders"], z["op_ties"]) == (1, 1, 2, 1.0)


def test_others_skill_is_the_mean_skill_of_the_members_without_the_task():
    skills = {(m, t): 0.1 * i + 0.01 * j for i, m in enumerate("abc") for j, t in enumerate("xyzw")}
    rows = dict(
        plan_rows(("a", "b", "c"), (TIES,), True, {}, "xyzw", TASKS_OF.get, _table(), skills=skills)
    )
    # x: a has it -> b and c; y: c has it -> a and b; z: a and c have it -> b alone
    assert rows["x"]["others_skill"] == pytest.approx((0.1 + 0.2) / 2)
    assert rows["y"]["others_skill"] == pytest.approx((0.0 + 0.1) / 2 + 0.01)
    assert rows["z"]["others_skill"] == pytest.approx(0.1 + 0.02)
    # w: nobody has it -> every member
    assert rows["w"]["others_skill"] == pytest.approx((0.0 + 0.1 + 0.2) / 3 + 0.03)
    # every member has the task, or no skills given: missing (NaN), not 0
    both = dict(
        plan_rows(("a", "c"), (TIES,), True, {}, "z", TASKS_OF.get, _table(), skills=skills)
    )
    assert math.isnan(both["z"]["others_skill"])
    plain = dict(plan_rows(("a", "b", "c"), (TIES,), True, {}, "x", TASKS_OF.get, _table()))
    assert math.isnan(plain["x"]["others_skill"])


def _random_frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(0, 1, (n, len(plan_columns()))), columns=plan_columns())
    return frame, (frame["analytic"] * 0.5 + 0.1 * frame["oneshot"]).to_numpy()


def test_plan_model_round_trips_and_its_card_is_checked(tmp_path):
    frame, y = _random_frame()
    model = PlanModel(n_models=2, num_boost_round=20, params={"num_threads": 1}).fit(frame, y)
    model.save(tmp_path / "plan")
    loaded = load_plan_model(tmp_path / "plan")
    np.testing.assert_allclose(loaded.predict(frame), model.predict(frame))
    assert loaded.card_["target"].startswith("normalized score of the plan")
    with pytest.raises(PredictorError, match="other features"):
        MergePredictor.load(tmp_path / "plan")  # a plan model is not a pair predictor
    assert load_plan_model(False) is None and load_plan_model("none") is None
    assert isinstance(load_plan_model(None), PlanModel)  # the shipped one


def test_plan_model_refuses_a_pair_predictor(trained):
    with pytest.raises(PredictorError, match="other features"):
        PlanModel.load(trained["predictor"])


def test_plan_merge_ranks_by_the_plan_model(trained, tmp_path):
    """A plan model taught that one-shot merges keep everything and chains nothing must put
    one-shot plans first, and report its own per-task predictions."""
    cat, tasks = trained["catalog"], ["reverse", "sort"]
    kwargs = dict(max_models=3, top=None, predictor=trained["predictor"])
    kwargs["options"] = trained["options"]
    analytic = plan_merge(cat, tasks, plan_model=False, **kwargs)
    plans = [p.plan for p in analytic]
    rows = plan_feature_rows(cat, tasks, plans, **{k: kwargs[k] for k in ("predictor", "options")})
    frame = pd.DataFrame([r for _, _, r in rows])
    y = np.where(frame["oneshot"] > 0, 0.9, 0.1)
    model = PlanModel(
        n_models=1, num_boost_round=30, params={"num_threads": 1, "min_data_in_leaf": 2}
    )
    model.fit(frame, y)
    learned = plan_merge(cat, tasks, plan_model=model, **kwargs)
    assert learned[0].plan.oneshot and not learned[-1].plan.oneshot
    assert [p.predicted for p in learned] == sorted((p.predicted for p in learned), reverse=True)
    top = learned[0]
    own = [r for p, _, r in rows if p == top.plan]
    mean = np.clip(model.predict(own), 0, 1)
    assert len(own) == len(tasks)  # a row per target task, covered or not
    assert top.predicted == pytest.approx(sum(mean) / len(tasks))
    # the plan model's training domain judges every plan it scored: its own training plans
    # are inside it (but the 1 % furthest rows); the analytic ranking has no verdict
    assert all(p.in_distribution is not None for p in learned)
    assert np.mean([p.in_distribution for p in learned]) >= 0.9
    assert all(p.in_distribution is None for p in analytic)
    from dataclasses import replace

    model.domain_ = replace(model.domain_, threshold=-1.0)  # nothing is close enough now
    assert all(p.in_distribution is False for p in plan_merge(cat, tasks, plan_model=model,
                                                              **kwargs))  # fmt: skip
    # without a plan model the analytic ranking is unchanged (a chain may lead)
    assert [p.plan for p in plan_merge(cat, tasks, plan_model=False, **kwargs)] == plans
    # a plan model plans no larger merges than it was trained on
    model.card_["max_members"] = 2
    with pytest.warns(UserWarning, match="at most 2 experts"):
        capped = plan_merge(cat, tasks, plan_model=model, **kwargs)
    assert capped and all(len(p.plan.members) == 2 for p in capped)


_script = load_script


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_training_pipeline_writes_the_table_fits_and_evaluates_with_the_model(
    trained, tmp_path, capsys, monkeypatch
):
    evaluate, train = _script("evaluate_multiway"), _script("train_plan_model")
    argv = [str(trained["catalog_path"]), "--sizes", "2", "--max-models", "3", "--quiet"]
    argv += ["--predictor", str(trained["predictor"]), "--modes", "fast"]
    argv += ["--cache", str(tmp_path / "scores.jsonl"), "--json", str(tmp_path / "r.json")]
    argv += ["--cache-dir", str(tmp_path / "cache")]  # signatures and single-model skills
    assert evaluate.main([*argv, "--rankers", "analytic"]) == 0  # fills the score cache
    # the micro zoo's experts score 0: give every cached plan score and the experts' scores
    # known values, so the table's target (score / best expert score) is checkable
    cache = tmp_path / "scores.jsonl"
    entries = [json.loads(line) for line in cache.read_text().splitlines()]
    rng = np.random.default_rng(0)
    for e in entries:
        e["score"] = float(rng.uniform(0, 0.5))
    cache.write_text("".join(json.dumps(e) + "\n" for e in entries))

    def expert_scores(self, model, tasks):
        return dict.fromkeys(tasks, 0.5)

    monkeypatch.setattr("simmerge.evaluation.scorer.MergeScorer.score_folder", expert_scores)
    table = tmp_path / "plans.parquet"
    assert evaluate.main([*argv, "--rankers", "analytic", "--data-out", str(table)]) == 0
    frame = pd.read_parquet(table)
    (rec,) = json.loads((tmp_path / "r.json").read_text())["task_sets"]
    assert frame["plan"].nunique() == rec["space"]
    assert not frame.duplicated(["plan", "task"]).any()
    targets = frame.set_index(["plan", "task"])["target"]
    assert len(targets) == len(entries)  # a row per measured (plan, task)
    for e in entries:
        assert targets[(e["plan"], e["task"])] == pytest.approx(e["score"] / 0.5)
    assert set(frame.columns) >= {"catalog", "plan", "task", "target", *plan_columns()}
    # every expert scores 0.5, so every non-expert has a skill of 1 where it is measured
    assert set(frame["others_skill"].dropna()) == {1.0}
    model_dir = tmp_path / "plan_model"
    assert train.main([str(table), "--out", str(model_dir), "--test", str(table)]) == 0
    card = json.loads((model_dir / "card.json").read_text())
    assert card["training_sources"] == [trained["catalog"].name]
    assert card["max_members"] == 3  # the largest plan of its --max-models 3 space
    assert set(card["test"]) >= {"plan_model", "analytic"}
    argv += ["--plan-model", str(model_dir)]
    assert evaluate.main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"fast", "fast+model"} <= set(report["results"])
    assert "fast+model" in capsys.readouterr().out
