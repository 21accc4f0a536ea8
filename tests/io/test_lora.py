"""LoRA adapters as checkpoints: every tensor equals peft's own merge, streamed without peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _factories import save_model, tiny_config

from simmerge.errors import AdapterBaseMismatchError, AdapterError
from simmerge.io.checkpoint import LoraCheckpoint, open_checkpoint
from simmerge.io.models import load_model

peft = pytest.importorskip("peft")


def make_adapter(base: Path, out: Path, *, seed: int, **config) -> Path:
    """Train nothing: a peft adapter with random B (peft starts it at zero) and its merge."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        modules_to_save=["lm_head"],
        **config,
    )
    wrapped = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.normal_(0, 0.5)
            if "modules_to_save" in name:
                p.add_(0.25)
    wrapped.save_pretrained(out / "adapter")
    merged = wrapped.merge_and_unload()
    merged.save_pretrained(out / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).is_file():
            (out / "merged" / name).write_bytes((base / name).read_bytes())
    # peft records the base as it was passed; point it at the local folder
    cfg_path = out / "adapter" / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = save_model(root / "base", seed=0)
    made = make_adapter(base, root, seed=1)
    expert = save_model(root / "expert", seed=2, base=base)
    return {"base": base, "adapter": made / "adapter", "merged": made / "merged", "expert": expert}


def test_every_tensor_of_an_adapter_equals_peft_merge_and_unload(lora):
    ckpt = open_checkpoint(lora["adapter"])
    assert isinstance(ckpt, LoraCheckpoint)
    merged = open_checkpoint(lora["merged"])
    assert ckpt.names == open_checkpoint(lora["base"]).names
    changed = 0
    for name in ckpt.names:
        ours, theirs = ckpt.get(name), merged.get(name)
        assert torch.allclose(ours, theirs, atol=1e-6), name
        changed += not torch.equal(ours, open_checkpoint(lora["base"]).get(name))
    assert changed >= 6  # q, v, down in both layers, embeddings, lm_head


def test_base_plus_adapter_syntax_works_in_a_mergekit_config(lora):
    from simmerge.merging import MergeConfig, merge

    def linear(first: str) -> dict:
        return {
            "merge_method": "linear",
            "models": [
                {"model": first, "parameters": {"weight": 0.5}},
                {"model": str(lora["expert"]), "parameters": {"weight": 0.5}},
            ],
        }

    via_adapter = merge(MergeConfig.from_mergekit_dict(linear(f"{lora['base']}+{lora['adapter']}")))
    via_merged = merge(MergeConfig.from_mergekit_dict(linear(str(lora["merged"]))))
    for name, tensor in via_merged.items():
        assert torch.allclose(via_adapter[name], tensor, atol=1e-6), name


def test_a_catalog_expert_may_be_an_adapter_and_runs_as_a_model(lora, tmp_path):
    from simmerge.catalog import Catalog

    catalog = Catalog.from_dict(
        {
            "base": {"name": "base", "path": str(lora["base"])},
            "experts": [
                {"name": "lora", "path": str(lora["adapter"]), "tasks": ["t"]},
                {"name": "full", "path": str(lora["expert"]), "tasks": ["t"]},
            ],
        },
        root=tmp_path,
    )
    path = catalog.model("lora").path
    assert str(path) == f"{lora['base']}+{lora['adapter']}"
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        ours = load_model(path)(ids).logits
        theirs = load_model(lora["merged"])(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_an_adapter_on_the_wrong_base_is_refused(lora, tmp_path):
    other = save_model(tmp_path / "other", seed=3, config=tiny_config(hidden_size=32))
    with pytest.raises(AdapterBaseMismatchError, match="trained from"):
        open_checkpoint(f"{other}+{lora['adapter']}")


def test_dora_and_unnamed_bases_are_typed_errors(lora, tmp_path):
    import shutil

    dora = tmp_path / "dora"
    shutil.copytree(lora["adapter"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(AdapterError, match="DoRA"):
        open_checkpoint(dora)
    hub = tmp_path / "hub"
    shutil.copytree(lora["adapter"], hub)
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M"
    (hub / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="not a local folder"):
        open_checkpoint(hub)


def test_features_of_an_adapter_expert_equal_those_of_its_merged_model(lora, tmp_path):
    """Signatures and sketches read the adapter as the merged model they stand for."""
    from simmerge.catalog import Catalog
    from simmerge.signals.profiles import FeatureOptions, build_profiles, feature_rows

    def rows(first: Path, name: str) -> dict:
        catalog = Catalog.from_dict(
            {
                "base": {"name": "base", "path": str(lora["base"])},
                "experts": [
                    {"name": "x", "path": str(first), "tasks": ["t"]},
                    {"name": "full", "path": str(lora["expert"]), "tasks": ["t"]},
                ],
            },
            root=tmp_path,
        )
        options = FeatureOptions(device="cpu", cache_dir=tmp_path / f"cache-{name}")
        out = feature_rows(build_profiles(catalog, options, progress=False))
        return {(r.a, r.b, r.task): r.values for r in out}

    via_adapter, via_merged = rows(lora["adapter"], "adapter"), rows(lora["merged"], "merged")
    assert via_adapter.keys() == via_merged.keys()
    for key, values in via_merged.items():
        assert via_adapter[key] == pytest.approx(values, rel=1e-4, abs=1e-5, nan_ok=True), key


def test_a_merge_may_not_write_into_an_adapter_it_reads(lora):
    from simmerge.errors import OutputPathError
    from simmerge.merging import MergeConfig, merge

    doc = {
        "merge_method": "linear",
        "models": [{"model": f"{lora['base']}+{lora['adapter']}"}, {"model": str(lora["expert"])}],
    }
    with pytest.raises(OutputPathError, match="destroy"):
        merge(MergeConfig.from_mergekit_dict(doc), lora["adapter"], overwrite=True)
