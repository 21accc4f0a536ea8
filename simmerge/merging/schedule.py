"""Which input tensors make each output tensor, and with which parameter values.

The engine streams a merge tensor by tensor; this module decides, before any weight is read,
for every output tensor: its name, the (model, tensor) it reads from the base and from each
member, and every parameter resolved for that one tensor (gradients at its relative depth,
filters against its name, per-model before slice before global before default). Resolving
everything up front means a bad value anywhere fails before the first byte is written.

A ``models:`` config keeps the reference model's tensor names and order. A ``slices:`` config
builds the output's layers slice by slice -- output layer ``k`` reads layer
``start + j`` of each source -- takes the embeddings from the first slice's models and the
final norm and LM head from the last slice's (mergekit's rule), and renumbers the layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from simmerge.errors import PlanError
from simmerge.io.checkpoint import Checkpoint
from simmerge.merging import settings as st
from simmerge.merging.config import MergeConfig, MergeSlice, SliceGroup, SliceSource
from simmerge.merging.layers import is_input_side, layer_count, layer_of, relative_depth, renumber
from simmerge.merging.registry import check_densities, resolve_params

Ref = tuple[str, str]  # (model path, tensor name in that model)
_MEMBER_EXTRAS = ("gamma", "epsilon", "scale")


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where its inputs come from and the operator's arguments for it."""

    name: str
    reference: Ref  # the tensor whose dtype/shape the output keeps (copied if not float)
    base: Ref | None
    members: tuple[Ref, ...]
    params: Mapping[str, Any]
    weights: tuple[float, ...]
    densities: tuple[float, ...]
    member_params: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Schedule:
    jobs: tuple[TensorJob, ...]
    layers: int  # layers of the output model
    layer_sources: tuple[tuple[str, int], ...]  # (model, source layer) of each output layer


def _ranges(group: SliceGroup, n_layers: int) -> tuple[int, int]:
    first = (group.base or group.members[0]).layer_range
    return first if first is not None else (0, n_layers)


def _inputs(group: SliceGroup) -> list[SliceSource]:
    return [s for s in (group.base, *group.members) if s is not None]


def _same_name(group: SliceGroup, name: str) -> dict[str, str]:
    return {s.model: name for s in _inputs(group)}


def _start(s: SliceSource) -> int:
    return s.layer_range[0] if s.layer_range is not None else 0


def build_schedule(config: MergeConfig, checkpoints: Mapping[str, Checkpoint]) -> Schedule:
    """Every output tensor of ``config`` in write order (``checkpoints``: path -> opened)."""
    resolver = _Resolver(config)
    if not config.sliced:
        sl = config.slices[0]
        group = config.group(sl)
        ref_source = group.base or group.members[0]
        ref = checkpoints[ref_source.model]
        n = layer_count(ref.config, ref.names)
        jobs = []
        for name in ref.names:
            parts = layer_of(name)
            t = relative_depth(parts[1], n) if parts is not None else 0.0
            jobs.append(resolver.job(sl, group, name, _same_name(group, name), t))
        return Schedule(tuple(jobs), n, tuple((ref_source.model, i) for i in range(n)))

    groups = [config.group(sl) for sl in config.slices]
    first_src = (groups[0].base or groups[0].members[0]).model
    last_src = (groups[-1].base or groups[-1].members[0]).model
    pre = [n for n in checkpoints[first_src].names if layer_of(n) is None and is_input_side(n)]
    post = [n for n in checkpoints[last_src].names if layer_of(n) is None and not is_input_side(n)]
    jobs = [
        resolver.job(config.slices[0], groups[0], n, _same_name(groups[0], n), 0.0) for n in pre
    ]
    out_layer = 0
    layer_sources = []
    for sl, group in zip(config.slices, groups, strict=True):
        lead = group.base or group.members[0]
        lead_ckpt = checkpoints[lead.model]
        start, end = _ranges(group, layer_count(lead_ckpt.config, lead_ckpt.names))
        by_layer: dict[int, list[str]] = {}
        for name in lead_ckpt.names:
            parts = layer_of(name)
            if parts is not None:
                by_layer.setdefault(parts[1], []).append(name)
        count = end - start
        for j in range(count):
            names = by_layer.get(start + j)
            if not names:
                raise PlanError(
                    f"Slice layer_range [{start}, {end}) reaches layer {start + j}, which "
                    f"{lead.model!r} does not have.",
                    "keep every layer_range inside the source model's layers.",
                )
            t = relative_depth(j, count)
            for name in names:
                out_name = renumber(name, out_layer)
                inputs = {s.model: renumber(name, _start(s) + j) for s in _inputs(group)}
                jobs.append(resolver.job(sl, group, out_name, inputs, t))
            layer_sources.append((lead.model, start + j))
            out_layer += 1
    jobs += [
        resolver.job(config.slices[-1], groups[-1], n, _same_name(groups[-1], n), 0.0) for n in post
    ]
    return Schedule(tuple(jobs), out_layer, tuple(layer_sources))


class _Resolver:
    def __init__(self, config: MergeConfig) -> None:
        self.config = config
        self.spec = config.spec
        self.extras = [n for n in _MEMBER_EXTRAS if n in self.spec.per_member]
        self.casts = {p.name: (lambda v, p=p: p.check(v, self.spec.name)) for p in self.spec.params}
        self.casts["weight"] = float

    def job(
        self,
        sl: MergeSlice,
        group: SliceGroup,
        out_name: str,
        inputs: Mapping[str, str],
        t: float,
    ) -> TensorJob:
        config, spec = self.config, self.spec
        shared_scopes = (sl.params, config.params)
        shared: dict[str, Any] = {}
        for p in spec.params:
            if p.name == "seed":
                continue
            value = st.resolve(p.name, shared_scopes, out_name, t, self.casts[p.name])
            if value is not None:
                shared[p.name] = value
        if spec.randomized and config.seed is not None:
            shared["seed"] = config.seed
        resolved = resolve_params(config.operator, shared)

        def member_value(s: SliceSource, name: str, default: Any) -> Any:
            scopes = (s.params, sl.params, config.params)
            value = st.resolve(name, scopes, inputs[s.model], t, self.casts[name])
            return default if value is None else value

        members = group.members
        weights = tuple(
            float(member_value(s, "weight", 1.0)) if spec.uses_weights else 1.0 for s in members
        )
        densities = tuple(
            member_value(s, "density", resolved["density"]) if "density" in resolved else 1.0
            for s in members
        )
        extras = {n: tuple(member_value(s, n, resolved[n]) for s in members) for n in self.extras}
        if "density" in resolved:
            check_densities(config.operator, resolved, densities, extras.get("epsilon"))
        ref_source = group.base or members[0]
        return TensorJob(
            name=out_name,
            reference=(ref_source.model, inputs[ref_source.model]),
            base=(group.base.model, inputs[group.base.model]) if group.base else None,
            members=tuple((s.model, inputs[s.model]) for s in members),
            params=resolved,
            weights=weights,
            densities=densities,
            member_params=extras,
        )


def models_of(config: MergeConfig) -> list[str]:
    """Every model path the config reads, each once, in first-use order."""
    seen: dict[str, None] = {}
    for sl in config.slices:
        for s in _inputs(config.group(sl)):
            seen.setdefault(s.model, None)
    return list(seen)
