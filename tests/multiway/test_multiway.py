"""Multi-way plans: validation, execution (chains and one-shot merges), mergekit export, the
beam search of plan_merge (valid plans, beam 1 is greedy), exact mode's intermediate profiles,
and the rank CLI's multi-way form. Runs on the micro zoo of the predictor tests."""

from __future__ import annotations

import json

import pytest
import torch
from _factories import load_script

from simmerge.errors import ConfigError, PlanError
from simmerge.merging import MergePlan, PlanMember, merge
from simmerge.multiway.search import (
    MultiwayPlan,
    canonical_plan,
    execute_plan,
    mergekit_configs,
    plan_merge,
    profile_plan,
)

TASKS = ["reverse", "sort"]


def test_plans_reject_duplicates_wrong_step_counts_and_two_model_operators():
    with pytest.raises(PlanError, match="twice"):
        MultiwayPlan(("a", "b", "a"), ("linear", "linear"))
    with pytest.raises(PlanError, match="takes 2 operator"):
        MultiwayPlan(("a", "b", "c"), ("linear",))
    with pytest.raises(PlanError, match="at most 2"):
        MultiwayPlan(("a", "b", "c"), ("slerp[t=0.5]",), oneshot=True)
    with pytest.raises(PlanError, match="at least two"):
        MultiwayPlan(("a",), ())
    chain = MultiwayPlan(("a", "b", "c"), ("linear", "ties[density=0.5]"))
    assert chain.id == "ties[density=0.5](linear(a, b), c)"
    assert MultiwayPlan(("a", "b", "c"), ("model_stock",), oneshot=True).id == (
        "model_stock(a, b, c)"
    )


def test_chain_execution_equals_two_manual_merges(trained, tmp_path):
    cat = trained["catalog"]
    a, b, c = cat.expert_names[:3]
    plan = MultiwayPlan((a, b, c), ("task_arithmetic[lambda=0.5]", "linear"))
    state = execute_plan(plan, cat)
    base = str(cat.base.path)
    first = MergePlan(
        operator="task_arithmetic",
        base=base,
        members=(
            PlanMember(model=str(cat.model(a).path)),
            PlanMember(model=str(cat.model(b).path)),
        ),
        params={"lambda": 0.5},
    )
    merge(first, tmp_path / "s1")
    second = MergePlan(
        operator="linear",
        members=(PlanMember(model=str(tmp_path / "s1")), PlanMember(model=str(cat.model(c).path))),
    )
    expected = merge(second)
    assert state.keys() == expected.keys()
    for name in state:
        torch.testing.assert_close(state[name], expected[name])


def test_oneshot_execution_is_one_n_way_merge(trained):
    cat = trained["catalog"]
    names = tuple(cat.expert_names[:3])
    state = execute_plan(MultiwayPlan(names, ("ties[density=0.5]",), oneshot=True), cat)
    expected = merge(
        MergePlan(
            operator="ties",
            base=str(cat.base.path),
            members=tuple(PlanMember(model=str(cat.model(n).path)) for n in names),
            params={"density": 0.5},
        )
    )
    assert state and state.keys() == expected.keys()  # an empty merge must not pass
    for name in state:
        torch.testing.assert_close(state[name], expected[name])


def test_mergekit_export_is_one_config_or_a_chain(trained):
    cat = trained["catalog"]
    a, b, c = cat.expert_names[:3]
    chain = mergekit_configs(MultiwayPlan((a, b, c), ("ties[density=0.5]", "linear")), cat)
    assert [cfg["merge_method"] for cfg in chain] == ["ties", "linear"]
    assert "step_1" in [m["model"] for m in chain[1]["models"]]
    one = mergekit_configs(MultiwayPlan((a, b, c), ("model_stock",), oneshot=True), cat)
    assert len(one) == 1 and len(one[0]["models"]) == 3


@pytest.fixture(scope="module")
def fast_plans(trained):
    return plan_merge(
        trained["catalog"],
        TASKS,
        max_models=3,
        beam=3,
        top=None,
        predictor=trained["predictor"],
        options=trained["options"],
        plan_model=False,  # the analytic search (the plan model's tests: test_plan_model.py)
    )


def test_plan_merge_returns_valid_ranked_plans_of_relevant_experts(trained, fast_plans):
    cat = trained["catalog"]
    relevant = {e.name for e in cat.experts if set(e.tasks) & set(TASKS)}
    assert fast_plans and [p.rank for p in fast_plans] == list(range(1, len(fast_plans) + 1))
    preds = [p.predicted for p in fast_plans]
    assert preds == sorted(preds, reverse=True)
    for p in fast_plans:
        assert set(p.plan.members) <= relevant
        assert len(set(p.plan.members)) == len(p.plan.members) <= 3
        assert set(p.per_task) == set(TASKS)
        assert p.predicted == pytest.approx(sum(p.per_task.values()) / len(TASKS))
    assert any(p.plan.oneshot for p in fast_plans)
    assert any(len(p.plan.members) == 3 and not p.plan.oneshot for p in fast_plans)
    assert len({p.plan.id for p in fast_plans}) == len(fast_plans)
    order = {n: i for i, n in enumerate(cat.expert_names)}  # no merge listed in both orders
    assert all(canonical_plan(p.plan, order) == p.plan for p in fast_plans)


def test_beam_width_one_is_greedy(trained, fast_plans):
    greedy = plan_merge(
        trained["catalog"],
        TASKS,
        max_models=3,
        beam=1,
        top=None,
        predictor=trained["predictor"],
        options=trained["options"],
        oneshot_grid=(),
        plan_model=False,
    )
    chains = sorted((p for p in greedy if not p.plan.oneshot), key=lambda p: len(p.plan.members))
    assert [len(p.plan.members) for p in chains] == [2, 3]
    # each depth extends the previous depth's single survivor...
    assert chains[1].plan.members[:2] == chains[0].plan.members
    assert chains[1].plan.steps[:1] == chains[0].plan.steps
    # ...and its first step is the best 2-member chain any beam finds (depth 2 is exhaustive)
    best_pair = max((p for p in fast_plans if len(p.plan.members) == 2), key=lambda p: p.predicted)
    assert chains[0].predicted == pytest.approx(best_pair.predicted)


def _chains_only(trained) -> dict:
    """plan_merge arguments for chains of up to 3 experts ranked by the analytic score."""
    return dict(
        max_models=3,
        top=None,
        predictor=trained["predictor"],
        options=trained["options"],
        oneshot_grid=(),
        plan_model=False,
    )


def test_fast_mode_scores_every_chain_by_default_and_a_beam_past_the_limit(trained, monkeypatch):
    from simmerge.multiway import search as multiway

    kw = _chains_only(trained)
    every = plan_merge(trained["catalog"], TASKS, **kw)
    relevant = [e for e in trained["catalog"].experts if set(e.tasks) & set(TASKS)]
    grid = len(multiway.DEFAULT_GRID)
    n = len(relevant)
    # every ordered subset x operator sequence, the symmetric first step's mirror scored once
    # (DEFAULT_GRID is all symmetric but slerp, whose t <-> 1-t mirror is in the grid too)
    assert len(every) == multiway.chain_count(n, 3, grid) // 2
    assert multiway.chain_count(n, 3, grid) <= multiway.CHAIN_EXHAUSTIVE_LIMIT
    monkeypatch.setattr(multiway, "CHAIN_EXHAUSTIVE_LIMIT", 0)
    beamed = plan_merge(trained["catalog"], TASKS, **kw)
    assert [p.plan.id for p in beamed] == [
        p.plan.id for p in plan_merge(trained["catalog"], TASKS, beam=4, **kw)
    ]
    assert len(beamed) < len(every)


def test_exact_mode_merges_the_prefixes_of_the_chains_fast_mode_ranks_best(trained, monkeypatch):
    """A prefix's own score says little of the chains it leads to: exact mode spends its
    merges on the prefixes of the best fast-mode chains."""
    from simmerge.multiway import search as multiway

    merged = []
    monkeypatch.setattr(
        multiway, "_materialize", lambda _p, b, _f, _d: merged.append((b.members, b.steps))
    )
    kw = _chains_only(trained)
    plan_merge(trained["catalog"], TASKS, mode="exact", beam=2, **kw)
    best: dict = {}
    for p in plan_merge(trained["catalog"], TASKS, mode="fast", **kw):
        for k in range(2, len(p.plan.members) + 1):
            key = (p.plan.members[:k], p.plan.steps[: k - 1])
            best[key] = max(best.get(key, -1.0), p.predicted)
    pairs = sorted(v for k, v in best.items() if len(k[0]) == 2)
    assert len(merged) == 2  # beam 2 at the one intermediate depth
    assert sorted(best[m] for m in merged) == pairs[-2:]
    assert max(best[m] for m in merged) == max(best.values())  # the best chain's prefix


def test_exact_mode_profiles_the_materialized_intermediate(trained, tmp_path):
    from simmerge.signals.profiles import catalog_probe_sets
    from simmerge.signals.signatures import compute_signature

    cat = trained["catalog"]
    a, b = cat.expert_names[:2]
    plan = MultiwayPlan((a, b), ("linear",))
    profile = profile_plan(plan, cat, tmp_path / "inter", trained["options"])
    out = execute_plan(plan, cat, tmp_path / "again")
    probes = trained["options"]
    sets = catalog_probe_sets(cat, probes)
    # every probe set of the catalog was profiled (an empty profile must not pass)
    assert profile.signatures and set(profile.signatures) == set(sets)
    for key, sig in profile.signatures.items():
        fresh = compute_signature(out, sets[key], config=probes.signature, cache_dir=None)
        torch.testing.assert_close(sig.logprobs, fresh.logprobs)
        torch.testing.assert_close(sig.token_ids, fresh.token_ids)


def test_exact_mode_ranks_plans_too_with_the_shipped_plan_model(trained):
    with pytest.warns(UserWarning, match="2-way predictor"):  # the micro zoo's own predictor
        plans = plan_merge(
            trained["catalog"],
            TASKS,
            max_models=3,
            beam=2,
            mode="exact",
            predictor=trained["predictor"],
            options=trained["options"],
        )
    assert plans and all(p.mode == "exact" and p.ranked_by == "plan model" for p in plans)


def test_plan_merge_input_errors(trained):
    cat = trained["catalog"]
    with pytest.raises(ConfigError, match="unknown"):
        plan_merge(cat, ["nope"], predictor=trained["predictor"])
    with pytest.raises(ConfigError, match="mode"):
        plan_merge(cat, TASKS, mode="slow", predictor=trained["predictor"])
    with pytest.raises(ConfigError, match="max_models"):
        plan_merge(cat, TASKS, max_models=1, predictor=trained["predictor"])


def test_plan_cli_json_and_the_rank_alias_that_says_so(trained, capsys):
    from simmerge.cli.main import main

    args = [str(trained["catalog_path"]), "--tasks", ",".join(TASKS), "--max-models", "3"]
    args += ["--top", "4", "--json", "--predictor", str(trained["predictor"])]
    args += ["--plan-model", "none", "--cache-dir", str(trained["options"].cache_dir)]
    assert main(["plan", *args]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert len(out) == 4 and out[0]["rank"] == 1 and set(out[0]["per_task"]) == set(TASKS)
    assert {p["ranked_by"] for p in out} == {"analytic"}
    assert "alias" not in captured.err
    # the old spelling still works, gives the same plans, and says what to use instead
    assert main(["rank", *args]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == out
    assert "alias of `simmerge plan`" in captured.err
    with pytest.raises(SystemExit) as exc:  # a plan needs target tasks: a usage error
        main(["plan", str(trained["catalog_path"])])
    assert exc.value.code == 2 and "--tasks" in capsys.readouterr().err


def test_evaluate_multiway_script_compares_with_exhaustive_search(trained, tmp_path, capsys):
    script = _evaluate_multiway_script()
    argv = [str(trained["catalog_path"]), "--sizes", "2", "--max-models", "3", "--quiet"]
    argv += ["--predictor", str(trained["predictor"]), "--modes", "fast", "--rankers", "analytic"]
    argv += ["--cache", str(tmp_path / "scores.jsonl"), "--json", str(tmp_path / "r.json")]
    assert script.main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    (rec,) = report["task_sets"]
    # 3 pairs x 2 operators (order-free: one order) + the 3-subset in 3 orders (the first
    # step is symmetric) x 4 operator sequences + 2 one-shot merges
    assert rec["space"] == 3 * 2 + 3 * 4 + 2
    assert set(rec["fixed"]) == {"task_arithmetic[lambda=0.7]", "ties[density=0.5]"}
    assert rec["random"] <= rec["oracle"] + 1e-12
    assert rec["fast"]["value"] <= rec["oracle"] + 1e-12  # the pick lies in the bounded space
    assert rec["best_fixed"] == max(rec["fixed"].values())  # one task set: no other to choose by
    lines = (tmp_path / "scores.jsonl").read_text().splitlines()
    assert len(lines) == rec["space"] * 2  # every plan on both tasks, measured once
    assert script.main(argv) == 0  # a rerun merges nothing new
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == len(lines)
    assert "gap clos." in capsys.readouterr().out


def test_evaluate_multiway_shards_share_one_cache(trained, tmp_path, capsys):
    script = _evaluate_multiway_script()
    cache = tmp_path / "scores.jsonl"
    argv = [str(trained["catalog_path"]), "--sizes", "1,2", "--max-models", "2", "--quiet"]
    argv += ["--predictor", str(trained["predictor"]), "--modes", "fast", "--cache", str(cache)]
    argv += ["--rankers", "analytic"]
    argv += ["--json", str(tmp_path / "r.json")]
    for k in range(2):
        assert script.main([*argv, "--shard", f"{k}/2"]) == 0
    assert not (tmp_path / "r.json").exists()  # shards write no report
    measured = len(cache.read_text().splitlines())
    assert script.main(argv) == 0
    assert len(cache.read_text().splitlines()) == measured  # the final run merges nothing
    assert len(json.loads((tmp_path / "r.json").read_text())["task_sets"]) == 3


def test_evaluate_multiway_reports_cached_sets_only_and_filters_by_space_size(
    trained, tmp_path, capsys
):
    script = _evaluate_multiway_script()
    cache = tmp_path / "scores.jsonl"
    argv = [str(trained["catalog_path"]), "--sizes", "1,2", "--max-models", "2", "--quiet"]
    argv += ["--predictor", str(trained["predictor"]), "--modes", "fast", "--cache", str(cache)]
    argv += ["--rankers", "analytic", "--json", str(tmp_path / "r.json")]
    assert script.main([*argv, "--shard", "1/2"]) == 0  # set 1 of 3: the second task alone
    measured = cache.read_text()
    assert script.main([*argv, "--cached-only"]) == 0
    assert cache.read_text() == measured  # nothing merged for the set not yet measured
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["tasks"] for r in report["task_sets"]] == [[report["left_out_uncached"][1][1]]]
    assert len(report["left_out_uncached"]) == 2  # the first task alone, and both
    assert "2 of 3 task sets left out" in capsys.readouterr().out
    # a single task's space (one pair of its experts, 2 operators) is smaller than a pair's
    assert script.main([*argv, "--max-space", "2"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [len(r["tasks"]) for r in report["task_sets"]] == [1, 1]
    assert all(r["space"] <= 2 for r in report["task_sets"]) and report["max_space"] == 2
    (a,), (b,) = (r["tasks"] for r in report["task_sets"])
    assert script.main([*argv, "--task-sets", f"{b};{a},{b}"]) == 0  # named sets, in this order
    assert [r["tasks"] for r in json.loads((tmp_path / "r.json").read_text())["task_sets"]] == [
        [b],
        [a, b],
    ]
    with pytest.raises(SystemExit, match="no_such_task"):
        script.main([*argv, "--task-sets", f"{a},no_such_task"])


def _evaluate_multiway_script():
    return load_script("evaluate_multiway")


class _StubModel:
    """Predicts a kept fraction from the pair's cos_all and the operator: deterministic."""

    def predict(self, rows, return_std=False):
        import numpy as np

        mean = np.array([r["cos_all"] * (0.9 if r.get("op_ties") else 1.0) for r in rows])
        return (mean, np.full(len(rows), 0.01)) if return_std else mean


class _StubPlanner:
    def __init__(self, names):
        import random

        from simmerge.signals.similarity import FEATURE_COLUMNS

        rng = random.Random(3)
        self.tasks = tuple(f"t{i}" for i in range(len(names)))
        self._tasks = {n: {f"t{i}"} for i, n in enumerate(names)}
        no_task = dict.fromkeys(self.tasks)
        self._pairs = {
            (a, b): ({c: rng.uniform(0.6, 1.0) for c in FEATURE_COLUMNS}, no_task)
            for a in names
            for b in names
        }
        self.model = _StubModel()
        self.table = {}  # no plan model: one-shot scoring builds its own table

    def expert_tasks(self, name):
        return self._tasks[name]

    def pair(self, a, b):
        return self._pairs[(a, b)]


def test_oneshot_beam_search_scores_like_enumeration_and_finds_its_best(monkeypatch):
    """Large catalogs grow one-shot subsets by beam search instead of enumerating them."""
    from simmerge.merging.grid import OperatorConfig
    from simmerge.multiway import search as multiway

    names = [f"e{i}" for i in range(9)]
    grid = [OperatorConfig.from_id("linear"), OperatorConfig.from_id("ties[density=0.5]")]
    planner = _StubPlanner(names)
    full = multiway._oneshot_candidates(planner, names, 4, grid, beam=4)
    assert len(full) == 2 * (84 + 126)  # every subset of 3 and 4 of 9, both operators
    monkeypatch.setattr(multiway, "ONESHOT_EXHAUSTIVE_LIMIT", 0)
    beamed = multiway._oneshot_candidates(planner, names, 4, grid, beam=4)
    assert 0 < len(beamed) <= 2 * 2 * 16  # 4 * beam kept per operator and size
    exact = {x[1]: x[0] for x in full}
    for score, plan, _kept, _unc in beamed:
        assert list(plan.members) == sorted(plan.members, key=names.index)  # canonical
        assert score == exact[plan]
    assert max(x[0] for x in beamed) == max(exact.values())
