"""Model signatures: what a model does on the probe prompts, in a compact, cacheable form.

One batched forward pass per model over a probe set gives, for every token position of every
probe, the next-token distribution, and for every layer a mean-pooled hidden state per probe.
Functional pair features (KL, JS, top-1 agreement, activation cosine/CKA) are then computed from
two signatures with no further forward pass, so a catalog of N models costs N passes, not N².

Storage per position: the top-k log-probs and token ids (sorted, most likely first) and the
probability mass outside them (``tail``). When the vocabulary is tiny (at most
``full_vocab_max`` tokens) k is the whole vocabulary and the distribution is stored exactly.
Hidden states: ``[layers + 1, probes, hidden]`` float32, the mean over each probe's tokens.

Signatures are cached as safetensors under a key of (checkpoint fingerprint, probe hash,
config, compute dtype), so a second call for the same model and probes reads the file. On CUDA
the forward pass runs in bfloat16 (``dtype="auto"``); on CPU in float32. Memory is bounded by
one batch of activations; what is kept per probe is a few KB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from simmerge.errors import ConfigError
from simmerge.infra.cache import TensorCache
from simmerge.merging.plan import OUTPUT_DTYPES
from simmerge.signals.probes import ProbeSet

FORMAT_VERSION = 2  # 2: probes truncated to the model's max_position_embeddings
_DTYPES = OUTPUT_DTYPES  # the dtype names plans use, too


@dataclass(frozen=True)
class SignatureConfig:
    """How signatures are computed. Every field enters the cache key."""

    top_k: int = 32
    full_vocab_max: int = 512
    max_length: int = 128  # tokens per probe kept; also capped by the model's context length
    batch_size: int = 16
    dtype: str = "auto"  # "auto": bfloat16 on CUDA, float32 on CPU

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_length < 2 or self.batch_size < 1:
            raise ConfigError(
                f"Invalid signature config {self}.",
                "use top_k >= 1, max_length >= 2 and batch_size >= 1.",
            )
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ConfigError(
                f"Unknown signature dtype {self.dtype!r}.",
                f"use 'auto' or one of {', '.join(_DTYPES)}.",
            )

    def resolved_dtype(self, device: torch.device) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if device.type == "cuda" else "float32"


@dataclass(frozen=True, eq=False)
class Signature:
    """A model's behaviour on one probe set (see the module docstring for the layout).

    ``offsets[i]:offsets[i + 1]`` are the rows of ``logprobs``/``token_ids``/``tail`` that
    belong to probe ``i`` (one row per token position).
    """

    model: str  # checkpoint fingerprint (or a caller-given id for an in-memory model)
    probe_name: str
    probe_hash: str
    vocab_size: int
    logprobs: torch.Tensor  # [positions, k] float32, sorted descending
    token_ids: torch.Tensor  # [positions, k] int64
    tail: torch.Tensor  # [positions] float32, probability mass outside the top k
    offsets: torch.Tensor  # [probes + 1] int64
    hidden: torch.Tensor  # [layers + 1, probes, hidden] float32

    @property
    def full(self) -> bool:
        """True when the whole distribution is stored (k equals the vocabulary)."""
        return self.logprobs.shape[1] == self.vocab_size

    @cached_property
    def dense_logprobs(self) -> torch.Tensor:
        """``[positions, vocab]`` log-probs in token-id order (only for full signatures);
        computed once per signature so that comparing N models costs O(N) of this work."""
        if not self.full:
            raise ValueError("dense_logprobs needs a full-vocabulary signature")
        return torch.empty_like(self.logprobs).scatter_(1, self.token_ids, self.logprobs)

    @cached_property
    def dense_probs(self) -> torch.Tensor:
        return self.dense_logprobs.exp()

    @cached_property
    def entropy(self) -> torch.Tensor:
        """Entropy (nats) per position; the tail is spread evenly over the unlisted tokens."""
        lp = self.logprobs.double()
        h = -(lp.exp() * lp).sum(1)
        if not self.full:
            tail = self.tail.double()
            spread = tail / max(self.vocab_size - lp.shape[1], 1)
            h = h - torch.where(tail > 0, tail * torch.log(spread.clamp(min=1e-30)), 0.0)
        return h.float()

    @cached_property
    def hidden64(self) -> torch.Tensor:
        return self.hidden.double()

    @cached_property
    def centered_hidden(self) -> torch.Tensor:
        """Pooled hidden states centred over probes, float64 (the CKA input)."""
        return self.hidden64 - self.hidden64.mean(1, keepdim=True)

    @cached_property
    def centered_hidden32(self) -> torch.Tensor:
        """float32 copy for the per-pair CKA product (3x faster; the sums stay float64)."""
        return self.centered_hidden.float()

    @cached_property
    def probe_gram(self) -> torch.Tensor | None:
        """Per layer X Xᵀ (probes × probes) of the centred hidden states, when that is smaller
        than X itself (fewer probes than hidden units, e.g. 272 probes of a 4096-wide model):
        linear CKA's cross term ‖YᵀX‖²_F equals ⟨X Xᵀ, Y Yᵀ⟩_F, so a pair then costs one
        elementwise product instead of a matrix product per layer."""
        x = self.centered_hidden
        if x.shape[1] > x.shape[2]:
            return None
        return x @ x.transpose(1, 2)

    @cached_property
    def gram_norms(self) -> torch.Tensor:
        """Per layer ‖XᵀX‖_F = ‖X Xᵀ‖_F of the centred hidden states (CKA's normaliser)."""
        gram = self.probe_gram
        if gram is None:
            x = self.centered_hidden
            gram = x.transpose(1, 2) @ x
        return torch.linalg.matrix_norm(gram)

    @property
    def n_probes(self) -> int:
        return self.offsets.numel() - 1

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "logprobs": self.logprobs,
            "token_ids": self.token_ids,
            "tail": self.tail,
            "offsets": self.offsets,
            "hidden": self.hidden,
            "vocab_size": torch.tensor(self.vocab_size, dtype=torch.int64),
        }


def compute_signature(
    model: str | Path | Mapping[str, torch.Tensor],
    probes: ProbeSet,
    *,
    config: SignatureConfig | None = None,
    device: str | torch.device | None = None,
    reference_dir: str | Path | None = None,
    model_id: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> Signature:
    """Run ``probes`` through ``model`` once and return its :class:`Signature`.

    ``model`` is a local Hugging Face folder, or an in-memory state dict (e.g. a merge) together
    with ``reference_dir`` (the folder whose config and tokenizer it fits). A folder is cached
    under its fingerprint; a state dict only when ``model_id`` names it uniquely.
    """
    (sig,) = compute_signatures(
        model,
        [probes],
        config=config,
        device=device,
        reference_dir=reference_dir,
        model_id=model_id,
        cache_dir=cache_dir,
        use_cache=use_cache,
        progress=progress,
    )
    return sig


def compute_signatures(
    model: str | Path | Mapping[str, torch.Tensor],
    probe_sets: Sequence[ProbeSet],
    *,
    config: SignatureConfig | None = None,
    device: str | torch.device | None = None,
    reference_dir: str | Path | None = None,
    model_id: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> list[Signature]:
    """:func:`compute_signature` for several probe sets of one model, in their order.

    Why one call: a catalog's task probe sets are small (tens of prompts each), so loading the
    model once per set would cost about as much as the passes themselves. Here the cache is
    asked first for every set, and the model is loaded once, only if some set is missing; each
    signature is cached under its own key, the same key a single-set call uses.
    """
    from simmerge.io.checkpoint import open_checkpoint
    from simmerge.io.models import load_model, load_model_with_state, load_tokenizer, pick_device

    config = config or SignatureConfig()
    dev = pick_device(device)
    dtype = config.resolved_dtype(dev)
    if isinstance(model, Mapping):
        if reference_dir is None:
            raise ConfigError(
                "compute_signature() got a state dict but no reference_dir.",
                "pass reference_dir=<model folder whose config and tokenizer the state fits>.",
            )
        tok_dir, ident = Path(reference_dir), model_id
    else:
        tok_dir, ident = Path(model), model_id or open_checkpoint(model).fingerprint
    cache = TensorCache(cache_dir, "signatures")
    cached = use_cache and ident is not None
    out: list[Signature | None] = []
    for probes in probe_sets:
        hit = cache.load(_material(ident, probes, config, dtype)) if cached else None
        out.append(None if hit is None else _from_tensors(hit, ident, probes))
    if any(sig is None for sig in out):
        if isinstance(model, Mapping):
            net = load_model_with_state(tok_dir, model, dev, _DTYPES[dtype])
        else:
            net = load_model(tok_dir, dev, _DTYPES[dtype])
        tokenizer = load_tokenizer(tok_dir)
        for i, probes in enumerate(probe_sets):
            if out[i] is not None:
                continue
            sig = _run_probes(net, tokenizer, probes, config, dev, ident or "", progress)
            if cached:
                cache.store(_material(ident, probes, config, dtype), sig.tensors())
            out[i] = sig
        del net
    return [sig for sig in out if sig is not None]


def _material(
    ident: str | None, probes: ProbeSet, config: SignatureConfig, dtype: str
) -> dict[str, Any]:
    """The cache key's material: every input a signature depends on."""
    return {
        "format": FORMAT_VERSION,
        "model": ident,
        "probes": probes.hash,
        "config": dataclasses.asdict(config),
        "dtype": dtype,
    }


def _from_tensors(t: dict[str, torch.Tensor], ident: str, probes: ProbeSet) -> Signature:
    vocab = int(t["vocab_size"].item())
    fields = {k: t[k] for k in ("logprobs", "token_ids", "tail", "offsets", "hidden")}
    return Signature(ident, probes.name, probes.hash, vocab, **fields)


def _encode(tokenizer: Any, probes: ProbeSet, max_length: int) -> list[list[int]]:
    seqs = []
    for text in probes.texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:max_length]
        if not ids:
            raise ConfigError(
                f"Probe set {probes.name!r} has a prompt that tokenizes to nothing: {text!r}.",
                "remove empty prompts from the probe set.",
            )
        seqs.append(ids)
    return seqs


@torch.inference_mode()
def _run_probes(
    net: Any,
    tokenizer: Any,
    probes: ProbeSet,
    config: SignatureConfig,
    dev: torch.device,
    ident: str,
    progress: bool,
) -> Signature:
    from simmerge.io.models import pad_token_id, right_padded

    # a model with learned positions cannot read past its window, and a RoPE model is out of
    # distribution there: probes are cut at the model's context length as well
    window = getattr(getattr(net, "config", None), "max_position_embeddings", None)
    limit = min(config.max_length, int(window)) if window else config.max_length
    seqs = _encode(tokenizer, probes, limit)
    vocab = int(net.get_output_embeddings().weight.shape[0])
    k = vocab if vocab <= config.full_vocab_max else min(config.top_k, vocab)
    pad = pad_token_id(tokenizer, net)
    lengths = torch.tensor([0] + [len(s) for s in seqs], dtype=torch.int64)
    offsets = lengths.cumsum(0)
    # Outputs are allocated once and filled in place, and each batch's tensors are dropped
    # before the next forward pass: memory is the output plus one batch's logits, whatever
    # the number of probes (scripts/bench_signature_memory.py).
    out: dict[str, torch.Tensor] = {}
    # Sort by length so batches waste little padding; results land at each probe's offsets.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    for batch in tqdm(batches, desc=f"signature {probes.name}", disable=not progress):
        ids, mask = right_padded([seqs[i] for i in batch], pad, dev)
        res = net(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logp = torch.log_softmax(res.logits.float(), dim=-1)
        top = logp.topk(k, dim=-1)  # sorted, most likely first
        tail = (1.0 - top.values.exp().sum(-1)).clamp_(min=0.0)
        m = mask.unsqueeze(-1).float()
        pooled = torch.stack([(h.float() * m).sum(1) / m.sum(1) for h in res.hidden_states])
        del res, logp
        if not out:
            total = int(offsets[-1])
            out = {
                "logprobs": torch.empty(total, k, dtype=top.values.dtype),
                "token_ids": torch.empty(total, k, dtype=torch.int64),
                "tail": torch.empty(total, dtype=tail.dtype),
                "hidden": torch.empty(pooled.shape[0], len(seqs), pooled.shape[-1]),
            }
        values, indices, tail, pooled = (t.cpu() for t in (top.values, top.indices, tail, pooled))
        del top
        for j, i in enumerate(batch):
            a, b = int(offsets[i]), int(offsets[i + 1])
            out["logprobs"][a:b] = values[j, : b - a]
            out["token_ids"][a:b] = indices[j, : b - a]
            out["tail"][a:b] = tail[j, : b - a]
            out["hidden"][:, i] = pooled[:, j]
        del values, indices, tail, pooled
    return Signature(
        model=ident,
        probe_name=probes.name,
        probe_hash=probes.hash,
        vocab_size=vocab,
        offsets=offsets,
        **out,
    )
