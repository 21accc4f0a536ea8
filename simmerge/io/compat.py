"""Can these checkpoints be merged? Cheap checks that run before anything heavy.

Used by ``Catalog.load`` (every expert against the base) and by the merge engine (every member
against the reference model). All checks read only config files, safetensors headers and
tokenizer files -- never weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from simmerge.errors import ArchitectureMismatchError, TensorMismatchError, VocabMismatchError
from simmerge.io.checkpoint import Checkpoint

ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
)


def check_architecture(
    ref: Checkpoint,
    other: Checkpoint,
    ref_name: str,
    other_name: str,
    *,
    layers_may_differ: bool = False,
) -> None:
    keys = [k for k in ARCHITECTURE_KEYS if not (layers_may_differ and k == "num_hidden_layers")]
    diffs = [
        f"{key}: {ref.config.get(key)!r} vs {other.config.get(key)!r}"
        for key in keys
        if ref.config.get(key) != other.config.get(key)
    ]
    if diffs:
        raise ArchitectureMismatchError(
            f"Model {other_name!r} ({other.path}) has a different architecture from "
            f"{ref_name!r} ({ref.path}): {'; '.join(diffs)}.",
            "only checkpoints fine-tuned from the same base model can be merged; remove it.",
        )


def check_tensors(ref: Checkpoint, other: Checkpoint, ref_name: str, other_name: str) -> None:
    missing = [n for n in ref.tensors if n not in other.tensors]
    extra = [n for n in other.tensors if n not in ref.tensors]
    shapes = [
        f"{n}: {list(ref.tensors[n].shape)} vs {list(other.tensors[n].shape)}"
        for n in ref.tensors
        if n in other.tensors and ref.tensors[n].shape != other.tensors[n].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (first: {missing[0]!r})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s) (first: {extra[0]!r})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (first: {shapes[0]})")
    if problems:
        vocab_rows = [n for n in shapes if "embed" in n or "lm_head" in n]
        hint = (
            "the vocabulary was resized; resize it back or drop the model"
            if vocab_rows and len(vocab_rows) == len(shapes) and not missing and not extra
            else "the checkpoints do not share one base model; remove the mismatching one"
        )
        cls = VocabMismatchError if hint.startswith("the vocabulary") else TensorMismatchError
        raise cls(
            f"Model {other_name!r} ({other.path}) does not match {ref_name!r}: "
            f"{'; '.join(problems)}.",
            hint + ".",
        )


def _tokenizer_digest(folder: Path) -> str | None:
    present = [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not present:
        return None
    h = hashlib.blake2b(digest_size=16)
    for f in present:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def check_vocab(ref: Checkpoint, other: Checkpoint, ref_name: str, other_name: str) -> None:
    """Same vocab size, and same vocabulary when both folders ship a tokenizer.

    Identical tokenizer files pass at once; otherwise both tokenizers are loaded (locally, no
    remote code) and their token -> id maps compared, so a re-serialised but equal tokenizer
    still passes.
    """
    if ref.config.get("vocab_size") != other.config.get("vocab_size"):
        raise VocabMismatchError(
            f"Model {other_name!r} has vocab_size {other.config.get('vocab_size')} but "
            f"{ref_name!r} has {ref.config.get('vocab_size')}.",
            "merging would garble the embeddings; use experts that keep the base's tokenizer.",
        )
    a, b = _tokenizer_digest(ref.path), _tokenizer_digest(other.path)
    if a is None or b is None or a == b:
        return
    from transformers import AutoTokenizer

    try:
        vocab_a = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=False).get_vocab()
        vocab_b = AutoTokenizer.from_pretrained(other.path, trust_remote_code=False).get_vocab()
    except Exception as exc:  # tokenizer loaders raise many types for malformed files
        raise VocabMismatchError(
            f"Could not load the tokenizers of {ref_name!r} and {other_name!r} to compare them "
            f"({exc}).",
            "make sure both folders hold complete tokenizer files.",
        ) from None
    if vocab_a != vocab_b:
        differing = sorted(set(vocab_a.items()) ^ set(vocab_b.items()))
        raise VocabMismatchError(
            f"Model {other_name!r} uses a different tokenizer from {ref_name!r} "
            f"({len(differing)} differing token/id entries, e.g. {differing[0]!r}).",
            "merging would garble the embeddings; use experts that keep the base's tokenizer.",
        )


def check_compatible(
    ref: Checkpoint,
    other: Checkpoint,
    ref_name: str,
    other_name: str,
    *,
    layers_may_differ: bool = False,
) -> None:
    """All checks, cheapest first. ``layers_may_differ`` (layer-stacking merges, which read
    chosen layer ranges) skips the layer count and the tensor-by-tensor name check; the
    schedule then fails on any layer a slice needs and a model lacks."""
    check_architecture(ref, other, ref_name, other_name, layers_may_differ=layers_may_differ)
    check_vocab(ref, other, ref_name, other_name)
    if not layers_may_differ:
        check_tensors(ref, other, ref_name, other_name)
