"""Where a tensor sits in a decoder: before the layers, in layer ``i``, or after them.

Gradients need a tensor's relative depth and slices need to renumber layers, so the engine must
know which tensors belong to which layer. Hugging Face decoders name them
``<prefix>.layers.<i>.<rest>`` (Llama, Mistral, Qwen, Gemma, SmolLM), ``<prefix>.h.<i>.``
(GPT-2, Falcon) or ``<prefix>.blocks.<i>.``; everything else is either an input-side tensor
(token and position embeddings, read before the first layer) or an output-side one (final norm,
LM head). That split decides which slice a non-layer tensor is taken from in a layer-stacking
merge: embeddings from the first slice's models, the rest from the last slice's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks))\.(?P<index>\d+)\.(?P<rest>.+)$")
_INPUT_SIDE = ("embed", "wte", "wpe", "tok_embeddings", "word_embeddings")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# config lists with one entry per layer, renumbered with the layers by a layer-stacking merge
PER_LAYER_CONFIG_KEYS = ("layer_types",)


def layer_of(name: str) -> tuple[str, int, str] | None:
    """``(prefix, index, rest)`` for a layer tensor, None for any other tensor."""
    m = _LAYER.match(name)
    if m is None:
        return None
    return m["prefix"], int(m["index"]), m["rest"]


def renumber(name: str, index: int) -> str:
    """``name`` moved to layer ``index`` (a layer tensor's name only)."""
    parts = layer_of(name)
    if parts is None:
        raise ValueError(f"{name!r} is not a layer tensor")
    prefix, _, rest = parts
    return f"{prefix}.{index}.{rest}"


def is_input_side(name: str) -> bool:
    """A non-layer tensor read before the layers (embeddings)."""
    return any(key in name for key in _INPUT_SIDE)


def layer_count(config: Mapping[str, Any], names: list[str]) -> int:
    """Number of decoder layers: from the config when it says, else from the tensor names."""
    cfg = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    for key in LAYER_COUNT_KEYS:
        value = cfg.get(key) if cfg is not None else None
        if isinstance(value, int) and value > 0:
            return value
    indices = [p[1] for p in map(layer_of, names) if p is not None]
    return max(indices) + 1 if indices else 0


def relative_depth(index: int, layers: int) -> float:
    """``t`` of layer ``index`` among ``layers`` for gradients (mergekit: 1 for a single one)."""
    return index / (layers - 1) if layers > 1 else 1.0
