"""Micro checkpoints: tiny real Hugging Face models for tests, benchmarks and parity checks.

A random Llama base and "experts" made by adding seeded noise to it. Nothing is trained, but
everything is saved and loaded through the real transformers code paths (``save_pretrained``,
``from_pretrained``), with a real fast tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = ["<pad>", "<eos>"] + [chr(c) for c in range(ord("a"), ord("a") + 30)]


def tiny_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=len(VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_tokenizer(vocab: list[str] = VOCAB) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def save_model(
    path: Path,
    *,
    seed: int = 0,
    base: Path | None = None,
    scale: float = 0.05,
    dtype: torch.dtype = torch.float32,
    config: LlamaConfig | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
    max_shard_size: str | None = None,
) -> Path:
    """Save a tiny Llama; with ``base``, its weights are base + seeded noise (an 'expert')."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config or tiny_config())
    if base is not None:
        ref = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for (_, p), (_, q) in zip(
                model.named_parameters(), ref.named_parameters(), strict=True
            ):
                p.copy_(q + scale * torch.randn(q.shape, generator=g))
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    (tokenizer or tiny_tokenizer()).save_pretrained(path)
    return path


def sub_catalog(
    zoo: Path, folder: Path, experts: dict[str, list[str] | None], name: str = "catalog.yaml"
) -> Path:
    """Write a catalog of some of ``zoo``'s experts into ``folder`` (absolute paths): ``experts``
    maps each kept expert to the tasks it declares (None: its own), in the zoo's order; only
    the tasks they declare are kept."""
    import yaml

    data = yaml.safe_load((zoo / "catalog.yaml").read_text())

    def absolute(path: str) -> str:
        return str((zoo / path).resolve())

    data["base"]["path"] = absolute(data["base"]["path"])
    data["experts"] = [e for e in data["experts"] if e["name"] in experts]
    for e in data["experts"]:
        e["path"] = absolute(e["path"])
        if experts[e["name"]] is not None:
            e["tasks"] = list(experts[e["name"]])
    used = {t for e in data["experts"] for t in e.get("tasks", [])}
    data["tasks"] = {
        t: {k: absolute(v) for k, v in spec.items()}
        for t, spec in (data.get("tasks") or {}).items()
        if t in used
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
