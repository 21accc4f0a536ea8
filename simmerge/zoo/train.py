"""Model construction and training loops of the tiny zoo.

Training sequences are ``<bos> <tag> x = answer <eos>``; the loss covers the answer and EOS only.
Batches are drawn from a seeded numpy generator and the model is initialised under a seeded torch
generator, so a build is deterministic for a seed (training was bit-identical across reruns and
thread counts on CPU, see docs/results/zoo.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .tasks import SEPARATOR, TASKS
from .tokenizer import vocabulary


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 128
    intermediate: int = 512
    layers: int = 4
    heads: int = 4
    max_positions: int = 32


@dataclass(frozen=True)
class MixturePart:
    """Draw ``fraction`` of each batch from ``tasks`` (uniformly) at lengths ``lengths``."""

    tasks: tuple[str, ...]
    lengths: tuple[int, int]  # inclusive range
    fraction: float


def make_config(shape: ModelShape):
    from transformers import LlamaConfig

    vocab = vocabulary()
    return LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
        rms_norm_eps=1e-5,
    )


def new_model(shape: ModelShape, seed: int):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(make_config(shape))


def encode_example(task: str, x: str, answer: str) -> tuple[list[int], int]:
    """Token ids of one training sequence and the index of its first answer token."""
    v = vocabulary()
    prompt = [v["<bos>"], v[TASKS[task].tag], *(v[c] for c in x), v[SEPARATOR]]
    return prompt + [v[c] for c in answer] + [v["<eos>"]], len(prompt)


def sample_batch(rng: np.random.Generator, mixture: Sequence[MixturePart], batch_size: int):
    """(input_ids, labels, attention_mask) tensors for one batch; labels are -100 off-answer."""
    import torch

    seqs = []
    counts = [int(round(p.fraction * batch_size)) for p in mixture]
    counts[-1] = batch_size - sum(counts[:-1])
    for part, n in zip(mixture, counts, strict=True):
        for _ in range(n):
            task = part.tasks[int(rng.integers(len(part.tasks)))]
            length = int(rng.integers(part.lengths[0], part.lengths[1] + 1))
            x, ans = TASKS[task].sample(rng, length)
            seqs.append(encode_example(task, x, ans))
    width = max(len(s) for s, _ in seqs)
    pad = vocabulary()["<pad>"]
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, start) in enumerate(seqs):
        t = torch.tensor(s, dtype=torch.long)
        ids[i, : len(s)] = t
        labels[i, start : len(s)] = t[start:]
        mask[i, : len(s)] = 1
    return ids, labels, mask


def train(
    model,
    mixture: Sequence[MixturePart],
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    warmup: int = 20,
    device=None,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay to 10 % of ``lr``; returns the loss curve."""
    import torch
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    model.to(device).train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, disable=not progress)
    for _ in bar:
        ids, labels, mask = (t.to(device) for t in sample_batch(rng, mixture, batch_size))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
