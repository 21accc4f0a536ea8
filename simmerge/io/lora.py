"""LoRA adapters (PEFT folders) read as full checkpoints, one tensor at a time.

Most fine-tunes people publish are LoRA adapters: ``adapter_config.json`` plus
``adapter_model.safetensors`` holding, per target module, ``lora_A`` (r x in) and ``lora_B``
(out x r). The full weight is ``W + B @ A * scale`` with ``scale = lora_alpha / r``
(``lora_alpha / sqrt(r)`` for rsLoRA; per-module ``rank_pattern`` / ``alpha_pattern`` override
both). ``simmerge.io.checkpoint.LoraCheckpoint`` presents ``base + adapter`` as a checkpoint
with the base's tensor names, dtypes and shapes, and computes each tensor only when it is read --
so merges, sketches and signatures stream an adapter exactly as they stream a full checkpoint,
without writing the merged-in model anywhere and without importing ``peft``.

Also handled: embedding adapters (``lora_embedding_A``/``_B``, whose product is transposed),
``fan_in_fan_out`` (GPT-2's Conv1D), and tensors saved whole (``modules_to_save``, saved
embedding layers, trained biases), which replace the base's. DoRA and other PEFT types are
refused with a typed error, as is an adapter whose tensors do not fit the base.

mergekit's ``BASE+ADAPTER`` path syntax is accepted wherever a model path is.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simmerge.errors import AdapterBaseMismatchError, AdapterError, InputNotFoundError
from simmerge.io.safetensors_format import TensorInfo, read_header, read_tensor

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def is_adapter(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def split_plus(path: str) -> tuple[str, str] | None:
    """mergekit's ``BASE+ADAPTER``: the two folders, or None when ``path`` is one folder."""
    if "+" not in path or Path(path).expanduser().exists():
        return None
    base, _, adapter = path.rpartition("+")
    return (base, adapter) if base and adapter else None


@dataclass(frozen=True)
class LoraDelta:
    a: TensorInfo
    b: TensorInfo
    scale: float
    transpose: bool  # embeddings (and fan_in_fan_out): delta = (B @ A).T


@dataclass(frozen=True)
class Adapter:
    """What an adapter changes: low-rank deltas and whole tensors, by base tensor name."""

    folder: Path
    files: tuple[Path, ...]
    deltas: dict[str, LoraDelta]
    whole: dict[str, TensorInfo]

    def apply(self, name: str, base_tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The adapted tensor ``name`` given the base's (computed in float32)."""
        t = read_tensor(self.whole[name]).to(dtype) if name in self.whole else base_tensor
        d = self.deltas.get(name)
        if d is None:
            return t
        product = read_tensor(d.b).float() @ read_tensor(d.a).float()
        if d.transpose:
            product = product.T
        return (t.float() + product * d.scale).to(dtype)

    @property
    def has_tokenizer(self) -> bool:
        return any((self.folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern: a key matches a module whose name ends with it."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module) or re.fullmatch(key, module):
            return value
    return default


def adapter_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise InputNotFoundError(
            f"{str(folder)!r} is not a PEFT adapter folder (no {ADAPTER_CONFIG}).",
            "pass the folder that save_pretrained wrote for the adapter.",
        )
    try:
        return json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise AdapterError(f"{cfg_path} is not valid JSON ({exc}).", "re-save it.") from None


def named_base(folder: Path) -> Path:
    """The local base folder the adapter's config names (typed error if it names none)."""
    named = adapter_config(folder).get("base_model_name_or_path")
    candidate = Path(named).expanduser() if named else None
    if candidate is not None and not candidate.is_absolute():
        candidate = folder / candidate
    if candidate is None or not candidate.is_dir():
        raise InputNotFoundError(
            f"Adapter {str(folder)!r} names base {named!r}, which is not a local folder.",
            "give the base explicitly: catalog experts use the catalog's base, and a merge "
            "config can write `BASE+ADAPTER`.",
        )
    return candidate


def read_adapter(folder: Path, base_tensors: dict[str, TensorInfo], base_path: Path) -> Adapter:
    """Parse the adapter and check every tensor it changes against the base's."""
    cfg = adapter_config(folder)
    cfg_path = folder / ADAPTER_CONFIG
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(
            f"Adapter {str(folder)!r} is a {cfg.get('peft_type')} adapter; only LoRA is read.",
            "merge it into its base with peft (merge_and_unload) and use the full model.",
        )
    if cfg.get("use_dora"):
        raise AdapterError(
            f"Adapter {str(folder)!r} uses DoRA, whose weight is not W + B A.",
            "merge it into its base with peft (merge_and_unload) and use the full model.",
        )
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise InputNotFoundError(
            f"Adapter {str(folder)!r} has no {ADAPTER_WEIGHTS}.",
            "save the adapter with safe_serialization=True.",
        )
    tensors = read_header(weights).tensors
    r_default, alpha_default = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    rslora, fan_in_fan_out = bool(cfg.get("use_rslora")), bool(cfg.get("fan_in_fan_out"))
    pairs: dict[str, dict[str, TensorInfo]] = {}
    whole: dict[str, TensorInfo] = {}
    for key, info in tensors.items():
        name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
        m = re.fullmatch(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight", name) or re.fullmatch(
            r"(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)", name
        )
        if m:
            pairs.setdefault(m["module"], {})[m["part"]] = info
            continue
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
        whole[name] = info
    deltas: dict[str, LoraDelta] = {}
    for module, parts in pairs.items():
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_key, b_key = (
            ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        )
        if a_key not in parts or b_key not in parts:
            raise AdapterError(
                f"Adapter {str(folder)!r} has only one of {a_key}/{b_key} for {module!r}.",
                "the adapter file is incomplete; re-save it.",
            )
        r = int(_pattern_value(cfg.get("rank_pattern") or {}, module, r_default))
        alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, alpha_default))
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        deltas[f"{module}.weight"] = LoraDelta(
            parts[a_key], parts[b_key], scale, transpose=embedding or fan_in_fan_out
        )
    for name in [*deltas, *whole]:
        if name not in base_tensors:
            raise AdapterBaseMismatchError(
                f"Adapter {str(folder)!r} changes {name!r}, which base {str(base_path)!r} "
                "does not have.",
                "use the base the adapter was trained from (its adapter_config.json names it).",
            )
    for name, d in deltas.items():
        out_dim, in_dim = d.b.shape[0], d.a.shape[1]
        shape = (in_dim, out_dim) if d.transpose else (out_dim, in_dim)
        if tuple(base_tensors[name].shape) != shape or d.a.shape[0] != d.b.shape[1]:
            raise AdapterBaseMismatchError(
                f"Adapter {str(folder)!r}: {name!r} would change a "
                f"{list(base_tensors[name].shape)} tensor by a {list(shape)} product.",
                "use the base the adapter was trained from (its adapter_config.json names it).",
            )
    for name, info in whole.items():
        if tuple(info.shape) != tuple(base_tensors[name].shape):
            raise AdapterBaseMismatchError(
                f"Adapter {str(folder)!r} saves {name!r} as {list(info.shape)}, but the base's "
                f"is {list(base_tensors[name].shape)} (a resized vocabulary?).",
                "use the base the adapter was trained from, with the same vocabulary.",
            )
    return Adapter(folder=folder, files=(cfg_path, weights), deltas=deltas, whole=whole)
