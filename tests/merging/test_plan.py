"""MergePlan validation and its mergekit-compatible YAML form."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simmerge.errors import InputNotFoundError, OperatorParameterError, PlanError
from simmerge.merging import MergePlan, PlanMember

M = PlanMember


def plan(operator: str, n: int = 2, **params) -> MergePlan:
    weighted = operator not in ("slerp", "model_stock")
    members = tuple(M(model=f"/m/{i}", weight=1.0 + i * weighted) for i in range(n))
    base = None if operator in ("linear", "slerp") else "/m/base"
    return MergePlan(operator=operator, members=members, base=base, params=params)


ROUND_TRIP = [
    plan("linear"),
    plan("task_arithmetic", **{"lambda": 0.8}),
    plan("ties", density=0.5),
    plan("dare_linear", density=0.3, seed=7),
    plan("dare_ties", density=0.7),
    plan("slerp", t=0.3),
    plan("breadcrumbs", density=0.6, gamma=0.05),
    plan("della", density=0.5, epsilon=0.1),
    plan("model_stock", n=3),
]


@pytest.mark.parametrize("p", ROUND_TRIP, ids=lambda p: p.operator)
def test_every_operator_round_trips_through_yaml(p, tmp_path):
    path = tmp_path / "plan.yaml"
    p.to_mergekit_yaml(path)
    assert MergePlan.from_yaml(path) == p
    assert MergePlan.from_yaml(path).plan_id == p.plan_id


def test_yaml_uses_mergekit_keys():
    doc = yaml.safe_load(plan("ties", density=0.5).to_mergekit_yaml())
    assert doc["merge_method"] == "ties" and doc["base_model"] == "/m/base"
    assert doc["models"][0] == {"model": "/m/0", "parameters": {"weight": 1.0}}
    assert doc["parameters"]["density"] == 0.5


def test_strict_export_drops_simmerge_only_settings():
    p = plan("dare_ties", density=0.5, seed=3)
    assert yaml.safe_load(p.to_mergekit_yaml())["simmerge"] == {"seed": 3}
    strict = yaml.safe_load(p.to_mergekit_yaml(strict=True))
    assert "simmerge" not in strict and "seed" not in strict["parameters"]


def test_slerp_exports_first_member_as_mergekit_base_and_reads_it_back_first(tmp_path):
    doc = {
        "merge_method": "slerp",
        "base_model": "b",
        "models": [{"model": "a"}, {"model": "b"}],
        "parameters": {"t": 0.25},
    }
    p = MergePlan.from_mergekit_dict(doc, relative_to=tmp_path)
    assert [m.model for m in p.members] == [str(tmp_path / "b"), str(tmp_path / "a")]
    assert p.base is None


def test_mergekit_config_listing_the_base_among_models_is_accepted():
    doc = {
        "merge_method": "ties",
        "base_model": "/base",
        "models": [
            {"model": "/base"},
            {"model": "/a", "parameters": {"weight": 1, "density": 0.5}},
            {"model": "/b", "parameters": {"weight": 0.5}},
        ],
        "parameters": {"int8_mask": True, "normalize": True},
        "dtype": "bfloat16",
    }
    p = MergePlan.from_mergekit_dict(doc)
    assert [m.model for m in p.members] == ["/a", "/b"]
    assert p.member_densities() == [0.5, 1.0] and p.dtype == "bfloat16"


def test_relative_model_paths_resolve_against_the_plan_file(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "merge_method: linear\nmodels:\n  - model: experts/a\n  - model: /abs/b\n"
    )
    p = MergePlan.from_yaml(tmp_path / "p.yaml")
    assert p.members[0].model == str(tmp_path / "experts/a") and p.members[1].model == "/abs/b"


@pytest.mark.parametrize(
    "doc, match",
    [
        (
            {"merge_method": "ties", "base_model": "/b", "models": [{"model": "/a"}], "bogus": 1},
            "bogus",
        ),
        (
            {"merge_method": "ties", "base_model": "/b", "models": [{"model": "/a", "weight": 1}]},
            "weight",
        ),
        (
            {
                "merge_method": "ties",
                "base_model": "/b",
                "models": [{"model": "/a", "parameters": {"gamma": 1}}],
            },
            "gamma",
        ),
        (
            {
                "merge_method": "ties",
                "base_model": "/b",
                "models": [{"model": "/a", "parameters": {"weight": [0, {"value": 1}]}}],
            },
            "only numbers or only filter entries",
        ),
        ({"merge_method": "ties", "base_model": "/b", "models": []}, "non-empty"),
        ({"base_model": "/b", "models": [{"model": "/a"}]}, "merge_method"),
        ({"merge_method": "ties", "base_model": "/b", "models": [{"model": 3}]}, "path"),
        (
            {
                "merge_method": "slerp",
                "base_model": "/x",
                "models": [{"model": "/a"}, {"model": "/b"}],
                "parameters": {"t": 0.5},
            },
            "one of the two",
        ),
        (["not", "a", "mapping"], "mapping"),
        (
            {
                "merge_method": "ties",
                "base_model": "/b",
                "models": [{"model": "/a"}],
                "simmerge": {"foo": 1},
            },
            "foo",
        ),
    ],
)
def test_malformed_plans_are_plan_errors(doc, match):
    with pytest.raises(PlanError, match=match):
        MergePlan.from_mergekit_dict(doc)


def test_out_of_range_parameter_in_yaml_is_reported():
    doc = {
        "merge_method": "ties",
        "base_model": "/b",
        "models": [{"model": "/a"}],
        "parameters": {"density": 0},
    }
    with pytest.raises(OperatorParameterError, match="density"):
        MergePlan.from_mergekit_dict(doc)


def test_plan_checks_member_count_base_and_duplicates():
    with pytest.raises(PlanError, match="exactly 2"):
        MergePlan(operator="slerp", members=(M(model="/a"),))
    with pytest.raises(PlanError, match="needs a base"):
        MergePlan(operator="ties", members=(M(model="/a"),))
    with pytest.raises(PlanError, match="twice"):
        MergePlan(operator="linear", members=(M(model="/a"), M(model="/a")))
    with pytest.raises(PlanError, match="at least 2"):
        MergePlan(operator="model_stock", base="/b", members=(M(model="/a"),))
    with pytest.raises(PlanError, match="also listed"):
        MergePlan(operator="ties", base="/a", members=(M(model="/a"), M(model="/c")))
    with pytest.raises(PlanError, match="per-model density"):
        MergePlan(operator="task_arithmetic", base="/b", members=(M(model="/a", density=0.5),))
    with pytest.raises(PlanError, match="sum"):
        MergePlan(operator="linear", members=(M(model="/a", weight=1), M(model="/c", weight=-1)))
    with pytest.raises(PlanError, match="weights"):
        MergePlan(operator="slerp", members=(M(model="/a", weight=2), M(model="/c")))
    with pytest.raises(PlanError, match="dtype"):
        MergePlan(operator="linear", members=(M(model="/a"),), dtype="int8")


def test_missing_and_invalid_plan_files(tmp_path):
    with pytest.raises(InputNotFoundError):
        MergePlan.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [unclosed\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        MergePlan.from_yaml(bad)


def test_equal_plans_share_an_id_and_different_plans_do_not():
    assert plan("ties", density=0.5).plan_id == plan("ties", density=0.5).plan_id
    assert plan("ties", density=0.5).plan_id != plan("ties", density=0.6).plan_id
    assert plan("ties").plan_id == plan("ties", density=1.0).plan_id  # defaults filled in


def test_plan_file_is_written_atomically(tmp_path: Path):
    target = tmp_path / "sub" / "plan.yaml"
    plan("linear").to_mergekit_yaml(target)
    assert target.is_file() and [p.name for p in target.parent.iterdir()] == ["plan.yaml"]


def test_base_free_operators_reject_a_base_and_read_mergekit_base_as_a_member():
    with pytest.raises(PlanError, match="does not use a base"):
        MergePlan(operator="linear", base="/b", members=(M(model="/a"),))
    doc = {
        "merge_method": "linear",
        "base_model": "/b",
        "models": [
            {"model": "/b", "parameters": {"weight": 1}},
            {"model": "/a", "parameters": {"weight": 1}},
        ],
    }
    p = MergePlan.from_mergekit_dict(doc)
    assert p.base is None and [m.model for m in p.members] == ["/b", "/a"]


def test_della_range_is_checked_for_per_member_densities():
    with pytest.raises(OperatorParameterError, match="epsilon"):
        MergePlan(
            operator="della",
            base="/b",
            params={"density": 0.5, "epsilon": 0.15},
            members=(M(model="/a", density=0.05), M(model="/c")),
        )
    with pytest.raises(OperatorParameterError, match="epsilon"):
        MergePlan(
            operator="della",
            base="/b",
            params={"density": 0.85, "epsilon": 0.15},
            members=(M(model="/a"),),
        )  # density + epsilon must stay below 1


def test_paths_are_compared_after_normalisation():
    with pytest.raises(PlanError, match="twice"):
        MergePlan(operator="linear", members=(M(model="/x/a"), M(model="/x/./a")))
    with pytest.raises(PlanError, match="also listed"):
        MergePlan(operator="ties", base="/x/b", members=(M(model="/x/../x/b"),))


@pytest.mark.parametrize(
    "doc",
    [
        {"merge_method": "ties", "base_model": "/b", "models": [{"model": "/a", 1: 2}]},
        {
            "merge_method": "ties",
            "base_model": "/b",
            "models": [{"model": "/a", "parameters": {"weight": 10**400}}],
        },
        {
            "merge_method": "ties",
            "base_model": "/b",
            "models": [{"model": "/a", "parameters": {"weight": float("inf")}}],
        },
        {
            "merge_method": "ties",
            "base_model": "/b",
            "models": [{"model": "/a"}],
            "parameters": {"lambda": 10**400},
        },
        {
            "merge_method": "dare_ties",
            "base_model": "/b",
            "models": [{"model": "/a"}],
            "simmerge": {"seed": 2**70},
        },
        {"merge_method": 7, "models": [{"model": "/a"}]},
    ],
)
def test_odd_values_in_plan_files_are_plan_errors(doc):
    with pytest.raises(PlanError):
        MergePlan.from_mergekit_dict(doc)
