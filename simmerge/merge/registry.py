"""The operator registry: name -> tensor function + parameter schema.

An explicit dict (no registration by import side effect): adding an operator means adding one
entry to :data:`OPERATORS`. Every parameter has a type, a default and a range, checked by
:func:`resolve_params` before any tensor is touched, so a typo or an out-of-range density fails at
plan-load time with a message that says which value is wrong and what is allowed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from simmerge.errors import OperatorParameterError, UnknownOperatorError
from simmerge.merge import operators as ops


@dataclass(frozen=True)
class ParamSpec:
    """One operator parameter: its type, default, allowed range and meaning."""

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (else >= low)
    doc: str = ""

    def describe_range(self) -> str:
        if self.kind is bool:
            return "true or false"
        left = "(" if self.low_open else "["
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"a {self.kind.__name__} in {left}{low}, {high}]"

    def check(self, value: Any, operator: str) -> Any:
        """Return ``value`` converted to the declared type, or raise if it does not fit."""
        bad = OperatorParameterError(
            f"Operator {operator!r}: parameter {self.name!r} = {value!r} is invalid; "
            f"it must be {self.describe_range()}.",
            f"set {self.name} to {self.describe_range()} ({self.doc}).",
        )
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if self.kind is int and not float(value).is_integer():
            raise bad
        value = self.kind(value)
        if value != value:  # NaN
            raise bad
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        return value


@dataclass(frozen=True)
class OperatorSpec:
    """A merge operator: how many members it takes, whether it needs the base, its parameters."""

    name: str
    doc: str
    needs_base: bool
    min_members: int
    max_members: int | None
    params: tuple[ParamSpec, ...]
    per_member: tuple[str, ...] = ()  # parameters a member may override (besides weight)
    randomized: bool = False
    uses_weights: bool = True  # slerp and model_stock take no per-model weight (as mergekit)
    constraint: Callable[[Mapping[str, Any]], str | None] | None = field(default=None)

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


_LAMBDA = ParamSpec("lambda", float, 1.0, doc="global scale of the merged task vector")
_DENSITY = ParamSpec(
    "density", float, 1.0, low=0.0, high=1.0, low_open=True, doc="fraction of entries kept"
)
_SEED = ParamSpec("seed", int, 0, low=0, doc="seed of the random drop masks")


def _normalize(default: bool) -> ParamSpec:
    return ParamSpec("normalize", bool, default, doc="divide by the sum of weights")


_RESCALE = ParamSpec("rescale", bool, True, doc="rescale kept entries to the original L1 norm")


def _della_constraint(params: Mapping[str, Any]) -> str | None:
    d, e = params["density"], params["epsilon"]
    if d < 1.0 and not (0.0 < d - e and d + e <= 1.0):
        return (
            f"della needs 0 < density - epsilon and density + epsilon <= 1 "
            f"(got density={d:g}, epsilon={e:g}); lower epsilon or move density"
        )
    return None


OPERATORS: dict[str, OperatorSpec] = {
    spec.name: spec
    for spec in (
        OperatorSpec(
            "linear",
            "weighted average of the members' weights",
            False,
            1,
            None,
            (_normalize(True),),
        ),
        OperatorSpec(
            "task_arithmetic",
            "base + lambda * sum of weighted task vectors",
            True,
            1,
            None,
            (_LAMBDA, _normalize(False)),
        ),
        OperatorSpec(
            "ties",
            "trim, elect sign, disjoint mean (TIES-Merging)",
            True,
            1,
            None,
            (_DENSITY, _LAMBDA, _normalize(True)),
            per_member=("density",),
        ),
        OperatorSpec(
            "dare_linear",
            "random drop + rescale, then weighted sum (DARE)",
            True,
            1,
            None,
            (_DENSITY, _LAMBDA, _normalize(False), _RESCALE, _SEED),
            per_member=("density",),
            randomized=True,
        ),
        OperatorSpec(
            "dare_ties",
            "random drop + rescale, then TIES sign election",
            True,
            1,
            None,
            (_DENSITY, _LAMBDA, _normalize(False), _RESCALE, _SEED),
            per_member=("density",),
            randomized=True,
        ),
        OperatorSpec(
            "slerp",
            "spherical interpolation between two models",
            False,
            2,
            2,
            (ParamSpec("t", float, 0.5, low=0.0, high=1.0, doc="0 = first member, 1 = second"),),
            uses_weights=False,
        ),
        OperatorSpec(
            "breadcrumbs",
            "drop largest gamma and smallest entries of each task vector",
            True,
            1,
            None,
            (
                _DENSITY,
                ParamSpec(
                    "gamma", float, 0.01, low=0.0, high=1.0, doc="fraction of largest dropped"
                ),
                _LAMBDA,
                _normalize(False),
            ),
            per_member=("density",),
        ),
        OperatorSpec(
            "della",
            "magnitude-ranked random drop + rescale, TIES sign step (DELLA)",
            True,
            1,
            None,
            (
                _DENSITY,
                ParamSpec("epsilon", float, 0.15, low=0.0, high=1.0, doc="spread of keep probs"),
                _LAMBDA,
                _normalize(True),
                _RESCALE,
                _SEED,
            ),
            per_member=("density",),
            randomized=True,
            constraint=_della_constraint,
        ),
        OperatorSpec(
            "model_stock",
            "interpolate base -> mean by the task vectors' mean cosine",
            True,
            2,
            None,
            (),
            uses_weights=False,
        ),
    )
}

OPERATOR_NAMES: tuple[str, ...] = tuple(OPERATORS)


def get_operator(name: str) -> OperatorSpec:
    try:
        return OPERATORS[name]
    except KeyError:
        raise UnknownOperatorError(
            f"Unknown merge operator {name!r}.",
            f"use one of: {', '.join(OPERATOR_NAMES)}.",
        ) from None


def resolve_params(operator: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, types converted, ranges checked; unknown names are errors."""
    spec = get_operator(operator)
    unknown = sorted(set(params) - set(spec.param_names))
    if unknown:
        allowed = ", ".join(spec.param_names) or "none"
        raise OperatorParameterError(
            f"Operator {operator!r} has no parameter(s) {', '.join(map(repr, unknown))}.",
            f"remove them; its parameters are: {allowed}.",
        )
    resolved = {p.name: p.check(params.get(p.name, p.default), operator) for p in spec.params}
    if spec.constraint is not None:
        problem = spec.constraint(resolved)
        if problem:
            raise OperatorParameterError(f"Operator {operator!r}: {problem}.")
    return resolved


def tensor_seed(seed: int, tensor_name: str) -> int:
    """A per-tensor seed, so random masks do not depend on the order tensors are visited."""
    digest = hashlib.blake2b(f"{seed}:{tensor_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def run_operator(
    operator: str,
    params: Mapping[str, Any],
    base: torch.Tensor | None,
    experts: list[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    tensor_name: str = "",
) -> torch.Tensor:
    """Dispatch one tensor to its operator. Consumes ``base`` and ``experts`` (see operators).

    ``params`` must come from :func:`resolve_params`; members and base were checked by the plan.
    """
    p = params
    generator = None
    if get_operator(operator).randomized:
        device = experts[0].device
        generator = torch.Generator(device=device).manual_seed(tensor_seed(p["seed"], tensor_name))
    if operator == "linear":
        return ops.linear(experts, weights, normalize=p["normalize"])
    if operator == "slerp":
        return ops.slerp(experts[0], experts[1], t=p["t"])
    if base is None:
        raise OperatorParameterError(f"Operator {operator!r} needs a base model tensor.")
    if operator == "task_arithmetic":
        return ops.task_arithmetic(
            base, experts, weights, lam=p["lambda"], normalize=p["normalize"]
        )
    if operator == "ties":
        return ops.ties(
            base, experts, weights, densities, lam=p["lambda"], normalize=p["normalize"]
        )
    if operator in ("dare_linear", "dare_ties"):
        return ops.dare(
            base,
            experts,
            weights,
            densities,
            generator=generator,
            sign_consensus=operator == "dare_ties",
            lam=p["lambda"],
            normalize=p["normalize"],
            rescale=p["rescale"],
        )
    if operator == "breadcrumbs":
        return ops.breadcrumbs(
            base,
            experts,
            weights,
            densities,
            gamma=p["gamma"],
            lam=p["lambda"],
            normalize=p["normalize"],
        )
    if operator == "della":
        return ops.della(
            base,
            experts,
            weights,
            densities,
            generator=generator,
            epsilon=p["epsilon"],
            lam=p["lambda"],
            normalize=p["normalize"],
            rescale=p["rescale"],
        )
    if operator == "model_stock":
        return ops.model_stock(base, experts)
    raise UnknownOperatorError(f"Operator {operator!r} is registered but has no dispatch.")


def apply_operator(
    operator: str,
    base: torch.Tensor | None,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    params: Mapping[str, Any] | None = None,
    densities: Sequence[float] | None = None,
    *,
    tensor_name: str = "",
) -> torch.Tensor:
    """Merge single tensors without touching the inputs (they are cloned to float32).

    The convenient, non-consuming entry point for tests and notebooks; the engine uses
    :func:`run_operator` directly to avoid the copies.
    """
    resolved = resolve_params(operator, params or {})
    weights = list(weights) if weights is not None else [1.0] * len(experts)
    if densities is None:
        densities = [resolved.get("density", 1.0)] * len(experts)
    work = [x.detach().clone().float() for x in experts]
    work_base = base.detach().clone().float() if base is not None else None
    return run_operator(
        operator, resolved, work_base, work, weights, densities, tensor_name=tensor_name
    )
