"""Execute a :class:`MergePlan` tensor by tensor.

For each tensor name of the reference model (the base, or the first member for base-free
operators) the engine reads that one tensor from the base and every member, runs the operator in
float32 on the work device, casts to the output dtype and either keeps it (in-memory mode) or
streams it straight into the current output shard (folder mode). Peak memory is therefore about
(members + 1) copies of the largest tensor plus small chunk scratch -- not whole models -- and
the output shard is never buffered. The bytes of each large finished tensor (4 MB and more) are
written by a helper thread while the next one is computed (one tensor in flight): a write can
block in the kernel for as long as the math takes, and overlapping the two is most of what
separates a compute-heavy operator from the I/O floor.

Folder mode builds the result in a hidden temporary sibling folder and renames it into place at
the end: a crash never leaves a half model under the output name. Non-float tensors (integer
buffers) are copied from the reference model unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from simmerge.errors import NonFiniteWeightsError, OutputPathError, SimmergeError
from simmerge.infra.files import atomic_output_dir
from simmerge.io.checkpoint import Checkpoint, is_finite, open_checkpoint
from simmerge.io.compat import check_compatible
from simmerge.io.lora import split_plus
from simmerge.io.safetensors_format import SafetensorsStreamWriter
from simmerge.merging.config import MergeConfig
from simmerge.merging.layers import LAYER_COUNT_KEYS, PER_LAYER_CONFIG_KEYS
from simmerge.merging.plan import OUTPUT_DTYPES, MergePlan
from simmerge.merging.registry import run_operator
from simmerge.merging.schedule import Schedule, TensorJob, build_schedule, models_of
from simmerge.merging.tokenizer import copy_tokenizer

DEFAULT_SHARD_BYTES = 2 * 1024**3
PLAN_FILE = "simmerge_plan.yaml"


def _open_inputs(
    config: MergeConfig, allow_pickle: bool, allow_remote_code: bool
) -> dict[str, Checkpoint]:
    flags = {"allow_pickle": allow_pickle, "allow_remote_code": allow_remote_code}
    paths = models_of(config)
    opened = {p: open_checkpoint(p, **flags) for p in paths}
    reference = opened[paths[0]]
    for p in paths[1:]:
        check_compatible(reference, opened[p], paths[0], p, layers_may_differ=config.sliced)
    return opened


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


def _output_dtype(config: MergeConfig, reference_dtype: torch.dtype) -> torch.dtype:
    name = config.output_dtype
    return OUTPUT_DTYPES[name] if name else reference_dtype


def _merge_one(
    config: MergeConfig,
    inputs: dict[str, Checkpoint],
    job: TensorJob,
    device: str,
    check_finite: bool,
) -> torch.Tensor:
    ref_model, ref_name = job.reference
    info = inputs[ref_model].info(ref_name)
    if not info.is_float:
        return inputs[ref_model].get(ref_name)
    # Inputs are checked for NaN/Inf as they are read: trimming operators would otherwise
    # silently drop a NaN (it ranks as largest but never compares above a threshold).
    read = {"device": device, "dtype": torch.float32, "check_finite": check_finite}
    experts = [inputs[m].get(n, **read) for m, n in job.members]
    base = inputs[job.base[0]].get(job.base[1], **read) if job.base is not None else None
    out = run_operator(
        config.operator,
        job.params,
        base,
        experts,
        job.weights,
        job.densities,
        tensor_name=job.name,
        member_params=job.member_params,
    )
    del experts, base
    if check_finite and not is_finite(out):
        raise NonFiniteWeightsError(
            f"Merging tensor {job.name!r} overflowed to NaN/Inf although the inputs are finite.",
            "lower lambda or the weights, or merge in a wider dtype.",
        )
    return out.to(_output_dtype(config, info.torch_dtype))


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
    plan: MergePlan | MergeConfig,
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
    """Run ``plan`` (a uniform :class:`MergePlan` or a whole mergekit :class:`MergeConfig`).
    Without ``out_dir`` return the merged state dict (CPU tensors); with it, write a Hugging
    Face folder (safetensors shards, config and tokenizer copied from the reference model)
    atomically and return its path."""
    config = plan.to_config() if isinstance(plan, MergePlan) else plan
    device = resolve_device(device)
    inputs = _open_inputs(config, allow_pickle, allow_remote_code)
    schedule = build_schedule(config, inputs)
    jobs = schedule.jobs

    def ref_info(job: TensorJob):
        return inputs[job.reference[0]].info(job.reference[1])

    bar = tqdm(
        total=sum(ref_info(j).nbytes for j in jobs),
        unit="B",
        unit_scale=True,
        desc="merge",
        disable=not progress,
    )
    if out_dir is None:
        state: dict[str, torch.Tensor] = {}
        for job in jobs:
            state[job.name] = _merge_one(config, inputs, job, device, check_finite).cpu()
            bar.update(ref_info(job).nbytes)
        bar.close()
        return state

    out_dir = Path(out_dir)
    _check_clear_of_inputs(out_dir, list(inputs))
    out_dtypes = {
        j.name: _output_dtype(config, ref_info(j).torch_dtype)
        if ref_info(j).is_float
        else ref_info(j).torch_dtype
        for j in jobs
    }
    nbytes = {j.name: ref_info(j).numel * out_dtypes[j.name].itemsize for j in jobs}
    by_name = {j.name: j for j in jobs}
    shards = _shard_layout([j.name for j in jobs], nbytes, shard_bytes)
    reference = inputs[models_of(config)[0]]
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        weight_map: dict[str, str] = {}
        for i, shard_names in enumerate(shards):
            file_name = (
                "model.safetensors"
                if len(shards) == 1
                else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            layout = [(n, out_dtypes[n], ref_info(by_name[n]).shape) for n in shard_names]
            with SafetensorsStreamWriter(tmp / file_name, layout, background=True) as writer:
                for name in shard_names:
                    job = by_name[name]
                    writer.write(name, _merge_one(config, inputs, job, device, check_finite))
                    weight_map[name] = file_name
                    bar.update(ref_info(job).nbytes)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        _write_config(reference, config, schedule, inputs, tmp)
        copy_tokenizer(config, inputs, reference, tmp)
        (tmp / PLAN_FILE).write_text(plan.to_mergekit_yaml())
    bar.close()
    return out_dir


def _check_clear_of_inputs(out_dir: Path, sources: list[str]) -> None:
    """Refuse an output folder that is, or contains, a model the plan reads: replacing it
    (``overwrite``) would destroy an input while it is being read."""
    out = out_dir.expanduser().resolve()
    folders = []
    for source in sources:  # BASE+ADAPTER reads two folders
        parts = split_plus(source)
        folders += list(parts) if parts else [source]
    for source in folders:
        src = Path(source).expanduser().resolve()
        if out == src or out in src.parents:
            relation = "is" if out == src else "contains"
            raise OutputPathError(
                f"Output folder {str(out_dir)!r} {relation} the input model {str(source)!r}; "
                "writing it would destroy that input.",
                "choose an output folder outside every model the plan merges.",
            )


def _write_config(
    ref: Checkpoint,
    config: MergeConfig,
    schedule: Schedule,
    inputs: dict[str, Checkpoint],
    folder: Path,
) -> None:
    out = dict(ref.config)
    if config.output_dtype:
        for key in ("torch_dtype", "dtype"):
            if key in out:
                out[key] = config.output_dtype
    if config.sliced:
        _renumber_layers_in_config(out, schedule, inputs)
    (folder / "config.json").write_text(json.dumps(out, indent=2, sort_keys=True))


def _renumber_layers_in_config(
    out: dict, schedule: Schedule, inputs: dict[str, Checkpoint]
) -> None:
    """A layer-stacking merge changes the layer count, and per-layer lists (Gemma's
    ``layer_types``) must follow the layers they describe."""
    target = out.get("text_config") if isinstance(out.get("text_config"), dict) else out
    for key in LAYER_COUNT_KEYS:
        if key in target:
            target[key] = schedule.layers
    for key in PER_LAYER_CONFIG_KEYS:
        if isinstance(target.get(key), list):
            values = []
            for model, layer in schedule.layer_sources:
                cfg = inputs[model].config
                cfg = (
                    cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
                )
                values.append(cfg[key][layer])
            target[key] = values
