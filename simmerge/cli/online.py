"""``simmerge bandit``: online selection from the command line, with the state in one file.

simmerge bandit select CATALOG --models a,b --state STATE [--json]
simmerge bandit update --state STATE --choice ID (--reward R | --verify [--store S])
simmerge bandit add-arm --state STATE ID    /    remove-arm --state STATE ID
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simmerge.cli.options import add_device, add_pair
from simmerge.cli.output import emit


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bandit", help="online selection: select, update, add/remove arms")
    bsub = p.add_subparsers(dest="bandit_command", required=True, metavar="COMMAND")

    def state(q: argparse.ArgumentParser) -> None:
        q.add_argument("--state", required=True, help="bandit state file (JSON)")

    sel = bsub.add_parser(
        "select",
        parents=[common],
        help="choose a merge for two experts (the state is created if new)",
    )
    add_pair(sel)
    state(sel)
    sel.add_argument(
        "--policy", default=None, help="lints, linucb, egreedy, random or predictor (new state)"
    )
    sel.add_argument("--seed", type=int, default=0, help="random seed of a new state")
    sel.set_defaults(func=run_select)

    upd = bsub.add_parser("update", parents=[common], help="feed a pending choice's reward back")
    state(upd)
    upd.add_argument("--choice", type=int, required=True, help="choice id printed by select")
    upd.add_argument("--reward", type=float, default=None, help="measured reward in [0, 1]")
    upd.add_argument("--verify", action="store_true", help="merge and evaluate to measure it")
    upd.add_argument("--store", default=None, help="outcome store for --verify's outcomes")
    add_device(upd)
    upd.set_defaults(func=run_update)

    for name, text, func in (
        ("add-arm", "add an operator configuration", run_add_arm),
        ("remove-arm", "drop an operator configuration", run_remove_arm),
    ):
        q = bsub.add_parser(name, parents=[common], help=text)
        state(q)
        q.add_argument("arm", help="operator configuration id, e.g. 'ties[density=0.3]'")
        q.set_defaults(func=func)


def run_select(args: argparse.Namespace) -> int:
    from simmerge.online.service import open_state, select_for_pair, state_lock
    from simmerge.signals.profiles import FeatureOptions

    path = Path(args.state)
    with state_lock(path):
        bandit = open_state(path, args.policy, args.seed)
        choice = select_for_pair(
            bandit,
            args.catalog,
            args.models,
            args.tasks,
            predictor=args.predictor,
            options=FeatureOptions(device=args.device, cache_dir=args.cache_dir),
        )
        bandit.save(path)
    text = (
        f"choice {choice.id}: {choice.arm} (predictor {choice.prior:.3f}, bandit "
        f"{choice.mean:.3f} ± {choice.sd:.3f}); report its reward with "
        f"`simmerge bandit update --state {path} --choice {choice.id} --reward R` or --verify"
    )
    return emit(args, choice.to_dict(), text)


def run_update(args: argparse.Namespace) -> int:
    from simmerge.errors import BanditStateError
    from simmerge.online.bandit import MergeBandit
    from simmerge.online.service import state_lock, verified_reward

    if (args.reward is None) == (not args.verify):
        raise BanditStateError(
            "update needs exactly one of --reward R and --verify.",
            "pass the measured reward, or --verify to merge and evaluate the choice.",
        )
    path = Path(args.state)
    with state_lock(path):
        bandit = MergeBandit.load(path)
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
    payload = {"choice": args.choice, "reward": float(reward), "updates": bandit.n_updates}
    text = f"choice {args.choice}: reward {float(reward):.4f} learned ({bandit.n_updates} so far)"
    return emit(args, payload, text)


def _change_arms(args: argparse.Namespace, add: bool) -> int:
    from simmerge.online.bandit import MergeBandit
    from simmerge.online.service import state_lock

    path = Path(args.state)
    with state_lock(path):
        bandit = MergeBandit.load(path)
        if add:
            arm = bandit.add_arm(args.arm)
        else:
            bandit.remove_arm(args.arm)
            arm = args.arm
        bandit.save(path)
    verb = "added" if add else "removed"
    return emit(args, {verb: arm, "arms": list(bandit.active_arms)}, f"{verb} arm {arm}")


def run_add_arm(args: argparse.Namespace) -> int:
    return _change_arms(args, add=True)


def run_remove_arm(args: argparse.Namespace) -> int:
    return _change_arms(args, add=False)
