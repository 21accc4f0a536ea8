"""Multi-way merges: which experts, in which order, with which operator at each step.

A :class:`MultiwayPlan` is either a **chain** of 2-way merges (members in order; step i merges
the running result with member i + 1 using ``steps[i]``) or a **one-shot** N-way merge (one
operator over all members at once). :func:`execute_plan` runs it with the merge engine (chain
intermediates go to a temporary folder), :func:`mergekit_configs` exports it (one config for
a one-shot merge, a chain of configs -- each reading the previous step's output -- otherwise),
and :func:`simmerge.multiway.verify.verify_plans` merges and evaluates the top k.

:func:`plan_merge` searches plans for a set of target tasks with the 2-way predictor, as the
SimMerge paper does: chains grow step by step, each step scored by the predictor on features
between the running merge and the next expert -- every chain in ``fast`` mode where there are
few enough, a beam search otherwise; one-shot candidates are ranked alongside.

**How a chain is scored.** The predictor predicts, for a pair (A, B), task t and candidate c,
the normalized score of the merge on t when A or B is t's expert. For a running merge M that
keeps a fraction r_M(t) of t's expert, the step's prediction p(M, e, c, t) is taken as the
fraction of *that* kept, so r_{M+e}(t) = r_M(t) · p(M, e, c, t); a task e has starts from
r = 1 (a fresh expert of it joins), and tasks nobody covers score 0. The plan's predicted
score is the mean of r over the target tasks. Two ways to get the features of (M, e):

* ``exact``: materialize M (one 2-way merge of its parent's folder and its newest member, into
  a temporary folder), compute its signatures and sketch (one probe pass per kept
  intermediate), and compute real pair features;
* ``fast``: no merge at all; the features of (M, e) are the mean of the features of (s, e) over
  the members s of M (task-specific features: over the members that have them). Similarity to
  a merge is roughly the average similarity to its parts; ``scripts/evaluate_multiway.py``
  measures what this approximation costs.

**One-shot plans** (an N-way operator over a subset S) are scored with the same predictor:
for each task t of a member s, r(t) = Π over the other members o of p(s, o, c, t) -- each other
member interferes once, as in a chain -- taking the best member where several have t, again
averaged over the target tasks. Step predictions are clipped to [0, 1] before they compound;
a plan's uncertainty is the root mean predictive variance of the prediction rows it used.
Plans are canonical: a chain's first two members are in catalog order (its first step is
symmetric, or mirrored for slerp), so each distinct merge is scored once.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from simmerge.catalog import Catalog
from simmerge.errors import ConfigError, PlanError
from simmerge.evaluation.skills import Skills
from simmerge.learn.domain import pair_verdict
from simmerge.learn.plan_model import PlanModel, _nanmean, plan_rows
from simmerge.learn.predictor import MergePredictor, design_row
from simmerge.merging import MergePlan, PlanMember, merge
from simmerge.merging.grid import DEFAULT_GRID, OperatorConfig
from simmerge.merging.registry import get_operator
from simmerge.multiway.settings import DEFAULT_MAX_MODELS, MODES
from simmerge.signals.profiles import FeatureOptions, build_profiles, catalog_probe_sets
from simmerge.signals.similarity import FEATURE_COLUMNS, functional_features, pair_features

# operators that can merge more than two models at once, for one-shot candidates
ONESHOT_GRID = tuple(
    OperatorConfig.from_id(i)
    for i in (
        "linear",
        "task_arithmetic[lambda=0.5]",
        "task_arithmetic[lambda=0.7]",
        "task_arithmetic[lambda=1.0]",
        "ties[density=0.5]",
        "dare_ties[density=0.6]",
        "model_stock",
    )
)


@dataclass(frozen=True)
class MultiwayPlan:
    """Members (expert names, in merge order) and the operator of each step (see the module
    docs); validated on creation."""

    members: tuple[str, ...]
    steps: tuple[str, ...]  # OperatorConfig ids: len(members) - 1 (chain) or 1 (one-shot)
    oneshot: bool = False

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise PlanError(
                f"A multi-way plan needs at least two members, got {self.members}.",
                "list two or more experts (a single expert needs no merge).",
            )
        dupes = sorted({m for m in self.members if self.members.count(m) > 1})
        if dupes:
            raise PlanError(f"Expert(s) listed twice in a plan: {dupes}.", "list each once.")
        want = 1 if self.oneshot else len(self.members) - 1
        if len(self.steps) != want:
            raise PlanError(
                f"A {'one-shot' if self.oneshot else 'chain'} plan of {len(self.members)} "
                f"members takes {want} operator(s), got {len(self.steps)}.",
                "give one operator per step of a chain, or exactly one for a one-shot merge.",
            )
        for step in self.steps:
            config = OperatorConfig.from_id(step)
            spec = get_operator(config.operator)
            n = len(self.members) if self.oneshot else 2
            if spec.max_members is not None and n > spec.max_members:
                raise PlanError(
                    f"{config.operator!r} merges at most {spec.max_members} models; a one-shot "
                    f"plan has {n}.",
                    "use a chain of 2-way steps or another operator.",
                )

    @property
    def id(self) -> str:
        if self.oneshot:
            return f"{self.steps[0]}({', '.join(self.members)})"
        out = self.members[0]
        for member, step in zip(self.members[1:], self.steps, strict=True):
            out = f"{step}({out}, {member})"
        return out

    @property
    def plan_id(self) -> str:
        """A short stable id for CLIs (``simmerge export``): ``mw-`` + a hash of :attr:`id`."""
        return "mw-" + hashlib.blake2b(self.id.encode(), digest_size=6).hexdigest()

    def step_plans(self, catalog: Catalog, intermediates: Sequence[str]) -> list[MergePlan]:
        """The engine's plan of every step; ``intermediates[i]`` is where step i's output
        lives (len(steps) - 1 folders for a chain, none for a one-shot merge)."""
        base = str(catalog.base.path)
        paths = [str(catalog.model(m).path) for m in self.members]
        if self.oneshot:
            config = OperatorConfig.from_id(self.steps[0])
            needs_base = get_operator(config.operator).needs_base
            return [
                MergePlan(
                    operator=config.operator,
                    base=base if needs_base else None,
                    members=tuple(PlanMember(model=p) for p in paths),
                    params=dict(config.params),
                )
            ]
        plans, running = [], paths[0]
        for i, (step, path) in enumerate(zip(self.steps, paths[1:], strict=True)):
            plans.append(OperatorConfig.from_id(step).plan(base, running, path))
            if i < len(intermediates):
                running = str(intermediates[i])
        return plans


def canonical_plan(plan: MultiwayPlan, order: dict[str, int]) -> MultiwayPlan:
    """The one plan equal to ``plan`` with its first two members in ``order`` (e.g. catalog
    order): the first step of a chain merges two experts, and op(b, a) equals op(a, b) for
    order-free operators (slerp: at t -> 1 - t). One-shot plans list members in that order."""
    if plan.oneshot:
        return MultiwayPlan(tuple(sorted(plan.members, key=order.__getitem__)), plan.steps, True)
    a, b = plan.members[:2]
    first, second, config = OperatorConfig.from_id(plan.steps[0]).canonical(a, b, order)
    return MultiwayPlan((first, second, *plan.members[2:]), (config.id, *plan.steps[1:]))


def execute_plan(
    plan: MultiwayPlan,
    catalog: Catalog,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | Path:
    """Run ``plan``: a state dict without ``out_dir``, else a Hugging Face folder. Chain
    intermediates live in a temporary folder removed afterwards."""
    n_inter = 0 if plan.oneshot else len(plan.steps) - 1
    with tempfile.TemporaryDirectory(prefix="simmerge-chain-") as tmp:
        inter = [Path(tmp) / f"step_{i + 1}" for i in range(n_inter)]
        plans = plan.step_plans(catalog, [str(p) for p in inter])
        for step_plan, folder in zip(plans[:-1], inter, strict=True):
            merge(step_plan, folder, device=device)
        return merge(plans[-1], out_dir, device=device, overwrite=overwrite)


def mergekit_configs(plan: MultiwayPlan, catalog: Catalog, prefix: str = "step") -> list[dict]:
    """mergekit configs that reproduce ``plan``: one for a one-shot merge; for a chain, one per
    step, step i reading ``<prefix>_<i>`` (the folder step i - 1 was written to)."""
    n_inter = 0 if plan.oneshot else len(plan.steps) - 1
    inter = [f"{prefix}_{i + 1}" for i in range(n_inter)]
    return [p.to_mergekit_dict(include_simmerge=False) for p in plan.step_plans(catalog, inter)]


@dataclass(frozen=True)
class PlannedMerge:
    """A ranked multi-way plan with its predicted score (mean over the target tasks of the
    predicted kept fraction, see the module docs) and per-task predictions."""

    rank: int
    plan: MultiwayPlan
    predicted: float
    per_task: dict[str, float]
    mode: str
    uncertainty: float = 0.0
    ranked_by: str = "analytic"  # or "plan model" (simmerge.learn.plan_model)
    # is the plan inside the plan model's training data (None: analytic, or no domain saved)
    in_distribution: bool | None = None
    domain_score: float | None = None
    domain_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "plan": self.plan.id,
            "members": list(self.plan.members),
            "steps": list(self.plan.steps),
            "oneshot": self.plan.oneshot,
            "predicted": self.predicted,
            "uncertainty": self.uncertainty,
            "per_task": self.per_task,
            "mode": self.mode,
            "ranked_by": self.ranked_by,
            "in_distribution": self.in_distribution,
            "domain_score": self.domain_score,
            "domain_threshold": self.domain_threshold,
            "plan_id": self.plan.plan_id,
        }


@dataclass
class _Beam:
    members: tuple[str, ...]
    steps: tuple[str, ...]
    kept: dict[str, float]  # task -> analytic kept fraction (what the next step compounds)
    var: float = 0.0  # summed predictive variance of the prediction rows used
    rows: int = 0  # how many rows
    learned: dict[str, float] | None = None  # the plan model's kept fractions, if one is used
    learned_unc: float = 0.0  # the plan model's ensemble spread (root mean variance)
    folder: Path | None = None  # exact mode: the materialized running merge
    profile: Any = None  # exact mode: its profile
    parent: Path | None = None  # exact mode: the folder of the chain one step shorter

    @property
    def final(self) -> dict[str, float]:
        """The kept fractions the plan is ranked by: the plan model's when there is one."""
        return self.kept if self.learned is None else self.learned

    def score(self, tasks: Sequence[str]) -> float:
        return float(np.mean([self.final.get(t, 0.0) for t in tasks]))

    def uncertainty(self) -> float:
        if self.learned is not None:
            return self.learned_unc
        return math.sqrt(self.var / max(self.rows, 1))


@dataclass
class _Planner:
    catalog: Catalog
    tasks: tuple[str, ...]
    model: MergePredictor
    grid: tuple[OperatorConfig, ...]
    options: FeatureOptions
    profiles: dict[str, Any]
    cache: dict[tuple[str, str], tuple[dict, dict]] = field(default_factory=dict)
    plan_model: PlanModel | None = None
    table: dict[tuple[str, str, str, str], tuple[float, float]] = field(default_factory=dict)
    skills: Skills | None = None  # (model, task) -> single-model skill, for the plan model
    # (members, steps, oneshot) -> the plan model's training-domain verdict on the plan's rows
    verdicts: dict[tuple, Any] = field(default_factory=dict)

    def expert_tasks(self, name: str) -> set[str]:
        return set(self.catalog.model(name).tasks)

    def pair(self, a: str, b: str) -> tuple[dict[str, float], dict[str, dict | None]]:
        """General and per-task features of (a, b), cached."""
        if (a, b) not in self.cache:
            pa, pb = self.profiles[a], self.profiles[b]
            self.cache[(a, b)] = (pair_features(pa, pb).as_dict(), self._task_feats(pa, pb))
        return self.cache[(a, b)]

    def _task_feats(self, pa: Any, pb: Any) -> dict[str, dict | None]:
        return {
            t: functional_features(pa.signatures[t], pb.signatures[t])
            if t in pa.signatures and t in pb.signatures
            else None
            for t in self.tasks
        }

    def learn(
        self, items: Sequence[tuple[tuple[str, ...], tuple[str, ...], bool, dict[str, float]]]
    ) -> list[tuple[dict[str, float], float]]:
        """The plan model's kept fraction per target task and uncertainty of each (members,
        steps, oneshot, analytic kept) item, in one batched prediction. Needs :attr:`table`
        over the items' step operators."""
        rows, index = [], []
        for i, (members, steps, oneshot, kept) in enumerate(items):
            for t, row in plan_rows(
                members,
                steps,
                oneshot,
                kept,
                self.tasks,
                self.expert_tasks,
                self.table,
                skills=self.skills,
            ):
                rows.append(row)
                index.append((i, t))
        kept_out: list[dict[str, float]] = [{} for _ in items]
        variances: list[list[float]] = [[] for _ in items]
        if rows and self.plan_model is not None:
            mean, std = self.plan_model.predict(rows, return_std=True)
            checks = self.plan_model.check_domain(rows)
            if checks:
                by_item: dict[int, list] = {}
                for (i, _), c in zip(index, checks, strict=True):
                    by_item.setdefault(i, []).append(c)
                for i, cs in by_item.items():
                    members, steps, oneshot, _ = items[i]
                    self.verdicts[(tuple(members), tuple(steps), bool(oneshot))] = pair_verdict(cs)
            for (i, t), m, sd in zip(index, np.clip(mean, 0.0, 1.0), std, strict=True):
                kept_out[i][t] = float(m)
                variances[i].append(float(sd) ** 2)
        return [
            (k, math.sqrt(float(np.mean(v))) if v else 0.0)
            for k, v in zip(kept_out, variances, strict=True)
        ]

    def fast_features(self, members: Sequence[str], e: str) -> tuple[dict, dict]:
        """Features of (merge of members, e): the mean over members (module docs)."""
        parts = [self.pair(m, e) for m in members]
        general = {c: _nanmean([p[0][c] for p in parts]) for c in FEATURE_COLUMNS}
        per_task: dict[str, dict | None] = {}
        for t in self.tasks:
            have = [p[1][t] for p in parts if p[1][t] is not None]
            per_task[t] = {c: _nanmean([h[c] for h in have]) for c in have[0]} if have else None
        return general, per_task

    def predict_step(
        self,
        beam: _Beam,
        e: str,
        general: dict,
        per_task: dict,
        configs: Sequence[OperatorConfig] | None = None,
    ) -> list[tuple[OperatorConfig, dict[str, float], float, int]]:
        """For each of ``configs`` (default: the grid): the analytic kept fractions after
        merging ``e`` into ``beam``."""
        configs = self.grid if configs is None else tuple(configs)
        covered = set().union(*(self.expert_tasks(m) for m in beam.members))
        e_tasks = self.expert_tasks(e)
        relevant = [t for t in self.tasks if t in covered or t in e_tasks]
        rows = [
            design_row(general, per_task.get(t), t in covered, t in e_tasks, c)
            for c in configs
            for t in relevant
        ]
        out = []
        if rows:
            mean, std = self.model.predict(rows, return_std=True)
            mean = np.clip(mean, 0.0, 1.0)  # a kept fraction: > 1 would compound along a chain
        for i, config in enumerate(configs):
            kept = dict(beam.kept)
            var = 0.0
            for j, t in enumerate(relevant):
                k = i * len(relevant) + j
                start = 1.0 if t in e_tasks or t not in covered else beam.kept[t]
                kept[t] = start * float(mean[k])
                var += float(std[k]) ** 2
            out.append((config, kept, var, len(relevant)))
        return out


def _relevant_experts(catalog: Catalog, tasks: Sequence[str]) -> list[str]:
    return [e.name for e in catalog.experts if set(e.tasks) & set(tasks)]


def plan_merge(
    catalog: Catalog,
    tasks: Sequence[str],
    *,
    max_models: int = DEFAULT_MAX_MODELS,
    beam: int | None = None,
    mode: str = "fast",
    top: int | None = 5,
    predictor: MergePredictor | str | Path | None = None,
    grid: Sequence[OperatorConfig] = DEFAULT_GRID,
    oneshot_grid: Sequence[OperatorConfig] = ONESHOT_GRID,
    experts: Sequence[str] | None = None,
    options: FeatureOptions | None = None,
    device: str | None = None,
    progress: bool = False,
    profiles: dict[str, Any] | None = None,
    plan_model: PlanModel | str | Path | bool | None = None,
    skills: Skills | None = None,
) -> list[PlannedMerge]:
    """Rank multi-way plans that cover ``tasks`` (see the module docs).

    Candidates are the experts that have at least one target task (or ``experts``). Chains
    grow by beam search (``beam`` states kept per depth, up to ``max_models`` members; a chain
    may stop at any depth). ``beam=None``, the default, scores *every* chain in ``fast`` mode
    while there are at most :data:`CHAIN_EXHAUSTIVE_LIMIT` of them (nothing is merged, so
    that costs predictions only; with the plan model it matters: the best chains often start
    with a prefix that scores poorly as a plan of its own, which a beam drops), and is a beam
    of :data:`DEFAULT_BEAM` otherwise and in ``exact`` mode (where, with a feasible chain
    count, the intermediates merged are the prefixes of the chains a ``fast`` pass ranks best).
    One-shot candidates are every subset of 3..max_models candidates x ``oneshot_grid``.
    ``mode`` is ``fast`` (no merges) or ``exact`` (one merge and probe pass per kept
    intermediate: ``beam`` per depth below ``max_models``). ``profiles``
    (name -> :class:`~simmerge.signals.similarity.ModelProfile`, e.g. from a scan) skips reloading
    the experts' signatures and sketches from the cache. ``plan_model`` re-scores plans with
    the learned plan model (:mod:`simmerge.learn.plan_model`; ``None``: the shipped one, ``False``:
    the analytic score alone): every chain the beam expands, and the
    :data:`ONESHOT_RESCORE` one-shot plans the analytic score ranks first; ``grid`` and
    ``oneshot_grid`` are then cut to the operators its card says it was trained on. A plan
    model that reads single-model skills (the shipped one does) gets ``skills`` ((model,
    task) -> normalized score), or they are measured: one evaluation per candidate expert and
    target task, cached (:func:`simmerge.evaluation.skills.measure_skills`; the catalog's tasks
    need eval data), never a merge. With a plan model and no ``predictor``, the steps are
    predicted by the 2-way predictor the plan model was trained on (its card's
    ``step_predictor``), not by the shipped default."""
    from simmerge.learn.loading import load_predictor
    from simmerge.learn.plan_model import load_plan_model

    if mode not in MODES:
        raise ConfigError(f"Unknown planning mode {mode!r}.", f"use one of {', '.join(MODES)}.")
    tasks = tuple(dict.fromkeys(tasks))
    known = set(catalog.task_names)
    unknown = [t for t in tasks if t not in known]
    if not tasks or unknown:
        raise ConfigError(
            f"plan_merge needs target tasks the catalog knows; unknown: {unknown or 'none given'}.",
            f"pick among: {', '.join(sorted(known))}.",
        )
    if max_models < 2 or (beam is not None and beam < 1):
        raise ConfigError(
            f"plan_merge needs max_models >= 2 and beam >= 1 (got {max_models}, {beam}).",
            "pass --max-models 2 or more and --beam 1 or more (or no beam: every chain).",
        )
    names = list(experts) if experts else _relevant_experts(catalog, tasks)
    if len(names) < 2:
        raise ConfigError(
            f"Only {len(names)} expert(s) have the target tasks {list(tasks)}: nothing to merge.",
            "add experts for these tasks to the catalog, or pick other tasks.",
        )
    options = options or FeatureOptions(device=device)
    learned = load_plan_model(plan_model)
    if predictor is None and learned is not None and learned.step_predictor is not None:
        predictor = learned.step_predictor  # the step predictions it was trained on
    model = load_predictor(predictor)
    if profiles is None or any(n not in profiles for n in names):
        profiles = build_profiles(catalog, options, experts=names, progress=progress)
    planner = _Planner(catalog, tasks, model, tuple(grid), options, profiles)
    order = {name: i for i, name in enumerate(catalog.expert_names)}
    names = sorted(names, key=order.__getitem__)
    planner.plan_model = learned
    if planner.plan_model is not None and planner.plan_model.operators is not None:
        known = set(planner.plan_model.operators)
        grid = [c for c in grid if c.id in known]
        oneshot_grid = [c for c in oneshot_grid if c.id in known]
        if not grid and not oneshot_grid:
            raise ConfigError(
                "The plan model knows none of the operators to plan with "
                f"(it was trained on {sorted(known)}).",
                "include some of those in the grid, pass plan_model=False (analytic scores), "
                "or train a plan model on your grid (scripts/evaluate_multiway.py --data-out).",
            )
        planner.grid = tuple(grid)
    cap = planner.plan_model.max_members if planner.plan_model is not None else None
    if cap is not None and max_models > cap:
        warnings.warn(
            f"The plan model was trained on plans of at most {cap} experts; planning with at "
            f"most {cap} instead of {max_models} (plan_model=False / --plan-model none plans "
            "larger merges with the analytic score).",
            UserWarning,
            stacklevel=2,
        )
        max_models = cap
    if planner.plan_model is not None:
        _check_predictor(planner.plan_model, model)
        if planner.plan_model.needs_skills:
            planner.skills = (
                skills
                if skills is not None
                else _measure_skills(catalog, names, tasks, options, progress)
            )
        configs = list({c.id: c for c in (*grid, *oneshot_grid)}.values())
        planner.table = _pairwise_table(planner, names, configs, set(tasks))
    grid_ids = {c.id for c in planner.grid}
    feasible = chain_count(len(names), max_models, len(planner.grid)) <= CHAIN_EXHAUSTIVE_LIMIT
    if beam is None:
        beam = None if mode == "fast" and feasible else DEFAULT_BEAM
    lookahead: dict[tuple, float] = {}
    if mode == "exact" and feasible and max_models > 2:
        # which intermediates to merge: the prefixes of the chains fast mode ranks best (a
        # prefix's own score says little of the chains it leads to)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same warnings as this call's own
            fast = plan_merge(
                catalog,
                tasks,
                max_models=max_models,
                mode="fast",
                top=None,
                predictor=model,
                grid=planner.grid,
                oneshot_grid=(),
                experts=names,
                options=options,
                profiles=profiles,
                plan_model=planner.plan_model or False,
                skills=planner.skills,
            )
        for p in fast:
            for k in range(2, len(p.plan.members) + 1):
                key = (p.plan.members[:k], p.plan.steps[: k - 1])
                lookahead[key] = max(lookahead.get(key, -math.inf), p.predicted)
    finished: list[_Beam] = []
    # depth 1: every candidate expert alone, keeping all of its own target tasks
    beams = [
        _Beam((m,), (), dict.fromkeys(planner.expert_tasks(m) & set(tasks), 1.0)) for m in names
    ]
    with tempfile.TemporaryDirectory(prefix="simmerge-plan-") as tmp:
        for depth in range(2, max_models + 1):
            expanded: list[_Beam] = []
            for b in beams:
                for e in names:
                    if e in b.members:
                        continue
                    general, per_task = _features(planner, b, e, mode)
                    for config, kept, var, n in planner.predict_step(b, e, general, per_task):
                        plan = MultiwayPlan((*b.members, e), (*b.steps, config.id))
                        canon = canonical_plan(plan, order)
                        if canon != plan and canon.steps[0] in grid_ids:
                            continue  # the same merge in the other order is scored too
                        expanded.append(
                            _Beam(
                                plan.members,
                                plan.steps,
                                kept,
                                b.var + var,
                                b.rows + n,
                                parent=b.folder,
                            )
                        )
            if not expanded:
                break
            if planner.plan_model is not None:
                learned = planner.learn([(b.members, b.steps, False, b.kept) for b in expanded])
                for b, (kept, unc) in zip(expanded, learned, strict=True):
                    b.learned, b.learned_unc = kept, unc
            expanded.sort(key=lambda x: -x.score(tasks))
            beams = _dedupe(expanded)[:beam]  # beam None: all
            finished.extend(beams)
            if lookahead and depth < max_models:
                ahead = sorted(
                    _dedupe(expanded),
                    key=lambda x: -lookahead.get((x.members, x.steps), -math.inf),
                )
                beams = ahead[:beam]
                finished.extend(beams)
            if mode == "exact" and depth < max_models:
                for i, b in enumerate(beams):
                    _materialize(planner, b, Path(tmp) / f"d{depth}_{i}", device)
        oneshots = _oneshot_candidates(
            planner, names, max_models, oneshot_grid, beam or DEFAULT_BEAM
        )
    if planner.plan_model is not None and oneshots:
        oneshots = sorted(oneshots, key=lambda x: -x[0])[:ONESHOT_RESCORE]
        learned = planner.learn([(x[1].members, x[1].steps, True, x[2]) for x in oneshots])
        oneshots = [
            (float(np.mean([k.get(t, 0.0) for t in tasks])), x[1], k, unc)
            for x, (k, unc) in zip(oneshots, learned, strict=True)
        ]

    ranked = sorted(
        [
            (b.score(tasks), MultiwayPlan(b.members, b.steps), b.final, b.uncertainty())
            for b in finished
        ]
        + oneshots,
        key=lambda x: -x[0],
    )
    seen: set[str] = set()
    out = []
    for score, plan, kept, unc in ranked:
        if plan.id in seen:
            continue
        seen.add(plan.id)
        verdict = planner.verdicts.get((plan.members, plan.steps, plan.oneshot))
        out.append(
            PlannedMerge(
                rank=len(out) + 1,
                plan=plan,
                predicted=score,
                per_task={t: float(kept.get(t, 0.0)) for t in tasks},
                mode=mode,
                uncertainty=unc,
                ranked_by="analytic" if planner.plan_model is None else "plan model",
                in_distribution=None if verdict is None else verdict.in_distribution,
                domain_score=None if verdict is None else verdict.score,
                domain_threshold=None if verdict is None else verdict.threshold,
            )
        )
        if top is not None and len(out) >= top:
            break
    return out


def _check_predictor(plan_model: PlanModel, predictor: MergePredictor) -> None:
    """Warn when the plan model learned from another 2-way predictor's step predictions than
    the one planning now: its inputs then come from a different distribution."""
    seen = plan_model.card_.get("predictor_hashes") or []
    mine = predictor.card_.get("training_data_hash")
    if seen and mine not in seen:
        warnings.warn(
            f"The plan model was trained on the step predictions of 2-way predictor(s) {seen}, "
            f"not of this one ({mine}); its scores may be off. Regenerate it with "
            "scripts/regenerate_plan_model.sh after changing the predictor.",
            stacklevel=3,
        )


def plan_feature_rows(
    catalog: Catalog,
    tasks: Sequence[str],
    plans: Sequence[MultiwayPlan],
    *,
    predictor: MergePredictor | str | Path | None = None,
    options: FeatureOptions | None = None,
    profiles: dict[str, Any] | None = None,
    skills: Skills | None = None,
) -> list[tuple[MultiwayPlan, str, dict[str, float]]]:
    """(plan, task, plan model row) for every plan and target task, with the analytic kept
    fractions of ``fast`` mode: the training rows of the plan model
    (``scripts/evaluate_multiway.py --data-out``) and what it sees at planning time.
    ``skills`` as in :func:`plan_merge` (measured when not given)."""
    from simmerge.learn.loading import load_predictor

    tasks = tuple(dict.fromkeys(tasks))
    names = sorted({m for p in plans for m in p.members}, key=catalog.expert_names.index)
    options = options or FeatureOptions()
    if profiles is None or any(n not in profiles for n in names):
        profiles = build_profiles(catalog, options, experts=names)
    model = load_predictor(predictor)
    configs = {s: OperatorConfig.from_id(s) for p in plans for s in p.steps}
    planner = _Planner(catalog, tasks, model, tuple(configs.values()), options, profiles)
    planner.table = _pairwise_table(planner, names, list(configs.values()), set(tasks))
    if skills is None:
        skills = _measure_skills(catalog, names, tasks, options, False)
    out = []
    for plan in plans:
        kept = _analytic_kept(planner, plan, configs)
        rows = plan_rows(
            plan.members,
            plan.steps,
            plan.oneshot,
            kept,
            tasks,
            planner.expert_tasks,
            planner.table,
            planner.pair,
            skills=skills,
        )
        out += [(plan, t, row) for t, row in rows]
    return out


def _measure_skills(
    catalog: Catalog,
    names: Sequence[str],
    tasks: Sequence[str],
    options: FeatureOptions,
    progress: bool,
) -> dict[tuple[str, str], float]:
    from simmerge.evaluation.skills import measure_skills

    return measure_skills(
        catalog,
        names,
        tasks,
        device=options.device,
        cache_dir=options.cache_dir,
        progress=progress,
    )


def _analytic_kept(
    planner: _Planner, plan: MultiwayPlan, configs: dict[str, OperatorConfig]
) -> dict[str, float]:
    """The analytic (fast mode) kept fraction per target task of one plan."""
    if plan.oneshot:
        scored = _score_oneshot(planner, planner.table, plan.members, plan.steps[0])
        return scored[2] if scored else {}
    first = plan.members[0]
    beam = _Beam((first,), (), dict.fromkeys(planner.expert_tasks(first) & set(planner.tasks), 1.0))
    for e, step in zip(plan.members[1:], plan.steps, strict=True):
        general, per_task = _features(planner, beam, e, "fast")
        ((_, kept, _, _),) = planner.predict_step(beam, e, general, per_task, [configs[step]])
        beam = _Beam((*beam.members, e), (*beam.steps, step), kept)
    return beam.kept


def _features(planner: _Planner, beam: _Beam, e: str, mode: str) -> tuple[dict, dict]:
    if len(beam.members) == 1:
        return planner.pair(beam.members[0], e)
    if mode == "exact" and beam.profile is not None:
        pe = planner.profiles[e]
        return pair_features(beam.profile, pe).as_dict(), planner._task_feats(beam.profile, pe)
    return planner.fast_features(beam.members, e)


def _materialize(planner: _Planner, beam: _Beam, folder: Path, device: str | None) -> None:
    """Exact mode: merge the beam's running model into ``folder`` -- one 2-way merge of the
    parent chain's folder and the newest expert (the whole chain at depth 2) -- and profile
    it."""
    catalog = planner.catalog
    if beam.parent is not None:
        step = OperatorConfig.from_id(beam.steps[-1])
        last = str(catalog.model(beam.members[-1]).path)
        merge(step.plan(str(catalog.base.path), str(beam.parent), last), folder, device=device)
    else:
        execute_plan(MultiwayPlan(beam.members, beam.steps), catalog, folder, device=device)
    beam.profile = _profile_folder(catalog, folder, planner.options, "+".join(beam.members))
    beam.folder = folder


def _profile_folder(catalog: Catalog, folder: Path, options: FeatureOptions, name: str) -> Any:
    from simmerge.io.checkpoint import open_checkpoint
    from simmerge.signals.profiles import model_profile

    return model_profile(
        name,
        folder,
        open_checkpoint(folder),
        catalog.checkpoint(catalog.base.name),
        catalog_probe_sets(catalog, options),
        options,
    )


def profile_plan(
    plan: MultiwayPlan,
    catalog: Catalog,
    folder: str | Path,
    options: FeatureOptions | None = None,
    *,
    device: str | None = None,
) -> Any:
    """Materialize ``plan`` into ``folder`` and compute its profile (signatures on the
    catalog's probe sets + task-vector sketch), as exact mode does for every intermediate."""
    options = options or FeatureOptions(device=device)
    folder = Path(execute_plan(plan, catalog, folder, device=device))
    return _profile_folder(catalog, folder, options, plan.id)


def _dedupe(beams: list[_Beam]) -> list[_Beam]:
    seen, out = set(), []
    for b in beams:
        key = (b.members, b.steps)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


# above this many subsets, one-shot candidates come from a beam search instead of enumeration
ONESHOT_EXHAUSTIVE_LIMIT = 20_000
# fast mode scores every chain up to this many (plan_merge's beam=None), else a beam search;
# each costs a predictor call per operator grid (about 4 ms per chain on the 2-core machine)
CHAIN_EXHAUSTIVE_LIMIT = 5_000
DEFAULT_BEAM = 4


def chain_count(experts: int, max_models: int, operators: int) -> int:
    """Chains of 2..max_models distinct experts in order, one operator per step (an upper
    bound: equal merges in both orders of the first step are scored once)."""
    return sum(math.perm(experts, k) * operators ** (k - 1) for k in range(2, max_models + 1))


# with a plan model, the one-shot plans it re-scores: the best by the analytic score
ONESHOT_RESCORE = 256


def _oneshot_candidates(
    planner: _Planner,
    names: list[str],
    max_models: int,
    grid: Sequence[OperatorConfig],
    beam: int = 4,
) -> list[tuple[float, MultiwayPlan, dict[str, float], float]]:
    """One-shot plans of 3..max_models experts x ``grid``, scored as in the module docs.

    A plan's score only combines pairwise step predictions p(s, o, c, t), so all of them are
    predicted once (one batch over every ordered pair, operator and task) and subsets are
    scored from that table. Every subset is scored while there are at most
    :data:`ONESHOT_EXHAUSTIVE_LIMIT` of them; beyond that (large catalogs) subsets grow by
    beam search from the ``4 * beam`` best pairs, ``4 * beam`` kept per operator and size, so
    the work is O(N² + max_models * beam * N) scores per operator."""
    tasks = set(planner.tasks)
    table = planner.table or _pairwise_table(planner, names, grid, tasks)
    if not table:
        return []
    sizes = range(3, max_models + 1)
    if sum(math.comb(len(names), k) for k in sizes) <= ONESHOT_EXHAUSTIVE_LIMIT:
        subsets = [c for k in sizes for c in combinations(names, k)]
        scored = [_score_oneshot(planner, table, sub, c.id) for sub in subsets for c in grid]
    else:
        position = {n: i for i, n in enumerate(names)}
        scored = []
        for config in grid:
            pairs = [_score_oneshot(planner, table, p, config.id) for p in combinations(names, 2)]
            pairs = sorted((x for x in pairs if x is not None), key=lambda x: -x[0])
            level = [x[1].members for x in pairs[: 4 * beam]]  # seeds: the best pairs
            for _ in sizes:
                grown = {
                    tuple(sorted((*sub, e), key=position.__getitem__))
                    for sub in level
                    for e in names
                    if e not in sub
                }
                found = [_score_oneshot(planner, table, g, config.id) for g in sorted(grown)]
                kept = sorted((x for x in found if x is not None), key=lambda x: -x[0])[: 4 * beam]
                scored += kept
                level = [x[1].members for x in kept]
    return [x for x in scored if x is not None]


def _pairwise_table(
    planner: _Planner, names: list[str], grid: Sequence[OperatorConfig], tasks: set[str]
) -> dict[tuple[str, str, str, str], tuple[float, float]]:
    """(s, o, config id, t) -> (clipped predicted kept fraction of s's task t when o joins,
    predictive variance), for every ordered pair of ``names``, in one batched prediction."""
    rows, index = [], []
    for s in names:
        own = sorted(planner.expert_tasks(s) & tasks)
        for o in names:
            if o == s or not own:
                continue
            general, per_task = planner.pair(s, o)
            o_tasks = planner.expert_tasks(o)
            for config in grid:
                for t in own:
                    rows.append(design_row(general, per_task[t], True, t in o_tasks, config))
                    index.append((s, o, config.id, t))
    if not rows:
        return {}
    mean, std = planner.model.predict(rows, return_std=True)
    return {
        key: (float(m), float(sd) ** 2)
        for key, m, sd in zip(index, np.clip(mean, 0.0, 1.0), std, strict=True)
    }


def _score_oneshot(
    planner: _Planner, table: dict, subset: tuple[str, ...], cid: str
) -> tuple[float, MultiwayPlan, dict[str, float], float] | None:
    """(predicted score, plan, kept fraction per task, uncertainty) of one one-shot plan; None
    when no member has a target task."""
    kept: dict[str, float] = {}
    variances: list[float] = []
    for s in subset:
        for t in sorted(planner.expert_tasks(s) & set(planner.tasks)):
            r = 1.0
            for o in subset:
                if o != s:
                    m, var = table[(s, o, cid, t)]
                    r *= m
                    variances.append(var)
            kept[t] = max(kept.get(t, 0.0), r)  # a task two members share: the better of them
    if not kept:
        return None
    score = float(np.mean([kept.get(t, 0.0) for t in planner.tasks]))
    unc = math.sqrt(float(np.mean(variances))) if variances else 0.0
    return score, MultiwayPlan(subset, (cid,), oneshot=True), kept, unc
