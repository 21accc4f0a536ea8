"""Online selection with the state in one file: what ``simmerge bandit`` runs.

``open_state`` creates the state on first use (arms: the default candidate grid; context
scaling fitted on the shipped training data); ``select_for_pair`` records the choice as pending
with its request, so ``verified_reward`` can really merge and evaluate it later, in another
process, and feed the measured reward back (normalized score averaged over the request's
tasks, capped at 1). Every command holds an exclusive lock (``state_lock``) on ``STATE.lock``
while it loads the state, changes it and saves it atomically, so two commands on one state
never lose each other's changes (a long verified update makes a concurrent select wait).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simmerge.errors import BanditStateError
from simmerge.merging.grid import DEFAULT_GRID, OperatorConfig
from simmerge.online.bandit import ArmContext, Choice, MergeBandit, Scaler, prior_sd_of


@contextlib.contextmanager
def state_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<state>.lock`` (POSIX ``flock``; released if the process
    dies)."""
    import fcntl

    from simmerge.infra.files import ensure_writable_dir

    ensure_writable_dir(path.parent, "bandit state")
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_scaler() -> Scaler:
    """Context scaling from the shipped training data (pair features, targets)."""
    import pandas as pd

    from simmerge.learn.datasets import load_training_tables, shipped_datasets

    feats, targets = [], []
    for name in shipped_datasets():
        f, o = load_training_tables(name)
        feats.append(f[f["task"] == ""])
        targets.append(o["normalized"])
    if not feats:
        return MergeBandit().scaler
    return Scaler.fit(pd.concat(feats), pd.concat(targets).to_numpy())


def open_state(path: Path, policy: str | None, seed: int) -> MergeBandit:
    if path.is_file():
        bandit = MergeBandit.load(path)
        if policy and policy != bandit.policy:
            raise BanditStateError(
                f"State {str(path)!r} uses policy {bandit.policy!r}, not {policy!r}.",
                "drop --policy or start a new state file.",
            )
        return bandit
    return MergeBandit(
        arms=tuple(c.id for c in DEFAULT_GRID),
        policy=policy or "lints",
        seed=seed,
        scaler=default_scaler(),
    )


def select_for_pair(
    bandit: MergeBandit,
    catalog_path: str,
    models: list[str],
    tasks: list[str] | None,
    *,
    predictor: str | None = None,
    options: Any = None,
) -> Choice:
    """The bandit's choice for merging ``models`` of the catalog (priors from the predictor)."""
    from simmerge.catalog import Catalog
    from simmerge.pairwise.rank import pair_inputs, rank_merges

    catalog = Catalog.load(catalog_path)
    inputs = pair_inputs(catalog, models, tasks, options=options)
    grid = [OperatorConfig.from_id(a) for a in bandit.active_arms]
    ranked = rank_merges(
        catalog,
        models,
        top=None,
        predictor=predictor,
        grid=grid,
        contributions=0,
        inputs=inputs,
    )
    request = {
        "catalog": str(Path(catalog_path).resolve()),
        "models": list(models),
        "tasks": list(inputs.tasks),
    }
    return bandit.select(
        [
            ArmContext(
                c.candidate,
                inputs.general,
                c.predicted,
                prior_sd_of(c.interval, c.in_distribution, c.interval_level),
            )
            for c in ranked
        ],
        request,
    )


def verified_reward(choice: Choice, store: str | None, device: str | None) -> float:
    """Merge and evaluate a pending choice; its reward (mean normalized score, capped at 1)."""
    from simmerge.catalog import Catalog
    from simmerge.pairwise.rank import RankedCandidate
    from simmerge.pairwise.verify import verify

    req = choice.request
    if (
        not req
        or not {"catalog", "models", "tasks"} <= set(req)
        or not isinstance(req["catalog"], str)
        or not (isinstance(req["models"], list) and len(req["models"]) == 2)
        or not all(isinstance(m, str) for m in req["models"])
        or not (isinstance(req["tasks"], list) and all(isinstance(t, str) for t in req["tasks"]))
    ):
        raise BanditStateError(
            f"Choice {choice.id} has no usable recorded request (catalog, two models, tasks) "
            "to verify.",
            "pass --reward R with the measured reward instead.",
        )
    catalog = Catalog.load(req["catalog"])
    a, b = (catalog.model(n) for n in req["models"])
    config = OperatorConfig.from_id(choice.arm)
    cand = RankedCandidate(
        rank=1,
        models=(a.name, b.name),
        candidate=choice.arm,
        plan_id=config.plan(str(catalog.base.path), str(a.path), str(b.path)).plan_id,
        tasks=tuple(req["tasks"]),
        predicted=choice.prior,
        uncertainty=choice.sd,
        per_task={},
        top_features=(),
    )
    report = verify(catalog, [cand], k=1, store=store, device=device)
    return min(report.best.actual, 1.0)
