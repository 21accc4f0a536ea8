"""Execute a :class:`MergePlan` tensor by tensor.

For each tensor name of the reference model (the base, or the first member for base-free
operators) the engine reads that one tensor from the base and every member, runs the operator in
float32 on the work device, casts to the output dtype and either keeps it (in-memory mode) or
streams it straight into the current output shard (folder mode). Peak memory is therefore about
(members + 1) copies of the largest tensor plus small chunk scratch -- not whole models -- and
the output shard is never buffered.

Folder mode builds the result in a hidden temporary sibling folder and renames it into place at
the end: a crash never leaves a half model under the output name. Non-float tensors (integer
buffers) are copied from the reference model unchanged.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from simmerge.errors import NonFiniteWeightsError, OutputPathError, SimmergeError
from simmerge.infra.files import atomic_output_dir
from simmerge.io.checkpoint import Checkpoint, is_finite, open_checkpoint
from simmerge.io.compat import TOKENIZER_FILES, check_compatible
from simmerge.io.safetensors_format import SafetensorsStreamWriter
from simmerge.merging.plan import OUTPUT_DTYPES, MergePlan
from simmerge.merging.registry import run_operator

DEFAULT_SHARD_BYTES = 2 * 1024**3
COPIED_FILES = (
    *TOKENIZER_FILES,
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
PLAN_FILE = "simmerge_plan.yaml"


@dataclass(frozen=True)
class _Inputs:
    reference: Checkpoint
    base: Checkpoint | None
    members: list[Checkpoint]


def _open_inputs(plan: MergePlan, allow_pickle: bool, allow_remote_code: bool) -> _Inputs:
    flags = {"allow_pickle": allow_pickle, "allow_remote_code": allow_remote_code}
    base = open_checkpoint(plan.base, **flags) if plan.base else None
    members = [open_checkpoint(m.model, **flags) for m in plan.members]
    reference = base if base is not None else members[0]
    ref_name = plan.base if base is not None else plan.members[0].model
    for m, ckpt in zip(plan.members, members, strict=True):
        if ckpt is not reference:
            check_compatible(reference, ckpt, ref_name, m.model)
    return _Inputs(reference, base, members)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    """``device`` checked against this machine (None picks CUDA when available)."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SimmergeError(
            f"Unknown device {device!r}.", "use 'cpu', 'cuda' or 'cuda:N'."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SimmergeError(
            f"Device {device!r} was requested but this torch build sees no CUDA GPU.",
            "use --device cpu, or install a CUDA build of torch on a GPU machine.",
        )
    if dev.type not in ("cpu", "cuda"):
        raise SimmergeError(f"Device {device!r} is not supported.", "use 'cpu' or 'cuda'.")
    return str(dev)


def _output_dtype(plan: MergePlan, reference_dtype: torch.dtype) -> torch.dtype:
    return OUTPUT_DTYPES[plan.dtype] if plan.dtype else reference_dtype


def _merge_one(
    plan: MergePlan, inputs: _Inputs, name: str, device: str, check_finite: bool
) -> torch.Tensor:
    info = inputs.reference.info(name)
    if not info.is_float:
        return inputs.reference.get(name)
    # Inputs are checked for NaN/Inf as they are read: trimming operators would otherwise
    # silently drop a NaN (it ranks as largest but never compares above a threshold).
    read = {"device": device, "dtype": torch.float32, "check_finite": check_finite}
    experts = [c.get(name, **read) for c in inputs.members]
    base = inputs.base.get(name, **read) if inputs.base is not None else None
    out = run_operator(
        plan.operator,
        plan.params,
        base,
        experts,
        [m.weight for m in plan.members],
        plan.member_densities(),
        tensor_name=name,
    )
    del experts, base
    if check_finite and not is_finite(out):
        raise NonFiniteWeightsError(
            f"Merging tensor {name!r} overflowed to NaN/Inf although the inputs are finite.",
            "lower lambda or the weights, or merge in a wider dtype.",
        )
    return out.to(_output_dtype(plan, info.torch_dtype))


def _shard_layout(names: list[str], nbytes: dict[str, int], shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        if shards[-1] and size + nbytes[name] > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes[name]
    return shards


def merge(
    plan: MergePlan,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    allow_pickle: bool = False,
    allow_remote_code: bool = False,
    check_finite: bool = True,
    progress: bool = False,
) -> dict[str, torch.Tensor] | Path:
    """Run ``plan``. Without ``out_dir`` return the merged state dict (CPU tensors); with it,
    write a Hugging Face folder (safetensors shards, config and tokenizer copied from the
    reference model) atomically and return its path."""
    device = resolve_device(device)
    inputs = _open_inputs(plan, allow_pickle, allow_remote_code)
    names = inputs.reference.names
    bar = tqdm(
        total=inputs.reference.total_bytes,
        unit="B",
        unit_scale=True,
        desc="merge",
        disable=not progress,
    )
    if out_dir is None:
        state: dict[str, torch.Tensor] = {}
        for name in names:
            state[name] = _merge_one(plan, inputs, name, device, check_finite).cpu()
            bar.update(inputs.reference.info(name).nbytes)
        bar.close()
        return state

    out_dir = Path(out_dir)
    _check_clear_of_inputs(out_dir, plan)
    ref = inputs.reference
    out_dtypes = {
        n: _output_dtype(plan, ref.info(n).torch_dtype)
        if ref.info(n).is_float
        else ref.info(n).torch_dtype
        for n in names
    }
    nbytes = {n: ref.info(n).numel * out_dtypes[n].itemsize for n in names}
    shards = _shard_layout(names, nbytes, shard_bytes)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        weight_map: dict[str, str] = {}
        for i, shard_names in enumerate(shards):
            file_name = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            layout = [(n, out_dtypes[n], ref.info(n).shape) for n in shard_names]
            with SafetensorsStreamWriter(tmp / file_name, layout) as writer:
                for name in shard_names:
                    writer.write(name, _merge_one(plan, inputs, name, device, check_finite))
                    weight_map[name] = file_name
                    bar.update(ref.info(name).nbytes)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        _write_config(ref, plan, tmp)
        for file_name in COPIED_FILES:
            if (ref.path / file_name).is_file():
                shutil.copy2(ref.path / file_name, tmp / file_name)
        (tmp / PLAN_FILE).write_text(plan.to_mergekit_yaml())
    bar.close()
    return out_dir


def _check_clear_of_inputs(out_dir: Path, plan: MergePlan) -> None:
    """Refuse an output folder that is, or contains, a model the plan reads: replacing it
    (``overwrite``) would destroy an input while it is being read."""
    out = out_dir.expanduser().resolve()
    for source in (plan.base, *(m.model for m in plan.members)):
        if source is None:
            continue
        src = Path(source).expanduser().resolve()
        if out == src or out in src.parents:
            relation = "is" if out == src else "contains"
            raise OutputPathError(
                f"Output folder {str(out_dir)!r} {relation} the input model {str(source)!r}; "
                "writing it would destroy that input.",
                "choose an output folder outside every model the plan merges.",
            )


def _write_config(ref: Checkpoint, plan: MergePlan, folder: Path) -> None:
    config = dict(ref.config)
    if plan.dtype:
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = plan.dtype
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
