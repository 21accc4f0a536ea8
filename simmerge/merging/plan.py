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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from simmerge.errors import PlanError
from simmerge.merging.registry import OPERATORS, check_densities, get_operator, resolve_params

OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SIMMERGE_ONLY = ("seed",)
_IGNORED_MERGEKIT_PARAMS = {"int8_mask": False}  # memory optimisation only, no semantic effect


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
        if n < spec.min_members or (spec.max_members is not None and n > spec.max_members):
            wanted = (
                f"exactly {spec.min_members}"
                if spec.max_members == spec.min_members
                else f"at least {spec.min_members}"
            )
            raise PlanError(
                f"Operator {self.operator!r} takes {wanted} member model(s), got {n}.",
                "add or remove entries under `models`.",
            )
        if spec.needs_base and not self.base:
            raise PlanError(
                f"Operator {self.operator!r} works on task vectors and needs a base model.",
                "set `base_model` to the checkpoint the members were fine-tuned from.",
            )
        if not spec.needs_base and self.base:
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
        text = yaml.safe_dump(self.to_mergekit_dict(include_simmerge=not strict), sort_keys=False)
        if path is not None:
            from simmerge.infra.files import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_mergekit_dict(
        cls, data: Any, *, relative_to: Path | None = None, source: str = "plan"
    ) -> MergePlan:
        """Build a plan from mergekit's config structure; unknown keys are errors."""
        return _plan_from_dict(data, relative_to=relative_to, source=source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergePlan:
        from simmerge.infra.files import read_yaml_file

        path = Path(path)
        data = read_yaml_file(path, "Plan file", PlanError, "check the path to the YAML plan.")
        return _plan_from_dict(data, relative_to=path.parent, source=str(path))


_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "simmerge"}
_MODEL_KEYS = {"model", "parameters"}
_MEMBER_PARAM_KEYS = {"weight", "density"}


def _resolve_path(value: Any, relative_to: Path | None, source: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PlanError(
            f"{source}: {where} must be a non-empty path string, got {value!r}.",
            "write the model folder's path (absolute, or relative to the plan file).",
        )
    p = Path(value).expanduser()
    if relative_to is not None and not p.is_absolute():
        p = relative_to / p
    return str(p)


def _expect_mapping(value: Any, source: str, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PlanError(
            f"{source}: {where} must be a mapping, got {type(value).__name__}.",
            "write it as `key: value` lines under that key.",
        )
    return value


def _plan_from_dict(data: Any, *, relative_to: Path | None, source: str) -> MergePlan:
    top = _expect_mapping(data, source, "the document")
    unknown = sorted(set(map(str, top)) - _TOP_KEYS)
    if unknown:
        raise PlanError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}.",
            f"allowed top-level keys are {', '.join(sorted(_TOP_KEYS))} (slices and modules "
            "are not supported).",
        )
    operator = top.get("merge_method")
    if not isinstance(operator, str):
        raise PlanError(
            f"{source}: `merge_method` is missing or not a string.",
            f"add `merge_method: NAME` with one of: {', '.join(OPERATORS)}.",
        )
    models = top.get("models")
    if not isinstance(models, list) or not models:
        raise PlanError(
            f"{source}: `models` must be a non-empty list of {{model: PATH}} entries.",
            "list the models to merge as `- model: PATH` lines under `models:`.",
        )
    base = top.get("base_model")
    base = _resolve_path(base, relative_to, source, "`base_model`") if base is not None else None
    params = dict(_expect_mapping(top.get("parameters"), source, "`parameters`"))
    for key, neutral in _IGNORED_MERGEKIT_PARAMS.items():
        if key in params and params.pop(key) not in (neutral, True):
            raise PlanError(
                f"{source}: parameter {key!r} must be a boolean.", f"write `{key}: true` or false."
            )
    if operator == "model_stock" and params.pop("filter_wise", False) is not False:
        raise PlanError(
            f"{source}: model_stock with filter_wise: true is not supported.",
            "remove `filter_wise` (simmerge computes model_stock per tensor).",
        )
    extras = _expect_mapping(top.get("simmerge"), source, "`simmerge`")
    bad_extras = sorted(set(map(str, extras)) - set(_SIMMERGE_ONLY))
    if bad_extras:
        raise PlanError(
            f"{source}: unknown key(s) under `simmerge`: {', '.join(bad_extras)}.",
            f"use only: {', '.join(_SIMMERGE_ONLY)}.",
        )
    params.update(extras)

    spec_needs_base = _needs_base(operator, source)
    members: list[dict[str, Any]] = []
    for i, entry in enumerate(models):
        entry = _expect_mapping(entry, source, f"models[{i}]")
        bad = sorted(set(map(str, entry)) - _MODEL_KEYS)
        if bad:
            raise PlanError(
                f"{source}: models[{i}] has unknown key(s) {', '.join(bad)}.",
                "a model entry takes only `model` and `parameters`.",
            )
        path = _resolve_path(entry.get("model"), relative_to, source, f"models[{i}].model")
        mparams = dict(_expect_mapping(entry.get("parameters"), source, f"models[{i}].parameters"))
        bad = sorted(set(map(str, mparams)) - _MEMBER_PARAM_KEYS)
        if bad:
            raise PlanError(
                f"{source}: models[{i}].parameters has unsupported key(s) {', '.join(bad)}.",
                "per-model parameters may be weight and density; put others under `parameters`.",
            )
        for key, value in mparams.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PlanError(
                    f"{source}: models[{i}].parameters.{key} must be a number, got {value!r} "
                    "(per-layer gradients are not supported).",
                    "give one number for the whole model.",
                )
        if spec_needs_base and base is not None and _same_path(path, base):
            continue  # mergekit lets the base appear in `models`; it carries no task vector
        members.append({"model": path, **mparams})
    if operator == "slerp" and base is not None:
        if not any(_same_path(m["model"], base) for m in members):
            raise PlanError(
                f"{source}: for slerp, `base_model` must be one of the two models.",
                "set `base_model` to the model at t = 0 (one of the two listed).",
            )
        members.sort(key=lambda m: not _same_path(m["model"], base))  # base first: t=0
    if not spec_needs_base:
        base = None  # linear / slerp: mergekit's base_model only names the config source
    try:
        return MergePlan(
            operator=operator,
            members=tuple(PlanMember(**m) for m in members),
            base=base,
            params=params,
            dtype=top.get("dtype"),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PlanError(
            f"{source}: {loc}: {err['msg']}.", "correct that value (see the operator's docs)."
        ) from None


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


def _needs_base(operator: str, source: str) -> bool:
    try:
        return get_operator(operator).needs_base
    except PlanError as exc:
        raise type(exc)(f"{source}: {exc.what}", exc.fix) from None
