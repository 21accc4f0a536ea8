"""The merge engine: operators, their registry, plans and the streaming executor."""

from simmerge.merge.engine import merge
from simmerge.merge.plan import MergePlan, PlanMember
from simmerge.merge.registry import OPERATOR_NAMES, OPERATORS, apply_operator, resolve_params

__all__ = [
    "OPERATORS",
    "OPERATOR_NAMES",
    "MergePlan",
    "PlanMember",
    "apply_operator",
    "merge",
    "resolve_params",
]
