"""``MergePlan``: what to merge, how, and its mergekit-compatible YAML form.

The YAML form is mergekit's (``merge_method``, ``base_model``, ``models[].parameters``,
``parameters``, ``dtype``) so a plan simmerge picks can be run by mergekit unchanged, and a
mergekit config can be read by simmerge. simmerge-only settings (the random seed of DARE/DELLA)
live in a top-level ``simmerge:`` section, which :meth:`MergePlan.to_mergekit_yaml` leaves out
for strict exports (mergekit 0.1.5 rejects unknown operator parameters).

Relative model paths in a YAML file are resolved against the file's folder, so a plan stays
valid when the folder holding it and its models is moved.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from simmerge.errors import PlanError
from simmerge.merging.config import (
    NEUTRAL_SHARED,
    MergeConfig,
    MergeSlice,
    SliceSource,
    dump_yaml,
)
from simmerge.merging.registry import check_densities, get_operator, resolve_params

OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SIMMERGE_ONLY = ("seed",)


class PlanMember(BaseModel):
    """One model in a merge, with its weight and optional per-member density."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    weight: float = 1.0
    density: float | None = None

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, value: float) -> float:
        if not math.isfinite(value):
            raise PlanError(
                f"Model weight must be a finite number, got {value!r}.",
                "give each model a finite `weight` (e.g. 1.0).",
            )
        return value


class MergePlan(BaseModel):
    """An executable merge: operator, parameters, ordered members and the base they share.

    ``params`` are validated against the operator's schema (unknown names, wrong types and
    out-of-range values are :class:`~simmerge.errors.OperatorParameterError`); after validation
    they hold every parameter with its default filled in, so equal merges compare equal.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    operator: str
    members: tuple[PlanMember, ...]
    base: str | None = None
    params: dict[str, Any] = {}
    dtype: str | None = None

    @model_validator(mode="after")
    def _validate(self) -> MergePlan:
        spec = get_operator(self.operator)
        n = len(self.members)
        wanted = spec.members_wanted(n)
        if wanted is not None:
            raise PlanError(
                f"Operator {self.operator!r} takes {wanted} member model(s), got {n}.",
                "add or remove entries under `models`.",
            )
        if spec.needs_base and not self.base:
            raise PlanError(
                f"Operator {self.operator!r} works on task vectors and needs a base model.",
                "set `base_model` to the checkpoint the members were fine-tuned from.",
            )
        if not spec.needs_base and not spec.accepts_base and self.base:
            raise PlanError(
                f"Operator {self.operator!r} does not use a base model (got {self.base!r}).",
                "drop `base`, or list that model among the members to include it.",
            )
        seen = [os.path.normpath(m.model) for m in self.members]
        dupes = sorted({m for m in seen if seen.count(m) > 1})
        if dupes:
            raise PlanError(
                f"Model(s) listed twice in the plan: {', '.join(dupes)}.",
                "list each member once; use its weight to give it more influence.",
            )
        if self.base and os.path.normpath(self.base) in seen:
            raise PlanError(
                f"The base model {self.base!r} is also listed as a member; its task vector "
                "would be zero.",
                "remove it from `models`.",
            )
        resolved = resolve_params(self.operator, self.params)
        if not spec.uses_weights and any(m.weight != 1.0 for m in self.members):
            raise PlanError(
                f"Operator {self.operator!r} does not use per-model weights.",
                "remove `weight` from the models (slerp is steered by t).",
            )
        for m in self.members:
            if m.density is not None:
                if "density" not in spec.per_member:
                    raise PlanError(
                        f"Operator {self.operator!r} has no per-model density "
                        f"(given for {m.model!r}).",
                        "remove `density` from that model's parameters.",
                    )
                spec.param("density").check(m.density, self.operator)
        if "density" in resolved:
            check_densities(
                self.operator,
                resolved,
                [m.density if m.density is not None else resolved["density"] for m in self.members],
            )
        if self.operator == "linear" and resolved["normalize"]:
            if abs(sum(m.weight for m in self.members)) < 1e-8:
                raise PlanError(
                    "Linear merge with normalize=true has weights summing to 0.",
                    "change the weights or set normalize: false.",
                )
        if self.dtype is not None and self.dtype not in OUTPUT_DTYPES:
            raise PlanError(
                f"Unsupported output dtype {self.dtype!r}.",
                f"use one of {', '.join(OUTPUT_DTYPES)} or leave it out to keep the base's.",
            )
        object.__setattr__(self, "params", resolved)
        return self

    # --- identity ----------------------------------------------------------------------------

    @property
    def plan_id(self) -> str:
        """A short stable id: hash of the canonical JSON of the plan."""
        blob = json.dumps(self.model_dump(), sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=6).hexdigest()

    def member_densities(self) -> list[float]:
        default = self.params.get("density", 1.0)
        return [m.density if m.density is not None else default for m in self.members]

    # --- mergekit YAML -----------------------------------------------------------------------

    def to_mergekit_dict(self, *, include_simmerge: bool = True) -> dict[str, Any]:
        spec = get_operator(self.operator)
        out: dict[str, Any] = {"merge_method": self.operator}
        if self.operator == "slerp":
            out["base_model"] = self.members[0].model
            out["models"] = [{"model": m.model} for m in self.members]
        elif not spec.uses_weights:
            out["base_model"] = self.base
            out["models"] = [{"model": m.model} for m in self.members]
        else:
            if self.base:
                out["base_model"] = self.base
            models = []
            for m in self.members:
                mparams: dict[str, Any] = {"weight": m.weight}
                if m.density is not None:
                    mparams["density"] = m.density
                models.append({"model": m.model, "parameters": mparams})
            out["models"] = models
        shared = {k: v for k, v in self.params.items() if k not in _SIMMERGE_ONLY}
        if shared:
            out["parameters"] = shared
        if self.dtype:
            out["dtype"] = self.dtype
        extras = {k: self.params[k] for k in _SIMMERGE_ONLY if k in self.params}
        if include_simmerge and extras and spec.randomized:
            out["simmerge"] = extras
        return out

    def to_mergekit_yaml(self, path: str | Path | None = None, *, strict: bool = False) -> str:
        """YAML text; ``strict`` drops simmerge-only settings so mergekit accepts the file."""
        return dump_yaml(self.to_mergekit_dict(include_simmerge=not strict), path)

    def to_config(self) -> MergeConfig:
        """The same merge as a :class:`~simmerge.merging.config.MergeConfig` (what the engine
        executes)."""
        spec = get_operator(self.operator)
        members = []
        for m in self.members:
            mparams: dict[str, Any] = {}
            if spec.uses_weights:
                mparams["weight"] = m.weight
            if m.density is not None:
                mparams["density"] = m.density
            members.append(SliceSource(model=m.model, params=mparams))
        base = self.base
        sources = list(members)
        if self.operator == "slerp":
            base = self.members[0].model  # the model at t = 0
        elif base is not None:
            sources.append(SliceSource(model=base))
        return MergeConfig(
            operator=self.operator,
            slices=(MergeSlice(sources=tuple(sources)),),
            base=base,
            params={k: v for k, v in self.params.items() if k != "seed"},
            out_dtype=self.dtype,
            seed=self.params.get("seed") if spec.randomized else None,
        )

    @classmethod
    def from_config(cls, config: MergeConfig) -> MergePlan:
        """The equal plan of a uniform config; PlanError (with the reasons) otherwise."""
        reasons = config.non_uniform_reasons()
        if reasons:
            raise PlanError(
                f"This mergekit config is not one uniform merge: {'; '.join(reasons)}.",
                "merge it with `simmerge merge` (which runs it as written); only uniform "
                "configs can be predicted or searched over.",
            )
        spec = config.spec
        group = config.group(config.slices[0])
        per_input = set(spec.per_member) | {"weight"}
        shared = {k: v for k, v in config.params.items() if k not in per_input or k == "density"}
        shared = {k: v for k, v in shared.items() if k not in NEUTRAL_SHARED}
        for k in config.member_extras:  # uniform: every member uses the same value
            shared[k] = config.member_values(k)[0]
        if config.seed is not None:
            shared["seed"] = config.seed
        default_weight = config.params.get("weight", 1.0)
        members = tuple(
            PlanMember(
                model=s.model,
                weight=s.params.get("weight", default_weight) if spec.uses_weights else 1.0,
                density=s.params.get("density"),
            )
            for s in group.members
        )
        return cls(
            operator=config.operator,
            members=members,
            base=group.base.model if group.base is not None else None,
            params=shared,
            dtype=config.output_dtype,
        )

    @classmethod
    def from_mergekit_dict(
        cls, data: Any, *, relative_to: Path | None = None, source: str = "plan"
    ) -> MergePlan:
        """Build a plan from mergekit's config structure; unknown keys are errors, and a
        config that is not one uniform merge (gradients, filters, slices) is a PlanError."""
        config = MergeConfig.from_mergekit_dict(data, relative_to=relative_to, source=source)
        return cls.from_config(config)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergePlan:
        return cls.from_config(MergeConfig.from_yaml(path))
