"""Catalogs of real fine-tuned LLMs: experts fine-tuned from a pretrained base on the tasks of
:mod:`simmerge.zoo.text_tasks`, with eval sets and probe prompts, as a ``catalog.yaml``.

The base comes from the package registry (:mod:`simmerge.zoo.bases`: SmolLM2-135M-Instruct or
Gemma 3 270M, as GGUF) and is dequantized once (:mod:`simmerge.io.gguf`); the catalog names
the ``.gguf`` file itself, so loading it exercises the GGUF path. Each expert is a full
fine-tune on its task(s): the loss is on the answer tokens only, the prompt is encoded the way
the evaluation harness encodes it, and the answer ends with EOS, so an expert's greedy answer
is what exact-match scoring reads.

Builds are resumable and deterministic for one set of library versions on one machine kind:
every expert folder is written atomically with the hash of what produced it (recipe entry,
base file hash, seed) and reused when that hash matches; ``zoo_manifest.json`` -- library
versions, the CPU and its vector instruction level, per-model recipe hashes, a digest of each
expert's weights and build time -- is written last. Checkpoints are never committed: the recipe
rebuilds them. Another CPU kind can train slightly different weights from the same recipe (its
kernels round differently), which can move an expert's eval score; the weight digests are what
tells two builds' outcomes apart.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simmerge.errors import ConfigError
from simmerge.infra.files import atomic_output_dir, atomic_write_text, ensure_writable_dir

from .build import MANIFEST, MODEL_STAMP, _library_versions, _model_hash, _stamp
from .text_tasks import TEXT_TASKS, general_prompts

FORMAT_VERSION = 2
MC_TASKS = ("days_in_month", "larger")  # also scored by log-likelihood of the choices
GENERAL_TASK = "general"  # the base's own ability (a general task of the catalog)
GENERAL_TOKENS = 24  # tokens of the base's continuation scored per general prompt


@dataclass(frozen=True)
class RealExpert:
    name: str
    tasks: tuple[str, ...]
    steps: int
    lr: float
    seed: int
    lora_rank: int = 0  # 0: full fine-tune; else a LoRA adapter of this rank, merged in


@dataclass(frozen=True)
class RealRecipe:
    name: str
    base: str  # a simmerge.zoo.bases name
    experts: tuple[RealExpert, ...]
    train_size: int = 512  # examples per task drawn for training
    eval_size: int = 64
    probe_size: int = 32
    batch_size: int = 8
    general_size: int = 32  # prompts of the general-ability eval

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for e in self.experts for t in e.tasks))


def _x(name: str, tasks: str, steps: int, lr: float, seed: int, lora: int = 0) -> RealExpert:
    return RealExpert(name, tuple(tasks.split("+")), steps, lr, seed, lora)


REAL_RECIPES: dict[str, RealRecipe] = {
    r.name: r
    for r in (
        # the main job's catalog: a pair that shares a prompt format (number words), a light
        # and a strong fine-tune
        RealRecipe(
            name="smol-small",
            base="smollm2",
            experts=(
                _x("add", "add", 30, 1e-4, 1),
                _x("units", "units", 30, 1e-4, 2),
                _x("words_en", "words_en", 20, 5e-5, 3),  # light
                _x("words_fr", "words_fr", 40, 1e-4, 4),  # strong
            ),
        ),
        # training data: light and strong full fine-tunes (steps, learning rates, seeds),
        # multi-task experts, LoRA adapters merged into full weights, shared prompt formats
        RealRecipe(
            name="smol-large",
            base="smollm2",
            experts=(
                _x("add_a", "add", 40, 1e-4, 11),
                _x("add_light", "add", 15, 5e-5, 12),
                _x("sub_a", "sub", 60, 1e-4, 13),
                _x("words_en_a", "words_en", 40, 1e-4, 14),
                _x("words_fr_a", "words_fr", 40, 1e-4, 15),
                _x("words_de_a", "words_de", 60, 1e-4, 16),
                _x("units_a", "units", 40, 1e-4, 17),
                _x("days_a", "days_in_month", 30, 1e-4, 18),
                _x("sort_asc_a", "sort_asc", 40, 1e-4, 19),
                _x("sort_desc_a", "sort_desc", 40, 1e-4, 20),
                _x("json_a", "json_get", 40, 1e-4, 21),
                _x("upper_a", "upper", 30, 5e-5, 22),
                _x("larger_a", "larger", 30, 1e-4, 23),
                _x("add_sub", "add+sub", 60, 1e-4, 24),
                _x("words_en_de", "words_en+words_de", 60, 1e-4, 25),
                _x("sort_json", "sort_asc+json_get", 60, 1e-4, 26),
                _x("add_lora", "add", 40, 5e-4, 27, lora=8),
                _x("words_fr_lora", "words_fr", 40, 5e-4, 28, lora=8),
                _x("units_lora", "units", 40, 5e-4, 29, lora=16),
            ),
        ),
        RealRecipe(
            name="gemma-small",
            base="gemma3",
            experts=(
                _x("add", "add", 40, 5e-5, 31),
                _x("units", "units", 40, 5e-5, 32),
                _x("words_fr", "words_fr", 40, 5e-5, 33),
                _x("json_get", "json_get", 40, 5e-5, 34),
            ),
        ),
    )
}


def real_recipe(name: str) -> RealRecipe:
    if name not in REAL_RECIPES:
        raise ConfigError(
            f"Unknown real-model recipe {name!r}.", f"use one of: {', '.join(REAL_RECIPES)}."
        )
    recipe = REAL_RECIPES[name]
    unknown = [t for t in recipe.tasks if t not in TEXT_TASKS]
    if unknown:
        raise ConfigError(
            f"Recipe {name!r} names unknown task(s) {unknown}.", f"use {sorted(TEXT_TASKS)}."
        )
    return recipe


# --- data -------------------------------------------------------------------------------------


def _seed(*key: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:4], "little")


def task_data(task: str, recipe: RealRecipe) -> dict[str, list]:
    """Disjoint train, eval and probe examples of ``task`` (deterministic)."""
    spec = TEXT_TASKS[task]
    evals = spec.examples(_seed("eval", task), recipe.eval_size)
    probes = spec.examples(_seed("probe", task), recipe.probe_size, exclude={e[0] for e in evals})
    taken = {e[0] for e in evals} | {p[0] for p in probes}
    train = spec.examples(_seed("train", task), recipe.train_size, exclude=taken)
    return {"train": train, "eval": evals, "probe": probes}


def remeasure_real_catalog(
    zoo: str | Path, examples: int, stream: str = "remeasure", skip: Sequence[str] = ()
) -> Path:
    """A second measurement of a built real catalog's merges: fresh eval sets
    ``<zoo>/eval-<stream>/<task>.jsonl`` for every task an expert holds (up to ``examples``
    prompts from another seed, disjoint from the task's train, eval and probe prompts) and
    ``<zoo>/catalog-<stream>.yaml`` pointing at them, as :func:`simmerge.zoo.build.
    remeasure_catalog` does for the tiny zoo. Why: a pair's best of 20 candidates measured on
    64 examples per task is biased upwards (the winner's curse); scoring picks on examples
    no selection saw removes that bias. A task with fewer than ``examples`` distinct prompts
    left (``days_in_month`` has none: its splits take them all) is an error unless it is in
    ``skip``; skipped tasks keep their eval set, so their experts' pairs must not be
    remeasured."""
    import yaml

    zoo = Path(zoo)
    recipe = json.loads((zoo / MANIFEST).read_text())["recipe"]
    sizes = RealRecipe(
        name=recipe["name"],
        base=recipe["base"],
        experts=(),
        train_size=recipe["train_size"],
        eval_size=recipe["eval_size"],
        probe_size=recipe["probe_size"],
    )
    doc = yaml.safe_load((zoo / "catalog.yaml").read_text())
    held = sorted({t for e in doc["experts"] for t in e["tasks"]} - set(skip))
    fresh = {}
    for task in held:
        taken = {ex[0] for part in task_data(task, sizes).values() for ex in part}
        seed = _seed(stream, "eval", task)
        fresh[task] = TEXT_TASKS[task].examples(seed, examples, exclude=taken)
    short = {t: len(v) for t, v in fresh.items() if len(v) < examples}
    if short:
        raise ConfigError(
            f"Too few fresh eval prompts for a second measurement of {examples} per task: "
            + ", ".join(f"{t} has {n}" for t, n in sorted(short.items()))
            + " (the build's train, eval and probe splits use the rest).",
            "ask for fewer examples, or skip those tasks (their experts' pairs are then not "
            "remeasured: remeasure_outcomes.py --skip-tasks).",
        )
    (zoo / f"eval-{stream}").mkdir(exist_ok=True)
    for task in held:
        rows = eval_rows(task, fresh[task])
        atomic_write_text(zoo / f"eval-{stream}" / f"{task}.jsonl", _jsonl(rows))
        doc["tasks"][task]["eval"] = f"eval-{stream}/{task}.jsonl"
    path = zoo / f"catalog-{stream}.yaml"
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path


def eval_rows(task: str, examples: Sequence[tuple]) -> list[dict[str, Any]]:
    """Eval rows: multiple choice (choices with the leading space the answer gets) where the
    task has choices, exact match otherwise."""
    rows = []
    for i, (prompt, answer, choices) in enumerate(examples):
        if task in MC_TASKS and choices:
            opts = [f" {c}" for c in choices]
            rows.append(
                {
                    "id": i,
                    "prompt": prompt,
                    "choices": opts,
                    "label": choices.index(answer),
                    "kind": "multiple_choice",
                }
            )
        else:
            rows.append({"id": i, "prompt": prompt, "answer": answer, "kind": "exact_match"})
    return rows


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def general_rows(model: Any, tokenizer: Any, prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Token-accuracy rows of the general-ability eval: each prompt with the base's own greedy
    continuation (``GENERAL_TOKENS`` tokens) as the answer. The base scores about 1 on it by
    construction; a merge scores what it kept of how the base writes."""
    import torch

    rows = []
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=GENERAL_TOKENS,
                min_new_tokens=GENERAL_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            rows.append({"id": i, "prompt": prompt, "answer": answer, "kind": "token_accuracy"})
    return rows


# --- training ---------------------------------------------------------------------------------


def encode(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + " answer" + EOS, and where the answer starts (the harness encodes
    the prompt with special tokens and compares the stripped continuation)."""
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    start = len(ids)
    ids += list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
    ids.append(int(tokenizer.eos_token_id))
    return ids, start


def finetune(
    model: Any,
    tokenizer: Any,
    examples: Sequence[tuple[str, str]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> list[float]:
    """Full fine-tune of ``model`` in place (AdamW, constant ``lr``, loss on answer tokens
    only); the loss of every step."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if not examples:
        raise ConfigError("Nothing to fine-tune on.", "give the expert a task with examples.")
    encoded = [encode(tokenizer, p, a) for p, a in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # the fused kernel takes a fifth of the time of the per-tensor one on CPU
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="fine-tune", disable=not progress, leave=False):
        batch = [encoded[i] for i in rng.integers(0, len(encoded), size=batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, start) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, start : len(seq)] = torch.tensor(seq[start:])
            mask[row, : len(seq)] = 1
        loss = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _with_lora(model: Any, rank: int, seed: int) -> Any:
    """``model`` with a trainable LoRA adapter of ``rank`` on every linear layer but the head
    (alpha = 2 x rank, the common choice); the base weights are frozen."""
    import torch

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError(
            "LoRA experts of the real-LLM zoo need the 'peft' package.",
            "install it with `pip install 'simmerge[zoo]'`.",
        ) from None
    torch.manual_seed(seed)  # the adapter's initialization
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, config)


# --- the build --------------------------------------------------------------------------------


def build_real_zoo(
    out_dir: str | Path,
    recipe: str | RealRecipe = "smol-small",
    *,
    bases_dir: str | Path = "runs/bases",
    device: Any = None,
    progress: bool = True,
) -> Path:
    """Build (or reuse, or resume) the catalog of ``recipe`` in ``out_dir``; returns the folder
    holding ``catalog.yaml``."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simmerge.io.gguf import file_sha256, materialize_gguf

    from .bases import fetch_base

    spec = real_recipe(recipe) if isinstance(recipe, str) else recipe
    out = Path(out_dir)
    gguf_file = fetch_base(spec.base, bases_dir).resolve()
    base_hash = file_sha256(gguf_file)
    full_hash = _model_hash(FORMAT_VERSION, asdict(spec), base_hash)
    try:
        if json.loads((out / MANIFEST).read_text()).get("hash") == full_hash:
            return out
    except (OSError, ValueError):
        pass
    ensure_writable_dir(out, "zoo")
    (out / MANIFEST).unlink(missing_ok=True)
    t0 = time.perf_counter()
    base_dir = materialize_gguf(gguf_file)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    data = {t: task_data(t, spec) for t in spec.tasks}
    for t, parts in data.items():
        atomic_write_text(out / "eval" / f"{t}.jsonl", _jsonl(eval_rows(t, parts["eval"])))
        probes = [{"id": i, "text": p[0]} for i, p in enumerate(parts["probe"])]
        atomic_write_text(out / "probes" / f"{t}.jsonl", _jsonl(probes))

    general_file = out / "eval" / f"{GENERAL_TASK}.jsonl"
    general_hash = _model_hash(FORMAT_VERSION, base_hash, spec.general_size, GENERAL_TOKENS)
    general_stamp = general_file.with_suffix(".hash")
    if not general_file.is_file() or _read(general_stamp) != general_hash:  # from the base, once
        base_model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(dev)
        rows = general_rows(base_model, tokenizer, general_prompts()[: spec.general_size])
        atomic_write_text(general_file, _jsonl(rows))
        atomic_write_text(general_stamp, general_hash)
        del base_model

    hashes, losses = {}, {}
    for e in tqdm(spec.experts, desc="experts", disable=not progress):
        folder = out / "experts" / e.name
        h = _model_hash(FORMAT_VERSION, asdict(e), base_hash, spec.train_size, spec.batch_size)
        hashes[e.name] = h
        if _stamp(folder) == h:
            continue
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(dev)
        if e.lora_rank:
            model = _with_lora(model, e.lora_rank, e.seed)
        examples = [(p, a) for t in e.tasks for p, a, _ in data[t]["train"]]
        trace = finetune(
            model,
            tokenizer,
            examples,
            steps=e.steps,
            lr=e.lr,
            batch_size=spec.batch_size,
            seed=e.seed,
            progress=progress,
        )
        losses[e.name] = [round(x, 4) for x in trace]
        if e.lora_rank:  # the catalog holds full weights: base + the adapter's low-rank update
            model = model.merge_and_unload()
        with atomic_output_dir(folder, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / MODEL_STAMP).write_text(json.dumps({"hash": h, "loss": losses[e.name]}))
        del model

    catalog = {
        "name": spec.name,
        "base": {"name": "base", "path": str(gguf_file)},
        "experts": [
            {"name": e.name, "path": f"experts/{e.name}", "tasks": list(e.tasks)}
            for e in spec.experts
        ],
        "tasks": {
            **{t: {"eval": f"eval/{t}.jsonl", "probes": f"probes/{t}.jsonl"} for t in data},
            GENERAL_TASK: {"eval": f"eval/{GENERAL_TASK}.jsonl", "general": True},
        },
    }
    import yaml

    atomic_write_text(out / "catalog.yaml", yaml.safe_dump(catalog, sort_keys=False))
    manifest = {
        "hash": full_hash,
        "recipe": asdict(spec),
        "base": {"gguf": str(gguf_file), "sha256": base_hash},
        "models": hashes,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_facts(dev),
        "weights": {e.name: weights_digest(out / "experts" / e.name) for e in spec.experts},
        "versions": _library_versions(("gguf", "num2words", "peft")),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def weights_digest(folder: Path) -> str:
    """Exact hash of an expert folder's config and weights: equal digests are bit-identical
    models, whatever recipe or machine produced them."""
    from simmerge.io.checkpoint import open_checkpoint

    return open_checkpoint(folder).content_hash()


def machine_facts(device: Any) -> dict[str, Any]:
    """What decides a build's floating-point results besides the libraries: the CPU model, the
    instruction level torch's kernels use (e.g. AVX2 vs AVX512), the thread count, the device."""
    import torch

    return {
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
