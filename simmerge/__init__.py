"""simmerge: predict which model merge to make from similarity signals.

The public API, in the order of the data flow (README "Python API" walks through it):

========================  =============================================================
``Catalog``               load and validate a catalog (base + experts + tasks)
``merge``                 run a :class:`MergePlan` with the streaming merge engine
``compute_signature``     one probe pass: a model's cached next-token/activation signature
``pair_features``         similarity features of two experts' profiles
``MergePredictor``        the LightGBM predictor (``fit``/``predict``/``save``/``load``)
``rank_merges``           rank the candidate merges of two experts, no merge run
``plan_merge``            multi-way plans (subset, order, operators) for a task set
``verify``                really merge and evaluate the top k, record the outcomes
``MergeBandit``           online selection that learns from every verified outcome
``scan``                  a whole catalog: features, ranking, report (local or Ray)
``MergePlan``             a merge: operator, parameters, members (mergekit YAML in/out)
``OutcomeStore``          measured merge outcomes (SQLite, append-only)
``build_zoo``             the embedded default catalog: tiny models on synthetic tasks
========================  =============================================================

Names are imported on first use, so ``import simmerge`` stays cheap (no torch, no LightGBM).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Catalog": "simmerge.catalog",
    "merge": "simmerge.merging",
    "MergePlan": "simmerge.merging",
    "compute_signature": "simmerge.signals.signatures",
    "pair_features": "simmerge.signals.similarity",
    "MergePredictor": "simmerge.learn.predictor",
    "rank_merges": "simmerge.pairwise.rank",
    "plan_merge": "simmerge.multiway.search",
    "verify": "simmerge.pairwise.verify",
    "MergeBandit": "simmerge.online.bandit",
    "scan": "simmerge.scanning.pipeline",
    "OutcomeStore": "simmerge.outcomes.store",
    "build_zoo": "simmerge.zoo",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'simmerge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
