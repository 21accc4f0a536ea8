"""The learned multi-way plan model: corrects the compounded 2-way prediction of a plan.

Why it exists. :func:`simmerge.multiway.search.plan_merge` first scores a plan *analytically*: the
kept fraction of each task is a product of 2-way predictions, one per merge step the task's
expert goes through (see :mod:`simmerge.multiway.search`). That product is a modelling guess -- a
running merge is not an expert, and interference does not simply multiply -- and measured on
the tiny zoo it was over-optimistic (predicted 0.76, measured 0.50) and barely better than
random at choosing plans. The plan model learns the correction from measured multi-way
outcomes (``scripts/evaluate_multiway.py --data-out``, which merges and evaluates every plan of
a bounded space) of *another* catalog, so its figures are always on models it never saw.

One row is (plan, target task t). The row's *holder* is the member with t whose analytic
product of step predictions is highest (the one the merge most likely keeps t from). A task no
member has gets a row too (``holders`` 0, no step predictions, every step counted): the base
model's skill on it partly survives a merge, and the analytic score, which counts it as 0,
cannot say how much. Its columns (:func:`plan_columns`):

* ``analytic``: the analytic kept fraction of t (the plan scorer's own estimate);
* ``step_min`` / ``step_mean``: the clipped 2-way predictions p(holder, o, c_o, t) over the
  other members o, c_o being the operator of the step where o and the holder meet (NaN
  without a holder);
* ``n_members``, ``oneshot``, ``holders`` (members that have t) and ``passes`` (merge steps the
  holder's weights go through: 1 for a one-shot merge, ``n - max(i, 1)`` for chain position i);
* the operators of those steps: ``op_<name>`` fractions and ``hp_<name>`` means (NaN if none);
* ``others_skill``: the mean single-model skill on t of the members that do not have t (all
  members for a task nobody has; NaN when every member has t or skills are not given), from
  simmerge.evaluation.skills -- one evaluation per (member, target task), no merge. What a merge
  keeps of a task left to non-experts is mostly their own skill on it, which varies from one
  catalog to the next; without this column the model could only learn an average of it from
  its training catalogs (leave one zoo out over five zoos: gap closure 0.31 with it, 0.21
  without; on two zoos held out while it was chosen, with three training zoos, it did not help;
  ``scripts/explore_plan_model_variants.py``, docs/results/multiway.md).

No similarity features: they reach the model only through the 2-way predictions. Training
tables also record :func:`analysis_columns` -- the mean over the other members of a few general
pair features (``sim_*``) and of t's functional features (``task_sim_*``) -- for analysis; with
them, or without the step predictions or the analytic score, the model chose plans no better
(within noise) on zoos it did not see (``scripts/explore_plan_model_variants.py``,
docs/results/multiway.md), so the smaller set is used.

Target: the measured normalized score of the plan on t (score / the best expert's score on t).
The model is a :class:`~simmerge.learn.predictor.MergePredictor` seed ensemble on these columns (no
level/deviation split: plans are not grouped by pair), saved and loaded the same way, its card
checked against :func:`plan_columns`. Its card lists the operator configurations it was trained
on (``operators``); with a plan model, ``plan_merge`` searches only those, since a tree model
says nothing trustworthy about an operator it never saw (train on a wider ``--grid`` of
``scripts/evaluate_multiway.py`` to plan with more). For the same reason it plans with at most
as many experts as its largest training plan (``max_members``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simmerge.learn.predictor import MergePredictor
from simmerge.merging.grid import HYPERPARAMETERS, PREDICTOR_OPERATORS, OperatorConfig

# analysis columns of the training tables (not model inputs, see the module docs): a few general
# pair features and task functional features, averaged over the other members
SIMILARITY_KEYS = ("js_mean", "top1_agreement", "cka_mean", "cos_all", "sign_conflict_d20_all")
TASK_SIMILARITY_KEYS = ("js_mean", "top1_agreement", "kl_p90")
SKILL_COLUMN = "others_skill"  # the members' single-model skill (module docs)
# Leaves of at least 200 rows: the rows come from a handful of catalogs (the tiny zoos), and a
# leaf that averages over several of them should learn what transfers to a catalog not among
# them rather than one zoo's quirks. Chosen on three zoos; on two zoos built afterwards it was
# no worse than LightGBM's default of 20, and with four training zoos the two are within the
# training seed's spread (scripts/explore_plan_model_variants.py; docs/results/multiway.md)
PLAN_PARAMS = {"min_data_in_leaf": 200}
TARGET = "normalized score of the plan on the task (score / the task's best expert score)"


def plan_columns() -> tuple[str, ...]:
    """Input columns of the plan model, in order (see the module docs)."""
    return (
        "analytic",
        "step_min",
        "step_mean",
        "n_members",
        "oneshot",
        "holders",
        "passes",
        *(f"op_{name}" for name in PREDICTOR_OPERATORS),
        *(f"hp_{h}" for h in HYPERPARAMETERS),
        SKILL_COLUMN,
    )


def analysis_columns() -> tuple[str, ...]:
    """Similarity columns recorded in training tables for analysis only (module docs)."""
    return (
        *(f"sim_{k}" for k in SIMILARITY_KEYS),
        *(f"task_sim_{k}" for k in TASK_SIMILARITY_KEYS),
    )


@dataclass
class PlanModel(MergePredictor):
    """A :class:`~simmerge.learn.predictor.MergePredictor` on :func:`plan_columns` (one row per
    plan and task; see the module docs)."""

    decompose: bool = False
    columns: tuple[str, ...] = field(default_factory=plan_columns)
    n_models: int = 5
    num_boost_round: int = 200

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {**super().default_params(), **PLAN_PARAMS}

    @classmethod
    def expected_columns(cls) -> tuple[str, ...]:
        return plan_columns()

    @classmethod
    def target_description(cls) -> str:
        return TARGET

    @classmethod
    def domain_columns(cls) -> tuple[str, ...]:
        return plan_columns()

    @property
    def operators(self) -> tuple[str, ...] | None:
        """The operator configurations the model was trained on (None: not recorded)."""
        ops = self.card_.get("operators")
        return tuple(ops) if ops else None

    @property
    def needs_skills(self) -> bool:
        """Whether the model reads single-model skills (:mod:`simmerge.evaluation.skills`)."""
        return SKILL_COLUMN in self.columns

    @property
    def step_predictor(self) -> str | None:
        """The shipped 2-way predictor (a ``models/<name>``) whose step predictions the model
        was trained on, or None when not recorded. Its inputs must come from that predictor:
        another one's predictions are another distribution, so ``plan_merge`` uses this one
        unless told otherwise."""
        return self.card_.get("step_predictor") or None

    @property
    def max_members(self) -> int | None:
        """The most experts of a plan the model was trained on (None: not recorded)."""
        n = self.card_.get("max_members")
        return int(n) if n else None


# (s, o, operator id, t) -> (clipped 2-way prediction of s's task t when o joins, variance)
StepTable = Mapping[tuple[str, str, str, str], tuple[float, float]]
PairFeatures = Callable[[str, str], tuple[Mapping[str, float], Mapping[str, Any]]]


def _join_step(position: int) -> int:
    """The chain step at which the member at ``position`` joins (the first two: step 0)."""
    return max(position, 1) - 1


def _meeting_ops(members: Sequence[str], steps: Sequence[str], oneshot: bool, h: int) -> list[str]:
    """For each member but the one at position ``h``: the operator of the step where it and
    that member first meet in the merge."""
    if oneshot:
        return [steps[0]] * (len(members) - 1)
    return [steps[max(_join_step(i), _join_step(h))] for i in range(len(members)) if i != h]


def _step_predictions(
    members: Sequence[str], steps: Sequence[str], oneshot: bool, h: int, t: str, table: StepTable
) -> list[float]:
    """p(member h, o, c_o, t) for every other member o (module docs)."""
    others = [m for i, m in enumerate(members) if i != h]
    ops = _meeting_ops(members, steps, oneshot, h)
    return [table[(members[h], o, c, t)][0] for o, c in zip(others, ops, strict=True)]


def plan_rows(
    members: Sequence[str],
    steps: Sequence[str],
    oneshot: bool,
    kept: Mapping[str, float],
    tasks: Sequence[str],
    tasks_of: Callable[[str], set[str]],
    table: StepTable,
    pair: PairFeatures | None = None,
    skills: Mapping[tuple[str, str], float] | None = None,
) -> list[tuple[str, dict[str, float]]]:
    """(task, plan model row) for every task of ``tasks`` (module docs). ``kept`` is the
    analytic kept fraction per task; ``table`` must hold every (member, other member, step
    operator, task) the plan uses; ``skills`` maps (model, task) to its normalized
    single-model score (:func:`simmerge.evaluation.skills.measure_skills`; None: ``others_skill`` is
    NaN). With ``pair(a, b)`` (the general and per-task features of an ordered pair) the rows
    also hold :func:`analysis_columns`."""
    out = []
    n = len(members)
    for t in tasks:
        holders = [i for i, m in enumerate(members) if t in tasks_of(m)]
        if holders:
            # the holder the merge most likely keeps t from (first one on ties)
            h, preds = max(
                ((h, _step_predictions(members, steps, oneshot, h, t, table)) for h in holders),
                key=lambda x: float(np.prod(x[1])),
            )
            passed = [steps[0]] if oneshot else list(steps[_join_step(h) :])
            pairs = [(members[h], o) for i, o in enumerate(members) if i != h]
        else:  # nobody has t: what is left of the base's skill, after every step
            preds, passed = [], list(steps)
            pairs = [(a, b) for a in members for b in members if a != b]
        configs = [OperatorConfig.from_id(c) for c in passed]
        row: dict[str, float] = {
            "analytic": float(kept.get(t, 0.0)),
            "step_min": float(min(preds)) if preds else math.nan,
            "step_mean": float(np.mean(preds)) if preds else math.nan,
            "n_members": float(n),
            "oneshot": float(oneshot),
            "holders": float(len(holders)),
            "passes": float(len(passed)),
        }
        for name in PREDICTOR_OPERATORS:
            row[f"op_{name}"] = sum(c.operator == name for c in configs) / len(configs)
        for hp in HYPERPARAMETERS:
            values = [c.hyperparameters()[hp] for c in configs]
            values = [v for v in values if not math.isnan(v)]
            row[f"hp_{hp}"] = float(np.mean(values)) if values else math.nan
        others = [m for m in members if t not in tasks_of(m)]
        row[SKILL_COLUMN] = _nanmean([(skills or {}).get((m, t), math.nan) for m in others])
        if pair is not None:
            row.update(_similarity(pairs, t, pair))
        out.append((t, row))
    return out


def _similarity(pairs: Sequence[tuple[str, str]], t: str, pair: PairFeatures) -> dict[str, float]:
    """The :func:`analysis_columns` of one row: similarity means over ``pairs``."""
    feats = [pair(a, b) for a, b in pairs]
    out = {f"sim_{k}": _nanmean([f[0][k] for f in feats]) for k in SIMILARITY_KEYS}
    task_feats = [f[1].get(t) for f in feats]
    for k in TASK_SIMILARITY_KEYS:
        out[f"task_sim_{k}"] = _nanmean([f[k] for f in task_feats if f is not None])
    return out


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there are none): features missing for one pair
    (a task without probes) must not blank the whole average."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


DEFAULT_PLAN_MODEL = "multiway"


def load_plan_model(plan_model: PlanModel | str | Path | bool | None) -> PlanModel | None:
    """A plan model object, a saved folder, a shipped name (``models/<name>``), ``None`` for
    the shipped default, or ``False`` / ``"none"`` (the CLIs' spelling) for no plan model:
    plans ranked by the analytic score alone."""
    from simmerge.infra.resources import data_dir

    if plan_model is False or plan_model == "none":
        return None
    if isinstance(plan_model, PlanModel):
        return plan_model
    name = DEFAULT_PLAN_MODEL if plan_model is None or plan_model is True else plan_model
    path = Path(name)
    if not (path / "card.json").is_file():
        path = data_dir("models") / str(name)
    return PlanModel.load(path)
