"""The operator registry: name -> tensor function + parameter schema.

An explicit dict (no registration by import side effect): adding an operator means adding one
entry to :data:`OPERATORS` -- its schema and an ``apply`` adapter onto the tensor functions in
:mod:`simmerge.merging.operators`. Every parameter has a type, a default and a range, checked by
:func:`resolve_params` before any tensor is touched, so a typo or an out-of-range density fails at
plan-load time with a message that says which value is wrong and what is allowed. Defaults live
here only; the tensor functions take every parameter explicitly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from simmerge.errors import OperatorParameterError, UnknownOperatorError
from simmerge.merging import operators as ops


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
        try:
            if not math.isfinite(float(value)) or (
                self.kind is int and not float(value).is_integer()
            ):
                raise bad
            value = self.kind(value)
        except OverflowError:
            raise bad from None
        if self.kind is int and abs(value) >= 2**63:
            raise bad
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        return value


@dataclass(frozen=True)
class OperatorCall:
    """Everything an operator needs for one tensor (inputs are consumed, see operators)."""

    params: Mapping[str, Any]
    base: torch.Tensor | None
    experts: list[torch.Tensor]
    weights: Sequence[float]
    densities: Sequence[float]
    generator: torch.Generator | None
    # per-member values of the operator's other per-member parameters (gamma, epsilon, scale),
    # in member order; an operator falls back to the global value when a name is missing
    member_params: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def per_member(self, name: str) -> list[Any]:
        values = self.member_params.get(name)
        return list(values) if values is not None else [self.params[name]] * len(self.experts)


@dataclass(frozen=True)
class OperatorSpec:
    """A merge operator: how many members it takes, whether it needs the base, its parameters,
    and ``apply``, which runs it on one tensor."""

    name: str
    doc: str
    needs_base: bool
    min_members: int
    max_members: int | None
    params: tuple[ParamSpec, ...]
    apply: Callable[[OperatorCall], torch.Tensor] = field(repr=False)
    per_member: tuple[str, ...] = ()  # parameters a member may override (besides weight)
    randomized: bool = False
    uses_weights: bool = True  # slerp and model_stock take no per-model weight (as mergekit)
    accepts_base: bool = False  # base optional (nuslerp: with one, it works on task vectors)

    def members_wanted(self, n: int) -> str | None:
        """None if ``n`` members is a valid count, else what is wanted ("exactly 2", ...)."""
        if n >= self.min_members and (self.max_members is None or n <= self.max_members):
            return None
        if self.max_members == self.min_members:
            return f"exactly {self.min_members}"
        if n < self.min_members:
            return f"at least {self.min_members}"
        return f"at most {self.max_members}"

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.params if p.name == name)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


_LAMBDA = ParamSpec("lambda", float, 1.0, doc="global scale of the merged task vector")
_DENSITY = ParamSpec(
    "density", float, 1.0, low=0.0, high=1.0, low_open=True, doc="fraction of entries kept"
)
_GAMMA = ParamSpec("gamma", float, 0.01, low=0.0, high=1.0, doc="fraction of largest dropped")
_EPSILON = ParamSpec("epsilon", float, 0.15, low=0.0, high=1.0, doc="spread of keep probs")
_SEED = ParamSpec("seed", int, 0, low=0, doc="seed of the random drop masks")


def _normalize(default: bool) -> ParamSpec:
    return ParamSpec("normalize", bool, default, doc="divide by the sum of weights")


def _rescale(default: bool) -> ParamSpec:
    return ParamSpec("rescale", bool, default, doc="rescale kept entries to the original L1 norm")


def check_densities(
    operator: str,
    params: Mapping[str, Any],
    densities: Sequence[float],
    epsilons: Sequence[float] | None = None,
) -> None:
    """Cross-parameter checks that involve the densities actually used (global or per member).

    DELLA's keep probabilities ``density -/+ epsilon`` must stay strictly inside (0, 1).
    """
    if operator not in ("della", "della_linear"):
        return
    if epsilons is None:
        epsilons = [params["epsilon"]] * len(densities)
    for d, eps in zip(densities, epsilons, strict=True):
        if d < 1.0 and not (0.0 < d - eps and d + eps < 1.0):
            raise OperatorParameterError(
                f"Operator {operator!r}: needs 0 < density - epsilon and density + epsilon < 1 "
                f"(got density={d:g}, epsilon={eps:g}).",
                "lower epsilon or move density.",
            )


def _gta(sign_consensus: bool, sparsify: str | None) -> Callable[[OperatorCall], torch.Tensor]:
    """Adapter for the generalized task-arithmetic family (mergekit's GTA methods)."""

    def apply(c: OperatorCall) -> torch.Tensor:
        p = c.params
        common = {"lam": p["lambda"], "normalize": p["normalize"]}
        if sparsify is None:
            return ops.task_arithmetic(c.base, c.experts, c.weights, **common)
        if sparsify == "magnitude":
            return ops.ties(
                c.base, c.experts, c.weights, c.densities, rescale=p["rescale"], **common
            )
        if sparsify == "random":
            return ops.dare(
                c.base,
                c.experts,
                c.weights,
                c.densities,
                generator=c.generator,
                sign_consensus=sign_consensus,
                rescale=p["rescale"],
                **common,
            )
        if sparsify == "outliers":
            return ops.breadcrumbs(
                c.base,
                c.experts,
                c.weights,
                c.densities,
                gammas=c.per_member("gamma"),
                sign_consensus=sign_consensus,
                rescale=p["rescale"],
                **common,
            )
        return ops.della(
            c.base,
            c.experts,
            c.weights,
            c.densities,
            generator=c.generator,
            epsilons=c.per_member("epsilon"),
            sign_consensus=sign_consensus,
            rescale=p["rescale"],
            **common,
        )

    return apply


OPERATORS: dict[str, OperatorSpec] = {
    spec.name: spec
    for spec in (
        OperatorSpec(
            name="linear",
            doc="weighted average of the members' weights",
            needs_base=False,
            min_members=1,
            max_members=None,
            params=(_normalize(True),),
            apply=lambda c: ops.linear(c.experts, c.weights, normalize=c.params["normalize"]),
        ),
        OperatorSpec(
            name="task_arithmetic",
            doc="base + lambda * sum of weighted task vectors",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_LAMBDA, _normalize(False)),
            apply=_gta(False, None),
        ),
        OperatorSpec(
            name="ties",
            doc="trim, elect sign, disjoint mean (TIES-Merging)",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_DENSITY, _LAMBDA, _normalize(True), _rescale(False)),
            per_member=("density",),
            apply=_gta(True, "magnitude"),
        ),
        OperatorSpec(
            name="dare_linear",
            doc="random drop + rescale, then weighted sum (DARE)",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_DENSITY, _LAMBDA, _normalize(False), _rescale(True), _SEED),
            per_member=("density",),
            randomized=True,
            apply=_gta(False, "random"),
        ),
        OperatorSpec(
            name="dare_ties",
            doc="random drop + rescale, then TIES sign election",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_DENSITY, _LAMBDA, _normalize(False), _rescale(True), _SEED),
            per_member=("density",),
            randomized=True,
            apply=_gta(True, "random"),
        ),
        OperatorSpec(
            name="slerp",
            doc="spherical interpolation between two models",
            needs_base=False,
            min_members=2,
            max_members=2,
            params=(
                ParamSpec("t", float, 0.5, low=0.0, high=1.0, doc="0 = first member, 1 = second"),
            ),
            uses_weights=False,
            apply=lambda c: ops.slerp(c.experts[0], c.experts[1], t=c.params["t"]),
        ),
        OperatorSpec(
            name="breadcrumbs",
            doc="drop largest gamma and smallest entries of each task vector",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_DENSITY, _GAMMA, _LAMBDA, _normalize(False), _rescale(False)),
            per_member=("density", "gamma"),
            apply=_gta(False, "outliers"),
        ),
        OperatorSpec(
            name="breadcrumbs_ties",
            doc="breadcrumbs sparsification, then TIES sign election",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_DENSITY, _GAMMA, _LAMBDA, _normalize(False), _rescale(False)),
            per_member=("density", "gamma"),
            apply=_gta(True, "outliers"),
        ),
        OperatorSpec(
            name="della",
            doc="magnitude-ranked random drop + rescale, TIES sign step (DELLA)",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_DENSITY, _EPSILON, _LAMBDA, _normalize(True), _rescale(True), _SEED),
            per_member=("density", "epsilon"),
            randomized=True,
            apply=_gta(True, "della"),
        ),
        OperatorSpec(
            name="della_linear",
            doc="magnitude-ranked random drop + rescale, then weighted sum (DELLA, no signs)",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(_DENSITY, _EPSILON, _LAMBDA, _normalize(False), _rescale(True), _SEED),
            per_member=("density", "epsilon"),
            randomized=True,
            apply=_gta(False, "della"),
        ),
        OperatorSpec(
            name="model_stock",
            doc="interpolate base -> mean by the task vectors' mean cosine",
            needs_base=True,
            min_members=2,
            max_members=None,
            params=(),
            uses_weights=False,
            apply=lambda c: ops.model_stock(c.base, c.experts),
        ),
        OperatorSpec(
            name="nuslerp",
            doc="spherical interpolation of two models (of their task vectors with a base)",
            needs_base=False,
            accepts_base=True,
            min_members=2,
            max_members=2,
            params=(
                ParamSpec("nuslerp_flatten", bool, True, doc="one vector per tensor"),
                ParamSpec("nuslerp_row_wise", bool, False, doc="columns, not rows, unflattened"),
            ),
            apply=lambda c: ops.nuslerp(
                c.experts[0],
                c.experts[1],
                c.base,
                t=_nuslerp_t(c.weights),
                flatten=c.params["nuslerp_flatten"],
                row_wise=c.params["nuslerp_row_wise"],
            ),
        ),
        OperatorSpec(
            name="sce",
            doc="select high-variance entries, weight by mean square, erase minority signs",
            needs_base=True,
            min_members=1,
            max_members=None,
            params=(
                ParamSpec(
                    "select_topk", float, 1.0, low=0.0, high=1.0, doc="fraction of entries kept"
                ),
            ),
            uses_weights=False,
            apply=lambda c: ops.sce(c.base, c.experts, select_topk=c.params["select_topk"]),
        ),
        OperatorSpec(
            name="karcher",
            doc="Riemannian (Karcher) mean of the members' directions, times their mean norm",
            needs_base=False,
            min_members=1,
            max_members=None,
            params=(
                ParamSpec("max_iter", int, 10, low=1, doc="iterations of the log-map step"),
                ParamSpec("tol", float, 1e-5, low=0.0, low_open=True, doc="stopping tolerance"),
            ),
            uses_weights=False,
            apply=lambda c: ops.karcher(
                c.experts, max_iter=c.params["max_iter"], tol=c.params["tol"]
            ),
        ),
        OperatorSpec(
            name="passthrough",
            doc="copy one model's tensors (with slices: stack layers of several models)",
            needs_base=False,
            min_members=1,
            max_members=1,
            params=(ParamSpec("scale", float, 1.0, doc="multiplies the tensor"),),
            per_member=("scale",),
            uses_weights=False,
            apply=lambda c: ops.passthrough(c.experts[0], scale=c.per_member("scale")[0]),
        ),
    )
}


def _nuslerp_t(weights: Sequence[float]) -> float:
    total = float(sum(weights))
    return 0.5 if abs(total) < 1e-6 else float(weights[1]) / total


OPERATOR_NAMES: tuple[str, ...] = tuple(OPERATORS)


def get_operator(name: str) -> OperatorSpec:
    try:
        return OPERATORS[name]
    except (KeyError, TypeError):
        raise UnknownOperatorError(
            f"Unknown merge operator {name!r}.",
            f"use one of: {', '.join(OPERATOR_NAMES)}.",
        ) from None


def resolve_params(operator: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, types converted, ranges checked; unknown names are errors."""
    spec = get_operator(operator)
    unknown = sorted(map(str, set(params) - set(spec.param_names)))
    if unknown:
        allowed = ", ".join(spec.param_names) or "none"
        raise OperatorParameterError(
            f"Operator {operator!r} has no parameter(s) {', '.join(map(repr, unknown))}.",
            f"remove them; its parameters are: {allowed}.",
        )
    resolved = {p.name: p.check(params.get(p.name, p.default), operator) for p in spec.params}
    if "density" in resolved:
        check_densities(operator, resolved, [resolved["density"]])
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
    member_params: Mapping[str, Sequence[Any]] | None = None,
) -> torch.Tensor:
    """Run one tensor through its operator. Consumes ``base`` and ``experts`` (see operators).

    ``params`` must come from :func:`resolve_params`; members and base were checked by the plan.
    Random masks are drawn from a CPU generator (then moved), so a seeded plan gives the same
    weights on CPU and CUDA.
    """
    spec = get_operator(operator)
    if spec.needs_base and base is None:
        raise OperatorParameterError(
            f"Operator {operator!r} needs a base model tensor.",
            "set `base_model` in the plan (the model the experts were fine-tuned from).",
        )
    generator = None
    if spec.randomized:
        generator = torch.Generator(device="cpu").manual_seed(
            tensor_seed(params["seed"], tensor_name)
        )
    call = OperatorCall(
        params, base, experts, weights, densities, generator, dict(member_params or {})
    )
    return spec.apply(call)


def apply_operator(
    operator: str,
    base: torch.Tensor | None,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    params: Mapping[str, Any] | None = None,
    densities: Sequence[float] | None = None,
    *,
    tensor_name: str = "",
    member_params: Mapping[str, Sequence[Any]] | None = None,
) -> torch.Tensor:
    """Merge single tensors without touching the inputs (they are copied to contiguous float32).

    The convenient, non-consuming entry point for tests and notebooks; the engine uses
    :func:`run_operator` directly to avoid the copies.
    """
    resolved = resolve_params(operator, params or {})
    weights = list(weights) if weights is not None else [1.0] * len(experts)
    if densities is None:
        densities = [resolved.get("density", 1.0)] * len(experts)
    epsilons = (member_params or {}).get("epsilon")
    check_densities(operator, resolved, densities, epsilons)
    work = [x.detach().float().contiguous().clone() for x in experts]
    work_base = base.detach().float().contiguous().clone() if base is not None else None
    return run_operator(
        operator,
        resolved,
        work_base,
        work,
        weights,
        densities,
        tensor_name=tensor_name,
        member_params=member_params,
    )
