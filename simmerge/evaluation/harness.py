"""Evaluation harness: score a causal LM on a local task file.

Public entry points: :meth:`EvalTask.load` and :func:`evaluate`.

Task data is read from local JSONL or parquet through ``datasets.load_dataset("json" | "parquet",
data_files=...)``; the hub is never contacted. One row is one example:

============== ============================= ==============================================
kind           required fields               score of one example
============== ============================= ==============================================
exact_match    ``prompt``, ``answer``        1 if the greedy continuation (stopped at EOS or
                                             ``max_new_tokens``) equals ``answer`` after
                                             stripping surrounding whitespace, else 0
multiple_choice ``prompt``, ``choices``,     1 if the choice with the highest summed
               ``label`` (0-based index)     log-likelihood given the prompt is ``label``
token_accuracy ``prompt``, ``answer``        fraction of answer tokens that are the argmax
                                             next token under teacher forcing
============== ============================= ==============================================

Optional fields: ``id`` (defaults to the row number) and ``kind`` (must be the same on every
row). The kind is taken from the ``kind`` argument, else the ``kind`` column, else inferred:
rows with ``choices`` are multiple choice, anything else exact match.

A task's score is the mean of its examples' scores, in [0, 1]. Prompts are encoded with the
model's tokenizer *with* its special tokens (so a BOS is added where the tokenizer adds one);
answers and choices are encoded without, and appended to the prompt's ids.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simmerge.errors import ConfigError
from simmerge.infra.files import read_local_table
from simmerge.io.models import (
    load_model,
    load_model_with_state,
    load_tokenizer,
    pad_token_id,
    right_padded,
)

TASK_KINDS: tuple[str, ...] = ("exact_match", "multiple_choice", "token_accuracy")

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "exact_match": ("prompt", "answer"),
    "multiple_choice": ("prompt", "choices", "label"),
    "token_accuracy": ("prompt", "answer"),
}


# --- task records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalExample:
    """One evaluation example. ``answer`` is set for generation/token tasks, ``choices`` and
    ``label`` for multiple choice."""

    id: str
    prompt: str
    answer: str | None = None
    choices: tuple[str, ...] | None = None
    label: int | None = None


@dataclass(frozen=True)
class EvalTask:
    """A named, typed set of evaluation examples (see the module docstring for the format)."""

    name: str
    kind: str
    examples: tuple[EvalExample, ...]
    source: str | None = None
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(
                f"Task {self.name!r}: unknown kind {self.kind!r}.",
                f"use one of {', '.join(TASK_KINDS)}.",
            )
        if not self.examples:
            raise ConfigError(
                f"Task {self.name!r} ({self.source or 'in memory'}) has no examples.",
                "add at least one row to the task file.",
            )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        kind: str | None = None,
        name: str | None = None,
        max_new_tokens: int | None = None,
    ) -> EvalTask:
        """Load a task from a local ``.jsonl``/``.json`` or ``.parquet`` file."""
        path = Path(path)
        rows, columns = read_local_table(path, "Evaluation file", ConfigError)
        return cls.from_records(
            rows,
            kind=kind,
            name=name or path.stem,
            source=str(path),
            columns=columns,
            max_new_tokens=max_new_tokens,
        )

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        *,
        kind: str | None = None,
        name: str = "task",
        source: str | None = None,
        columns: Iterable[str] | None = None,
        max_new_tokens: int | None = None,
    ) -> EvalTask:
        """Build a task from rows (dicts); validates required fields like :meth:`load`."""
        where = source or f"task {name!r}"
        cols = set(columns) if columns is not None else set().union(*(r.keys() for r in records))
        if kind is None:
            kinds = {r.get("kind") for r in records if r.get("kind") is not None}
            if len(kinds) > 1:
                raise ConfigError(
                    f"{where}: the 'kind' field differs between rows ({sorted(kinds)}).",
                    "put one kind of task in one file.",
                )
            if kinds:
                kind = kinds.pop()
            else:
                kind = "multiple_choice" if "choices" in cols else "exact_match"
        if kind not in TASK_KINDS:
            raise ConfigError(
                f"{where}: unknown task kind {kind!r}.", f"use one of {', '.join(TASK_KINDS)}."
            )
        required = REQUIRED_FIELDS[kind]
        for col in required:
            if col not in cols:
                raise ConfigError(
                    f"{where}: required field {col!r} is missing for a {kind} task "
                    f"(fields present: {sorted(cols)}).",
                    f"add {col!r} to every row; a {kind} row needs {', '.join(required)}.",
                )
        examples = []
        for i, row in enumerate(records):
            for col in required:
                if row.get(col) is None:
                    raise ConfigError(
                        f"{where}: row {i} has no value for required field {col!r}.",
                        f"give every row a {col!r}.",
                    )
            ex_id = str(row["id"]) if row.get("id") is not None else str(i)
            if kind == "multiple_choice":
                choices = tuple(str(c) for c in row["choices"])
                label = row["label"]
                if not isinstance(label, int) or not 0 <= label < len(choices):
                    raise ConfigError(
                        f"{where}: row {i} has label {label!r} but {len(choices)} choices.",
                        "set 'label' to the 0-based index of the correct choice.",
                    )
                examples.append(EvalExample(ex_id, str(row["prompt"]), None, choices, label))
            else:
                examples.append(EvalExample(ex_id, str(row["prompt"]), str(row["answer"])))
        return cls(
            name=name,
            kind=kind,
            examples=tuple(examples),
            source=source,
            max_new_tokens=max_new_tokens,
        )

    def config_hash(self) -> str:
        """A content hash of the task (kind, examples, generation limit): stable across paths."""
        payload = json.dumps(
            {
                "kind": self.kind,
                "max_new_tokens": self.max_new_tokens,
                "examples": [asdict(e) for e in self.examples],
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleResult:
    """Score of one example in [0, 1], with the greedy prediction for exact-match tasks or the
    index of the chosen answer for multiple choice."""

    id: str
    score: float
    prediction: str | None = None


@dataclass(frozen=True)
class EvalResult:
    task: str
    kind: str
    score: float
    n: int
    task_hash: str
    examples: tuple[ExampleResult, ...] = field(repr=False)

    def to_dict(self, with_examples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task,
            "kind": self.kind,
            "score": self.score,
            "n": self.n,
            "task_hash": self.task_hash,
        }
        if with_examples:
            out["examples"] = [asdict(e) for e in self.examples]
        return out


# --- models ------------------------------------------------------------------------------------


# --- evaluation --------------------------------------------------------------------------------


def evaluate(
    model_or_dir: Any,
    task: EvalTask | str | Path,
    device: Any | None = None,
    batch_size: int = 64,
    *,
    tokenizer: Any | None = None,
    reference_dir: str | Path | None = None,
) -> EvalResult:
    """Score a model on a task.

    ``model_or_dir`` is a loaded ``PreTrainedModel``, a local model folder, or a state dict
    (mapping of tensor name to tensor) together with ``reference_dir``, the folder whose config
    and tokenizer it belongs to. ``device`` defaults to CUDA when available (for a loaded model:
    where it already is). The tokenizer defaults to the one in the model's folder.
    """
    import torch

    if not isinstance(task, EvalTask):
        task = EvalTask.load(task)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.", "pass a positive size.")
    if isinstance(model_or_dir, (str, Path)):
        model = load_model(model_or_dir, device)
        tok_dir = model_or_dir
    elif isinstance(model_or_dir, Mapping):
        if reference_dir is None:
            raise ConfigError(
                "evaluate() got a state dict but no reference_dir.",
                "pass reference_dir=<model folder whose config and tokenizer the state fits>.",
            )
        model = load_model_with_state(reference_dir, model_or_dir, device)
        tok_dir = reference_dir
    else:
        model = model_or_dir
        if device is not None:
            model = model.to(torch.device(device))
        model.eval()
        tok_dir = getattr(model, "name_or_path", None) or None
    if tokenizer is None:
        if not tok_dir:
            raise ConfigError(
                "evaluate() cannot find a tokenizer for an in-memory model.",
                "pass tokenizer=... or a model loaded from a folder.",
            )
        tokenizer = load_tokenizer(tok_dir)

    dev = next(model.parameters()).device
    with torch.inference_mode():
        if task.kind == "exact_match":
            results = _exact_match(model, tokenizer, task, dev, batch_size)
        elif task.kind == "multiple_choice":
            results = _multiple_choice(model, tokenizer, task, dev, batch_size)
        else:
            results = _token_accuracy(model, tokenizer, task, dev, batch_size)
    score = sum(r.score for r in results) / len(results)
    return EvalResult(
        task=task.name,
        kind=task.kind,
        score=float(score),
        n=len(results),
        task_hash=task.config_hash(),
        examples=tuple(results),
    )


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    out: set[int] = set()
    for cand in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)):
        if isinstance(cand, int):
            out.add(cand)
        elif isinstance(cand, (list, tuple)):
            out.update(int(c) for c in cand)
    return out


def _continuation_logprobs(model, seqs, starts, pad, device):
    """For each sequence: (log-probs of its tokens from ``start`` on, argmax-hit flags)."""
    import torch

    ids, mask = right_padded(seqs, pad, device)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = ids[:, 1:]
    tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    hits = logits[:, :-1].argmax(-1) == targets
    out = []
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        # token j of the sequence is predicted at position j - 1
        out.append((tok_lp[i, st - 1 : len(s) - 1].cpu(), hits[i, st - 1 : len(s) - 1].cpu()))
    return out


def _split_prompt(tokenizer: Any, prompt: str, cont: str) -> tuple[list[int], int]:
    p = _ids(tokenizer, prompt, special=True)
    if not p:
        raise ConfigError(f"Prompt {prompt!r} encodes to no tokens.", "give a non-empty prompt.")
    c = _ids(tokenizer, cont, special=False)
    return p + c, len(p)


def _token_accuracy(model, tokenizer, task, device, batch_size) -> list[ExampleResult]:
    pad = pad_token_id(tokenizer, model)
    results = []
    for lo in range(0, len(task.examples), batch_size):
        batch = task.examples[lo : lo + batch_size]
        enc = [_split_prompt(tokenizer, e.prompt, e.answer or "") for e in batch]
        todo = [i for i, (s, st) in enumerate(enc) if len(s) > st]
        outs = (
            _continuation_logprobs(
                model, [enc[i][0] for i in todo], [enc[i][1] for i in todo], pad, device
            )
            if todo
            else []
        )
        acc = {i: float(h.float().mean()) for i, (_, h) in zip(todo, outs, strict=True)}
        # an empty answer has nothing to get wrong: score 1
        results.extend(ExampleResult(e.id, acc.get(i, 1.0)) for i, e in enumerate(batch))
    return results


def _multiple_choice(model, tokenizer, task, device, batch_size) -> list[ExampleResult]:
    pad = pad_token_id(tokenizer, model)
    flat: list[tuple[int, int, list[int], int]] = []  # example index, choice index, ids, start
    for i, e in enumerate(task.examples):
        for j, c in enumerate(e.choices or ()):
            seq, start = _split_prompt(tokenizer, e.prompt, c)
            if len(seq) == start:
                raise ConfigError(
                    f"Task {task.name!r} example {e.id!r}: choice {j} encodes to no tokens.",
                    "give every choice at least one character.",
                )
            flat.append((i, j, seq, start))
    totals: dict[tuple[int, int], float] = {}
    for lo in range(0, len(flat), batch_size):
        chunk = flat[lo : lo + batch_size]
        outs = _continuation_logprobs(
            model, [c[2] for c in chunk], [c[3] for c in chunk], pad, device
        )
        for (i, j, _, _), (lp, _) in zip(chunk, outs, strict=True):
            totals[(i, j)] = float(lp.sum())
    results = []
    for i, e in enumerate(task.examples):
        scores = [totals[(i, j)] for j in range(len(e.choices or ()))]
        best = max(range(len(scores)), key=lambda j: (scores[j], -j))
        results.append(ExampleResult(e.id, float(best == e.label), str(best)))
    return results


def _exact_match(model, tokenizer, task, device, batch_size) -> list[ExampleResult]:
    import torch

    pad = pad_token_id(tokenizer, model)
    eos = _eos_ids(tokenizer, model)
    max_new = task.max_new_tokens
    if max_new is None:
        max_new = max(len(_ids(tokenizer, e.answer or "", special=False)) for e in task.examples)
        max_new += 2
    # batches of similar prompt lengths waste little left padding; results keep the task's order
    encoded = [_ids(tokenizer, e.prompt, special=True) for e in task.examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[ExampleResult | None] = [None] * len(encoded)
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        prompts = [encoded[i] for i in rows]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row ends at the last column
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        generated = _greedy(model, ids, mask, max_new, eos, pad)
        for i, gen in zip(rows, generated, strict=True):
            e = task.examples[i]
            text = tokenizer.decode(gen, skip_special_tokens=True)
            results[i] = ExampleResult(e.id, float(text.strip() == (e.answer or "").strip()), text)
    return [r for r in results if r is not None]


def _greedy(model, ids, mask, max_new: int, eos: set[int], pad: int) -> list[list[int]]:
    """Batched greedy decoding with a KV cache; rows stop at EOS (not included in the output)."""
    import torch

    n = ids.shape[0]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=ids.device)
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=ids.device)
    past = None
    step_ids, step_pos = ids, pos
    # transformers 5.x renamed the KV-cache argument and output ``past_key_values`` -> ``cache``
    # (the old name warns, and goes in 5.40); older releases only know the old name
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else None
    # only the last position's logits are read: the prefill skips the LM head (vocab x hidden
    # per token, a fifth of a small model's compute) on every prompt token but the last
    last_only = next(({k: 1} for k in ("logits_to_keep", "num_logits_to_keep") if k in params), {})
    for _ in range(max_new):
        kv = {cache_arg: past} if cache_arg else {"past_key_values": past}
        res = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            **kv,
            **last_only,
        )
        past = res.cache if cache_arg else res.past_key_values
        nxt = res.logits[:, -1].argmax(-1)
        is_eos = torch.isin(nxt, eos_t) if len(eos) else torch.zeros_like(done)
        for i in torch.nonzero(~done & ~is_eos).flatten().tolist():
            out[i].append(int(nxt[i]))
        done |= is_eos
        if bool(done.all()):
            break
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], 1)
    return out


# --- CLI ---------------------------------------------------------------------------------------
