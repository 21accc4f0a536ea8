"""Loading local Hugging Face causal LMs and their tokenizers, and choosing the device.

Below every stage that runs a model (signatures, evaluation, scoring merges): each loads
through here, so trust_remote_code is off in one place and a merge held in memory is
loaded into a model the same way everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simmerge.errors import InputNotFoundError, TensorMismatchError


def pick_device(device: Any | None) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _quiet_weight_loading():
    """transformers draws a progress bar per model load; over a catalog of models that is
    noise, so it is switched off while loading and restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(model_dir: str | Path, device: Any | None = None, dtype: Any | None = None):
    """Load a local HF causal-LM folder (never ``trust_remote_code``) in eval mode."""
    from transformers import AutoModelForCausalLM

    adapter = _adapter_checkpoint(model_dir)
    if adapter is not None:  # base + LoRA: build the base's architecture, load merged weights
        state = {name: adapter.get(name) for name in adapter.names}
        return load_model_with_state(adapter.base.path, state, device=device, dtype=dtype)
    model_dir = _check_model_dir(model_dir)
    with _quiet_weight_loading():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False)
    return model.to(device=pick_device(device), dtype=dtype).eval()


def _adapter_checkpoint(model_dir: str | Path):
    """The adapter over its base when ``model_dir`` is a LoRA folder or ``BASE+ADAPTER``."""
    from simmerge.io.checkpoint import open_lora
    from simmerge.io.lora import is_adapter, split_plus

    plus = split_plus(str(model_dir))
    if plus is not None:
        return open_lora(plus[1], plus[0])
    if is_adapter(model_dir):
        return open_lora(model_dir)
    return None


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    adapter = _adapter_checkpoint(model_dir)
    folder = adapter.support_dir if adapter is not None else _check_model_dir(model_dir)
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def load_model_with_state(
    model_dir: str | Path,
    state_dict: Mapping[str, Any],
    device: Any | None = None,
    dtype: Any | None = None,
):
    """Build the architecture of ``model_dir`` (its config.json) and load ``state_dict`` into it.

    This is how a merge held in memory (a dict of tensors named like the base's) is evaluated.
    Tensors missing from the state are an error, except ones tied to a loaded tensor (e.g.
    ``lm_head.weight`` with tied embeddings). The returned model remembers ``model_dir`` as its
    ``name_or_path`` so :func:`evaluate` finds the tokenizer there.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = _check_model_dir(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    with _without_random_init():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    load_state_into(model, state_dict, model_dir)
    model.config._name_or_path = str(model_dir)
    return model.to(device=pick_device(device), dtype=dtype).eval()


def _without_random_init():
    """Build a model without drawing its random initial weights.

    Why: every parameter is overwritten by the state dict right after, and drawing them is
    most of the cost of building a model (every merge evaluated or signed in memory pays it).
    Buffers computed at build time (rotary frequencies) are built as usual, and
    :func:`load_state_into` refuses a state that leaves a parameter unset, so no uninitialized
    memory is ever used.
    """
    try:  # transformers 5
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def load_state_into(model: Any, state_dict: Mapping[str, Any], model_dir: str | Path) -> Any:
    """Copy ``state_dict`` into an already built ``model`` (of ``model_dir``'s architecture).

    Lets a caller that scores many merges reuse one model instead of building one per merge.
    Missing tensors are an error unless tied to a loaded one (``lm_head.weight`` with tied
    embeddings); so are unexpected ones.
    """
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=False)
    if missing:
        ptr_of = {n: p.data_ptr() for n, p in model.named_parameters(remove_duplicate=False)}
        loaded = {ptr_of[n] for n in state_dict if n in ptr_of}
        missing = [n for n in missing if ptr_of.get(n) not in loaded]
    if missing or unexpected:
        raise TensorMismatchError(
            f"State dict does not fit the model in {str(model_dir)!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.",
            "merge checkpoints that share the reference model's architecture and tensor names.",
        )
    return model


def _check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise InputNotFoundError(
            f"{str(path)!r} is not a model folder (no config.json).",
            "pass a local Hugging Face model folder (config.json, weights, tokenizer files).",
        )
    return path


def pad_token_id(tokenizer: Any, model: Any) -> int:
    for cand in (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        getattr(model.config, "pad_token_id", None),
        getattr(model.config, "eos_token_id", None),
    ):
        if isinstance(cand, int):
            return cand
    return 0


def right_padded(seqs: list[list[int]], pad: int, device: Any):
    """Right-padded ids and attention mask for teacher-forced scoring."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
