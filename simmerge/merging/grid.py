"""Merge candidates: an operator configuration applied to a pair of experts.

An :class:`OperatorConfig` is one arm of the search (operator + hyper-parameters); the
predictor scores (pair, config) and the collector measures them. :data:`DEFAULT_GRID` is the
grid the shipped predictor was trained on: every registered operator with a small grid of its
main hyper-parameter (20 configurations).

Merge order matters only for some configurations. :meth:`OperatorConfig.canonical` maps an
ordered pair to the one merge it is equal to, so a collector measures each distinct merge once:
order-free operators (everything but slerp) give the same tensors in either order; slerp of
(b, a) at t equals slerp of (a, b) at 1 - t. DARE/DELLA draw their random masks in member order,
so (a, b) and (b, a) are two draws of the same random merge; we treat them as one (the
measurement records which order was executed in its plan id).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simmerge.errors import NotPredictableError, OperatorParameterError
from simmerge.merging import MergePlan, PlanMember
from simmerge.merging.config import MergeConfig, same_path
from simmerge.merging.registry import OPERATORS, get_operator, resolve_params

# hyper-parameters that become numeric predictor features (NaN where an operator has none)
HYPERPARAMETERS = ("lambda", "density", "t", "gamma", "epsilon")
# the operators the predictors' one-hot columns name: fixed, so that registering an operator
# does not change the columns of predictors already shipped (a new one needs training data)
PREDICTOR_OPERATORS = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "slerp",
    "breadcrumbs",
    "della",
    "model_stock",
)
_BASE_FREE = tuple(name for name, spec in OPERATORS.items() if not spec.needs_base)


@dataclass(frozen=True)
class OperatorConfig:
    """An operator with explicit hyper-parameters; ``id`` names it in tables and CLIs."""

    operator: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, operator: str, params: Mapping[str, Any] | None = None) -> OperatorConfig:
        """Validate ``params`` against the operator's schema (typed errors on bad values)."""
        resolve_params(operator, dict(params or {}))
        return cls(operator, tuple(sorted((params or {}).items())))

    @classmethod
    def from_id(cls, config_id: str) -> OperatorConfig:
        """Inverse of :attr:`id` (``ties[density=0.5]`` or ``linear``)."""
        name, _, rest = config_id.partition("[")
        params: dict[str, Any] = {}
        if rest:
            if not rest.endswith("]"):
                raise OperatorParameterError(
                    f"Malformed candidate id {config_id!r}.",
                    "write it as operator[name=value,...], e.g. ties[density=0.5].",
                )
            for item in filter(None, rest[:-1].split(",")):
                key, eq, value = item.partition("=")
                if not eq:
                    raise OperatorParameterError(
                        f"Malformed parameter {item!r} in candidate id {config_id!r}.",
                        "write parameters as name=value.",
                    )
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    raise OperatorParameterError(
                        f"Parameter {key!r} in candidate id {config_id!r} is not a number or "
                        f"boolean: {value!r}.",
                        "write values as JSON numbers or true/false, e.g. density=0.5.",
                    ) from None
        return cls.make(name, params)

    @property
    def id(self) -> str:
        if not self.params:
            return self.operator
        inner = ",".join(f"{k}={json.dumps(v)}" for k, v in self.params)
        return f"{self.operator}[{inner}]"

    @property
    def resolved(self) -> dict[str, Any]:
        """Every parameter of the operator, defaults filled in."""
        return resolve_params(self.operator, dict(self.params))

    def hyperparameters(self) -> dict[str, float]:
        """Values of :data:`HYPERPARAMETERS` (NaN where the operator has no such parameter)."""
        resolved = self.resolved
        return {h: float(resolved[h]) if h in resolved else float("nan") for h in HYPERPARAMETERS}

    @property
    def order_free(self) -> bool:
        return self.operator != "slerp"

    def mirrored(self) -> OperatorConfig:
        """The configuration that gives the same merge with the members swapped."""
        if self.order_free:
            return self
        params = dict(self.params)
        params["t"] = round(1.0 - float(self.resolved["t"]), 10)
        return OperatorConfig.make(self.operator, params)

    def canonical(
        self, a: str, b: str, order: Mapping[str, int]
    ) -> tuple[str, str, OperatorConfig]:
        """(first, second, config) of the one merge equal to this config on (a, b), with the
        members in ``order`` (e.g. catalog order)."""
        if order[a] <= order[b]:
            return a, b, self
        return b, a, self.mirrored()

    def plan(self, base: str | None, a: str, b: str) -> MergePlan:
        """The executable 2-way plan (base dropped for operators that take none)."""
        return MergePlan(
            operator=self.operator,
            base=None if self.operator in _BASE_FREE else base,
            members=(PlanMember(model=str(a)), PlanMember(model=str(b))),
            params=dict(self.params),
        )


def _grid(operator: str, name: str | None, values: tuple[Any, ...], **fixed: Any):
    if name is None:
        return [OperatorConfig.make(operator, fixed)]
    return [OperatorConfig.make(operator, {**fixed, name: v}) for v in values]


DEFAULT_GRID: tuple[OperatorConfig, ...] = tuple(
    [
        *_grid("linear", None, ()),
        *_grid("task_arithmetic", "lambda", (0.5, 0.7, 0.85, 1.0)),
        *_grid("ties", "density", (0.2, 0.5, 0.8)),
        *_grid("dare_linear", "density", (0.3, 0.6)),
        *_grid("dare_ties", "density", (0.3, 0.6)),
        *_grid("slerp", "t", (0.3, 0.5, 0.7)),
        *_grid("breadcrumbs", "density", (0.8, 0.9), gamma=0.01),
        *_grid("della", "density", (0.5, 0.7), epsilon=0.1),
        *_grid("model_stock", None, ()),
    ]
)


MEAN = "mean of the members"


def merge_key(config: OperatorConfig, n_members: int = 2) -> str:
    """A key shared by the configurations that give the same merge of ``n_members`` equally
    weighted experts of one base, so that verifying two of them buys one measurement: the
    plain average is ``linear`` (normalized), ``task_arithmetic`` at lambda = 1/n without
    normalization (base + (1/n) sum of task vectors) and at lambda = 1 with it. Every other
    configuration is its own key (slerp at t = 0.5 is close to the average, not equal)."""
    r = config.resolved
    if config.operator == "linear" and r.get("normalize", True):
        return MEAN
    if config.operator == "task_arithmetic":
        lam = float(r["lambda"])
        if (r.get("normalize") and abs(lam - 1.0) < 1e-9) or (
            not r.get("normalize") and abs(lam * n_members - 1.0) < 1e-9
        ):
            return MEAN
    return config.id


def distinct_merges(candidates: Sequence[str], n_members: int = 2) -> dict[str, str]:
    """For candidate ids in rank order, ``{candidate: earlier candidate}`` for each one that is
    the same merge (:func:`merge_key`) as a better-ranked one."""
    seen: dict[str, str] = {}
    same: dict[str, str] = {}
    for cand in candidates:
        key = merge_key(OperatorConfig.from_id(cand), n_members)
        if key in seen:
            same[cand] = seen[key]
        else:
            seen[key] = cand
    return same


def grid_from_ids(ids: list[str] | None) -> tuple[OperatorConfig, ...]:
    """Parse a user's list of candidate ids (``None``: the default grid)."""
    if not ids:
        return DEFAULT_GRID
    out = tuple(OperatorConfig.from_id(i) for i in ids)
    for config in out:
        get_operator(config.operator)
    return out


_NOT_PREDICTABLE_FIX = (
    "merge and evaluate it instead (`simmerge merge`, `simmerge eval`); predictions cover "
    "uniform merges of the two experts by the predictor's operators."
)


def candidate_from_config(
    config: MergeConfig, base: str, a: str, b: str, grid: Sequence[OperatorConfig] = ()
) -> OperatorConfig:
    """The candidate of the search space that a user's mergekit config is, on the pair (a, b).

    The predictor scores (pair, candidate) rows, so a config is predictable only when it is one
    uniform merge of exactly those two experts with equal weights, by an operator the
    predictor has features for. Equal weights fold into the candidate: operators that
    normalize ignore them, and the task-vector operators without normalization scale the
    merged task vector by them, which is ``lambda``. Anything else raises
    :class:`~simmerge.errors.NotPredictableError` saying why. A config equal to a ``grid``
    entry (same resolved parameters) returns that entry, so it is ranked once.
    """
    reasons = config.non_uniform_reasons()
    if reasons:
        raise NotPredictableError("; ".join(reasons) + ".", _NOT_PREDICTABLE_FIX)
    if config.operator not in PREDICTOR_OPERATORS:
        raise NotPredictableError(
            f"the predictor was not trained on operator {config.operator!r}.", _NOT_PREDICTABLE_FIX
        )
    plan = MergePlan.from_config(config)
    paths = [m.model for m in plan.members]
    if len(paths) != 2 or not (
        (same_path(paths[0], a) and same_path(paths[1], b))
        or (same_path(paths[0], b) and same_path(paths[1], a))
    ):
        raise NotPredictableError(
            f"it merges {', '.join(paths)}, not the two experts ranked ({a}, {b}).",
            _NOT_PREDICTABLE_FIX,
        )
    if plan.base is not None and not same_path(plan.base, base):
        raise NotPredictableError(
            f"its base_model {plan.base} is not the catalog's base.", _NOT_PREDICTABLE_FIX
        )
    spec = get_operator(plan.operator)
    params = {k: v for k, v in plan.params.items() if k != "seed"}
    densities = set(plan.member_densities())
    if len(densities) > 1:
        raise NotPredictableError("its models have different densities.", _NOT_PREDICTABLE_FIX)
    if "density" in params:
        params["density"] = densities.pop()
    weights = {m.weight for m in plan.members}
    if len(weights) > 1:
        raise NotPredictableError("its models have different weights.", _NOT_PREDICTABLE_FIX)
    w = weights.pop()
    if spec.uses_weights and w != 1.0 and not params.get("normalize", False):
        if "lambda" not in params:
            raise NotPredictableError(
                f"weights of {w:g} without normalization scale the merge.", _NOT_PREDICTABLE_FIX
            )
        params["lambda"] = params["lambda"] * w
    # named like the grid's candidates: only the parameters that differ from the defaults
    params = {k: v for k, v in params.items() if v != spec.param(k).default}
    candidate = OperatorConfig.make(plan.operator, params)
    if plan.operator == "slerp" and same_path(paths[0], b):
        candidate = candidate.mirrored()
    for known in grid:
        if known.operator == candidate.operator and known.resolved == candidate.resolved:
            return known
    return candidate
