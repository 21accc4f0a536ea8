"""Whole mergekit configs: gradients, filters, per-model parameters, slices, tokenizer and
chat template -- each checked against the operator applied by hand to the right tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _factories import save_model, tiny_config
from transformers import AutoModelForCausalLM

from simmerge.errors import PlanError
from simmerge.io.checkpoint import open_checkpoint
from simmerge.merging import MergeConfig, MergePlan, apply_operator, merge
from simmerge.merging import settings as st
from simmerge.merging.layers import layer_of

LAYERS = 4


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> dict[str, Path]:
    """A 4-layer base and two experts, so gradients have room to vary."""
    root = tmp_path_factory.mktemp("deep")
    config = tiny_config(num_hidden_layers=LAYERS)
    base = save_model(root / "base", seed=0, config=config)
    return {
        "base": base,
        "a": save_model(root / "a", seed=1, base=base, config=config),
        "b": save_model(root / "b", seed=2, base=base, config=config),
    }


def tensors(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: ckpt.get(n) for n in ckpt.names}


def depth(name: str) -> float:
    parts = layer_of(name)
    return parts[1] / (LAYERS - 1) if parts else 0.0


# --- settings ----------------------------------------------------------------------------------


def test_gradient_interpolates_over_relative_depth_as_mergekit():
    g = [0.0, 0.5, 0.3, 0.7, 1.0]
    assert st.evaluate(g, "x", 0.0, float) == 0.0
    assert st.evaluate(g, "x", 1.0, float) == 1.0
    assert st.evaluate(g, "x", 0.3, float) == pytest.approx(0.5 * 0.8 + 0.3 * 0.2)  # 1.2 of 4


def test_filters_pick_the_first_match_and_fall_through_when_none_does():
    setting = st.parse_setting(
        [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.2}],
        source="t",
        where="t",
    )
    assert st.evaluate(setting, "model.layers.1.self_attn.q_proj.weight", 0.5, float) == 0.5
    assert st.evaluate(setting, "model.layers.1.mlp.up_proj.weight", 0.5, float) == 0.2
    assert st.evaluate(setting, "model.norm.weight", 0.5, float) is None
    scopes = [{"t": setting}, {"t": 0.9}]
    assert st.resolve("t", scopes, "model.norm.weight", 0.5, float) == 0.9  # next scope decides


# --- execution ---------------------------------------------------------------------------------


def test_slerp_with_filtered_gradients_merges_each_tensor_at_its_own_t(deep):
    doc = {
        "merge_method": "slerp",
        "base_model": str(deep["a"]),
        "slices": [
            {
                "sources": [
                    {"model": str(deep["a"]), "layer_range": [0, LAYERS]},
                    {"model": str(deep["b"]), "layer_range": [0, LAYERS]},
                ]
            }
        ],
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
    }
    config = MergeConfig.from_mergekit_dict(doc)
    assert not config.is_uniform
    got = merge(config)
    a, b = tensors(deep["a"]), tensors(deep["b"])
    for name, tensor in got.items():
        setting = doc["parameters"]["t"]
        t = st.evaluate(st.parse_setting(setting, source="", where=""), name, depth(name), float)
        want = apply_operator("slerp", None, [a[name], b[name]], params={"t": t})
        assert torch.allclose(tensor, want, atol=1e-6), name


def test_per_model_gamma_and_weight_gradient(deep):
    doc = {
        "merge_method": "breadcrumbs",
        "base_model": str(deep["base"]),
        "models": [
            {"model": str(deep["a"]), "parameters": {"weight": [1.0, 0.0], "gamma": 0.1}},
            {"model": str(deep["b"]), "parameters": {"weight": 0.5}},
        ],
        "parameters": {"density": 0.6, "gamma": 0.02},
    }
    got = merge(MergeConfig.from_mergekit_dict(doc))
    base, a, b = tensors(deep["base"]), tensors(deep["a"]), tensors(deep["b"])
    for name, tensor in got.items():
        want = apply_operator(
            "breadcrumbs",
            base[name],
            [a[name], b[name]],
            [1.0 - depth(name), 0.5],
            {"density": 0.6},
            member_params={"gamma": [0.1, 0.02]},
        )
        assert torch.allclose(tensor, want, atol=1e-6), name


def test_passthrough_slices_stack_layers_and_renumber_them(deep, tmp_path):
    doc = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(deep["a"]), "layer_range": [0, 3]}]},
            {"sources": [{"model": str(deep["b"]), "layer_range": [2, 4]}]},
        ],
    }
    out = merge(MergeConfig.from_mergekit_dict(doc), tmp_path / "stacked")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    got, a, b = tensors(out), tensors(deep["a"]), tensors(deep["b"])
    q = "model.layers.{}.self_attn.q_proj.weight"
    for out_layer, (src, layer) in enumerate([(a, 0), (a, 1), (a, 2), (b, 2), (b, 3)]):
        assert torch.equal(got[q.format(out_layer)], src[q.format(layer)])
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], b["lm_head.weight"])  # from the last slice
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 5


def test_a_uniform_config_is_the_same_merge_as_its_plan(deep):
    doc = {
        "merge_method": "ties",
        "base_model": str(deep["base"]),
        "models": [
            {"model": str(deep["a"]), "parameters": {"weight": 0.7, "density": 0.4}},
            {"model": str(deep["b"]), "parameters": {"weight": 0.3}},
        ],
        "parameters": {"density": 0.6, "int8_mask": True},
        "dtype": "float32",
    }
    config = MergeConfig.from_mergekit_dict(doc)
    plan = MergePlan.from_config(config)
    assert isinstance(plan, MergePlan) and plan.member_densities() == [0.4, 0.6]
    via_config, via_plan = merge(config), merge(plan)
    assert all(torch.equal(via_config[n], via_plan[n]) for n in via_plan)


def test_an_exported_config_round_trips(deep, tmp_path):
    doc = {
        "merge_method": "della_linear",
        "base_model": str(deep["base"]),
        "models": [
            {"model": str(deep["a"]), "parameters": {"epsilon": 0.05, "density": [0.5, 0.9]}},
            {"model": str(deep["b"]), "parameters": {"weight": 0.5}},
        ],
        "parameters": {"density": 0.7, "epsilon": 0.1},
        "simmerge": {"seed": 3},
    }
    config = MergeConfig.from_mergekit_dict(doc)
    path = tmp_path / "exported.yaml"
    config.to_mergekit_yaml(path)
    again = MergeConfig.from_yaml(path)
    assert again == config
    first, second = merge(config), merge(again)
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_tokenizer_source_and_chat_template_are_written(deep, tmp_path):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    doc = {
        "merge_method": "linear",
        "models": [{"model": str(deep["a"])}, {"model": str(deep["b"])}],
        "tokenizer_source": str(deep["b"]),
        "chat_template": template,
    }
    out = merge(MergeConfig.from_mergekit_dict(doc), tmp_path / "m")
    assert (out / "chat_template.jinja").read_text() == template
    assert (out / "tokenizer.json").read_bytes() == (deep["b"] / "tokenizer.json").read_bytes()


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        ({"slices": [{"sources": [{"model": "/a", "layer_range": [0, 2]}]}]}, "exactly one of"),
        ({"modules": {}}, "modules"),
        ({"parameters": {"lambda": [0, {"value": 1}]}}, "only numbers"),
        ({"parameters": {"density": [0.5, 1.5]}}, "density"),
        ({"chat_template": "chatml"}, "Jinja"),
        ({"tokenizer_source": 3}, "string"),
        ({"merge_method": "passthrough"}, "exactly 1"),
    ],
)
def test_bad_configs_are_plan_errors(deep, change, match):
    doc = {
        "merge_method": "ties",
        "base_model": str(deep["base"]),
        "models": [{"model": str(deep["a"])}, {"model": str(deep["b"])}],
        **change,
    }
    with pytest.raises(PlanError, match=match):
        MergeConfig.from_mergekit_dict(doc)


def test_a_global_parameter_under_a_model_is_refused_with_where_it_belongs(deep):
    doc = {
        "merge_method": "ties",
        "base_model": str(deep["base"]),
        "models": [{"model": str(deep["a"]), "parameters": {"lambda": 0.5}}],
    }
    with pytest.raises(PlanError, match="global parameter"):
        MergeConfig.from_mergekit_dict(doc)


def test_a_non_uniform_config_is_not_a_plan(deep):
    doc = {
        "merge_method": "task_arithmetic",
        "base_model": str(deep["base"]),
        "models": [{"model": str(deep["a"]), "parameters": {"weight": [0, 1]}}],
    }
    with pytest.raises(PlanError, match="gradient"):
        MergePlan.from_mergekit_dict(doc)


def test_slices_with_unequal_ranges_and_out_of_range_layers_are_refused(deep):
    a, b = str(deep["a"]), str(deep["b"])
    uneven = {
        "merge_method": "slerp",
        "base_model": a,
        "slices": [
            {
                "sources": [
                    {"model": a, "layer_range": [0, 2]},
                    {"model": b, "layer_range": [0, 3]},
                ]
            }
        ],
        "parameters": {"t": 0.5},
    }
    with pytest.raises(PlanError, match="same length"):
        MergeConfig.from_mergekit_dict(uneven)
    beyond = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": a, "layer_range": [2, 6]}]}],
    }
    with pytest.raises(PlanError, match="does not have"):
        merge(MergeConfig.from_mergekit_dict(beyond))


def test_merge_command_runs_a_config_with_gradients(deep, tmp_path, capsys):
    import yaml

    from simmerge.cli.main import main

    doc = {
        "merge_method": "task_arithmetic",
        "base_model": str(deep["base"]),
        "models": [{"model": str(deep["a"]), "parameters": {"weight": [0.2, 1.0]}}],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["merge", str(path), "--out", str(tmp_path / "out"), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["plan_id"] == MergeConfig.from_yaml(path).config_id
    written = MergeConfig.from_yaml(tmp_path / "out" / "simmerge_plan.yaml")
    assert written.slices[0].sources[0].params["weight"] == [0.2, 1.0]


def test_per_model_gamma_is_uniform_only_when_every_model_uses_the_same_value(deep):
    def doc(*gammas):
        return {
            "merge_method": "breadcrumbs",
            "base_model": str(deep["base"]),
            "models": [
                {"model": str(deep[m]), "parameters": {"gamma": g} if g is not None else {}}
                for m, g in zip(("a", "b"), gammas, strict=True)
            ],
        }

    same = MergePlan.from_mergekit_dict(doc(0.05, 0.05))
    assert same.params["gamma"] == 0.05
    with pytest.raises(PlanError, match="different values of 'gamma'"):
        MergePlan.from_mergekit_dict(doc(0.05, None))  # the other model uses the default
    assert MergePlan.from_mergekit_dict(doc(0.01, None)).params["gamma"] == 0.01
