"""``simmerge bandit``: online selection from the command line, with the state in one file.

    simmerge bandit select CATALOG --models a,b --state STATE [--json]
    simmerge bandit update --state STATE --choice ID (--reward R | --verify [--store S])
    simmerge bandit add-arm --state STATE ID    /    remove-arm --state STATE ID

``select`` creates the state on first use (arms: the default candidate grid; context scaling
fitted on the shipped training data) and records the choice as pending with its request, so
``update --verify`` can really merge and evaluate it later, in another process, and feed the
measured reward back (normalized score averaged over the request's tasks, capped at 1).
Every command holds an exclusive lock on ``STATE.lock`` while it loads the state, changes it
and saves it atomically, so two commands on one state never lose each other's changes (a
long ``update --verify`` makes a concurrent ``select`` wait).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simmerge.bandit import ArmContext, BanditStateError, Choice, MergeBandit, Scaler
from simmerge.candidates import DEFAULT_GRID, OperatorConfig


@contextlib.contextmanager
def state_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<state>.lock`` (POSIX ``flock``; released if the process
    dies)."""
    import fcntl

    from simmerge.io_utils import ensure_writable_dir

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

    from simmerge.training_data import load_training_tables, shipped_datasets

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
    from simmerge.ranking import pair_inputs, rank_merges

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
        [ArmContext(c.candidate, inputs.general, c.predicted) for c in ranked], request
    )


def verified_reward(choice: Choice, store: str | None, device: str | None) -> float:
    """Merge and evaluate a pending choice; its reward (mean normalized score, capped at 1)."""
    from simmerge.catalog import Catalog
    from simmerge.ranking import Candidate
    from simmerge.verification import verify

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
    cand = Candidate(
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


def run_bandit_cli(args: Any) -> int:
    path = Path(args.state)
    with state_lock(path):
        return _run_locked(args, path)


def _run_locked(args: Any, path: Path) -> int:
    from simmerge.feature_table import FeatureOptions

    if args.bandit_command == "select":
        bandit = open_state(path, args.policy, args.seed)
        choice = select_for_pair(
            bandit,
            args.catalog,
            args.models.split(","),
            args.tasks.split(",") if args.tasks else None,
            predictor=args.predictor,
            options=FeatureOptions(device=args.device, cache_dir=args.cache_dir),
        )
        bandit.save(path)
        out = choice.to_dict()
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            print(
                f"choice {choice.id}: {choice.arm} (predictor {choice.prior:.3f}, bandit "
                f"{choice.mean:.3f} ± {choice.sd:.3f}); report its reward with "
                f"`simmerge bandit update --state {path} --choice {choice.id} --reward R` "
                f"or --verify"
            )
        return 0
    bandit = MergeBandit.load(path)
    if args.bandit_command == "update":
        if (args.reward is None) == (not args.verify):
            raise BanditStateError(
                "update needs exactly one of --reward R and --verify.",
                "pass the measured reward, or --verify to merge and evaluate the choice.",
            )
        pending = {c.id: c for c in bandit.pending}
        if args.choice not in pending:
            raise BanditStateError(
                f"Choice {args.choice} is not pending in {str(path)!r}.",
                f"pending choices: {sorted(pending) or 'none'}.",
            )
        reward = args.reward
        if args.verify:
            reward = verified_reward(pending[args.choice], args.store, args.device)
        bandit.update(args.choice, reward)
        bandit.save(path)
        print(
            f"choice {args.choice}: reward {float(reward):.4f} learned ({bandit.n_updates} so far)"
        )
    elif args.bandit_command == "add-arm":
        arm = bandit.add_arm(args.arm)
        bandit.save(path)
        print(f"added arm {arm}")
    elif args.bandit_command == "remove-arm":
        bandit.remove_arm(args.arm)
        bandit.save(path)
        print(f"removed arm {args.arm}")
    return 0
