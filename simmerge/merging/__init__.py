"""The merge engine: operators, their registry, plans and the streaming executor."""

from simmerge.merging.engine import merge
from simmerge.merging.plan import MergePlan, PlanMember
from simmerge.merging.registry import OPERATOR_NAMES, OPERATORS, apply_operator, resolve_params

__all__ = [
    "OPERATORS",
    "OPERATOR_NAMES",
    "MergePlan",
    "PlanMember",
    "apply_operator",
    "merge",
    "resolve_params",
]
