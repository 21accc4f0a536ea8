"""The merge engine: operators, their registry, plans and the streaming executor."""

from simmerge.merging.config import MergeConfig, load_config
from simmerge.merging.engine import merge
from simmerge.merging.plan import MergePlan, PlanMember
from simmerge.merging.registry import OPERATOR_NAMES, OPERATORS, apply_operator, resolve_params

__all__ = [
    "MergeConfig",
    "OPERATORS",
    "OPERATOR_NAMES",
    "MergePlan",
    "PlanMember",
    "apply_operator",
    "load_config",
    "merge",
    "resolve_params",
]
