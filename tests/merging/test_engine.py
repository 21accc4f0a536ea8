"""The streaming merge engine: exact results, loadable HF folders, atomic output, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from simmerge.cli.main import main as cli_main
from simmerge.errors import (
    NonFiniteWeightsError,
    OutputPathError,
    SimmergeError,
    TensorMismatchError,
)
from simmerge.io.checkpoint import open_checkpoint
from simmerge.merging import OPERATOR_NAMES, MergePlan, PlanMember, apply_operator, merge

PARAMS = {
    "linear": {},
    "task_arithmetic": {"lambda": 0.8},
    "ties": {"density": 0.5},
    "dare_linear": {"density": 0.5, "seed": 2},
    "dare_ties": {"density": 0.5},
    "slerp": {"t": 0.3},
    "breadcrumbs": {"density": 0.5, "gamma": 0.05},
    "della": {"density": 0.5, "epsilon": 0.1},
    "model_stock": {},
    "breadcrumbs_ties": {"density": 0.6, "gamma": 0.02},
    "della_linear": {"density": 0.5, "epsilon": 0.2},
    "nuslerp": {},
    "sce": {"select_topk": 0.5},
    "karcher": {},
    "passthrough": {"scale": 0.5},
}
MEMBERS = {"slerp": 2, "nuslerp": 2, "passthrough": 1}
BASE_FREE = ("linear", "slerp", "karcher", "passthrough")


def make_plan(models, operator: str, members=("a", "b", "c"), **kw) -> MergePlan:
    members = members[: MEMBERS.get(operator, len(members))]
    return MergePlan(
        operator=operator,
        base=None if operator in BASE_FREE else str(models["base"]),
        members=tuple(PlanMember(model=str(models[m])) for m in members),
        params=PARAMS[operator],
        **kw,
    )


@pytest.mark.parametrize("operator", OPERATOR_NAMES)
def test_every_operator_writes_a_folder_transformers_loads(tiny_models, tmp_path, operator):  # noqa: F811
    plan = make_plan(tiny_models, operator)
    out = merge(plan, tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out)
    in_memory = merge(plan)
    loaded = model.state_dict()
    for name, tensor in in_memory.items():
        assert torch.equal(loaded[name], tensor), name
    # the engine's result is exactly the operator applied to each tensor
    ckpts = {k: open_checkpoint(tiny_models[k]) for k in ("base", "a", "b", "c")}
    name = "model.layers.0.mlp.up_proj.weight"
    experts = [ckpts[m].get(name) for m in ("a", "b", "c")[: len(plan.members)]]
    expected = apply_operator(
        operator,
        ckpts["base"].get(name) if plan.base else None,
        experts,
        params=plan.params,
        tensor_name=name,
    )
    assert torch.equal(in_memory[name], expected)
    assert (out / "tokenizer.json").is_file() and (out / "simmerge_plan.yaml").is_file()
    assert MergePlan.from_yaml(out / "simmerge_plan.yaml") == plan
    tmp_leftovers = [p.name for p in tmp_path.iterdir() if p.name != "merged"]
    assert tmp_leftovers == []


def test_sharded_inputs_and_sharded_output(tiny_models, tmp_path):  # noqa: F811
    plan = make_plan(tiny_models, "ties", members=("a", "sharded"))
    out = merge(plan, tmp_path / "m", shard_bytes=8 * 1024)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model = AutoModelForCausalLM.from_pretrained(out)
    ref = merge(plan)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())


def test_output_dtype_conversion_and_bf16_inputs(tiny_models, tmp_path):  # noqa: F811
    plan = make_plan(tiny_models, "task_arithmetic", members=("a", "bf16"), dtype="bfloat16")
    out = merge(plan, tmp_path / "m")
    ckpt = open_checkpoint(out)
    assert {ckpt.info(n).dtype for n in ckpt.names} == {"BF16"}
    assert json.loads((out / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_existing_output_folder_is_not_overwritten_by_default(tiny_models, tmp_path):  # noqa: F811
    plan = make_plan(tiny_models, "linear")
    (tmp_path / "m").mkdir()
    with pytest.raises(OutputPathError, match="already exists"):
        merge(plan, tmp_path / "m")
    assert merge(plan, tmp_path / "m", overwrite=True) == tmp_path / "m"
    assert open_checkpoint(tmp_path / "m").names


def test_output_folder_that_is_or_contains_an_input_model_is_refused(tiny_models, tmp_path):  # noqa: F811
    plan = make_plan(tiny_models, "linear")
    member = Path(plan.members[0].model)
    with pytest.raises(OutputPathError, match="is the input model"):
        merge(plan, member, overwrite=True)
    with pytest.raises(OutputPathError, match="contains the input model"):
        merge(plan, member.parent, overwrite=True)
    assert open_checkpoint(member).names  # the input is untouched


def test_unwritable_output_folder_is_refused_before_any_work(tiny_models, tmp_path, monkeypatch):  # noqa: F811
    import os

    parent = tmp_path / "readonly"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(  # root may write anywhere: simulate a folder without write permission
        os, "access", lambda p, mode: False if str(p) == str(parent) else real_access(p, mode)
    )
    with pytest.raises(OutputPathError, match="not writable") as err:
        merge(make_plan(tiny_models, "linear"), parent / "m")
    assert str(parent) in str(err.value) and "Fix:" in str(err.value)
    assert list(parent.iterdir()) == []


def test_disk_full_while_writing_leaves_no_output_and_names_the_folder(
    tiny_models,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    import errno

    from simmerge.io import safetensors_format as safetensors_io

    real_write = safetensors_io.SafetensorsStreamWriter.write
    calls = {"n": 0}

    def full_disk(self, name, tensor):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, name, tensor)

    monkeypatch.setattr(safetensors_io.SafetensorsStreamWriter, "write", full_disk)
    out_root = tmp_path / "outputs"
    out_root.mkdir()
    with pytest.raises(OutputPathError, match="No space left on device"):
        merge(make_plan(tiny_models, "linear"), out_root / "m")
    assert list(out_root.iterdir()) == []  # no output, no temporary folder


def test_disk_full_in_the_background_writer_leaves_no_output(
    tiny_models,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    import errno

    from simmerge.io import safetensors_format as safetensors_io

    class FillsUp:
        """A file whose third write (a tensor written by the helper thread) hits a full disk."""

        def __init__(self, path, mode):
            self.inner = open(path, mode)  # noqa: SIM115
            self.writes = 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def fake_open(path, mode="r", *args, **kwargs):
        return FillsUp(path, mode) if "w" in mode else open(path, mode, *args, **kwargs)  # noqa: SIM115

    monkeypatch.setattr(safetensors_io, "open", fake_open, raising=False)
    monkeypatch.setattr(safetensors_io, "BACKGROUND_MIN_BYTES", 0)  # every tensor in the thread
    out_root = tmp_path / "outputs"
    out_root.mkdir()
    with pytest.raises(OutputPathError, match="No space left on device"):
        merge(make_plan(tiny_models, "linear"), out_root / "m")
    assert list(out_root.iterdir()) == []


def test_failed_merge_leaves_no_output_and_no_temp_folder(tiny_models, tmp_path):  # noqa: F811
    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["a"], bad)
    ckpt = open_checkpoint(bad)
    tensors = {n: ckpt.get(n) for n in ckpt.names}
    last = ckpt.names[-1]
    tensors[last][0] = float("inf")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    plan = MergePlan(
        operator="task_arithmetic",
        base=str(tiny_models["base"]),
        members=(PlanMember(model=str(bad)), PlanMember(model=str(tiny_models["b"]))),
    )
    out_root = tmp_path / "outputs"
    out_root.mkdir()
    with pytest.raises(NonFiniteWeightsError, match=last):
        merge(plan, out_root / "m")
    assert list(out_root.iterdir()) == []


def test_members_must_match_the_base(tiny_models, tmp_path):  # noqa: F811
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(tiny_models["a"] / "config.json", odd / "config.json")
    save_file({"x": torch.zeros(2)}, odd / "model.safetensors")
    plan = MergePlan(
        operator="ties", base=str(tiny_models["base"]), members=(PlanMember(model=str(odd)),)
    )
    with pytest.raises(TensorMismatchError):
        merge(plan)


def test_cli_merge_writes_a_loadable_model(tiny_models, tmp_path, capsys):  # noqa: F811
    plan = make_plan(tiny_models, "dare_ties")
    plan.to_mergekit_yaml(tmp_path / "plan.yaml")
    code = cli_main(
        ["merge", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "m"), "--json", "--quiet"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["plan_id"] == plan.plan_id
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in merge(plan).items())


def test_cli_reports_input_errors_without_traceback(tmp_path):
    (tmp_path / "plan.yaml").write_text("merge_method: tie\nmodels: [{model: x}]\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simmerge.cli.main",
            "merge",
            str(tmp_path / "plan.yaml"),
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert "Unknown merge operator 'tie'" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_in_an_input_is_reported_even_when_trimming_would_drop_it(tiny_models, tmp_path):  # noqa: F811
    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["a"], bad)
    ckpt = open_checkpoint(bad)
    tensors = {n: ckpt.get(n) for n in ckpt.names}
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    plan = MergePlan(
        operator="ties",
        base=str(tiny_models["base"]),
        params={"density": 0.2},
        members=(PlanMember(model=str(bad)), PlanMember(model=str(tiny_models["b"]))),
    )
    with pytest.raises(NonFiniteWeightsError, match=name):
        merge(plan)


def test_random_operators_give_the_same_weights_for_the_same_seed(tiny_models):  # noqa: F811
    plan = make_plan(tiny_models, "della")
    one, two = merge(plan), merge(plan)
    assert all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.parametrize("device", ["cdua", "cuda:0" if not torch.cuda.is_available() else "tpu"])
def test_bad_devices_are_reported(tiny_models, device):  # noqa: F811
    with pytest.raises(SimmergeError, match="evice"):
        merge(make_plan(tiny_models, "linear"), device=device)
