"""Replay online merge selection on recorded outcomes: cumulative regret of bandit policies.

    python scripts/simulate_bandit.py [--offline zoo-default] [--stream zoo-large] [--seeds 10]

Setting: a team has an offline predictor trained on one catalog (``--offline``, the default
tiny zoo) and now merges pairs of a *new* catalog (``--stream``, the large zoo: other models
and three tasks the predictor never saw) one request at a time. Each request is an ordered
expert pair; the policy picks one of the 20 grid candidates; its reward is the recorded pair
objective (mean normalized score over the pair's tasks, capped at 1); regret is the best
available candidate's reward minus that. Policies: LinUCB and linear Thompson sampling
warm-started from the predictor (simmerge.online.bandit), predictor-only, best-fixed (the best
candidate of the offline data), ε-greedy and random; every request stream is a fresh random
order of all pairs, one per seed.

Scenario 2 (new operator): the operator family that is best most often on the stream (other
than best-fixed's) is hidden from the offline predictor (its rows dropped before training) and
from the bandit's arms; its configurations join a third of the way through. We report how many
requests it takes until a new arm is chosen on a request where it is the best, and how often
it is chosen on such requests afterwards.

Prints tables, writes JSON (``scripts/results/simulate_bandit.json``) and a PNG of the regret
curves (``scripts/results/simulate_bandit.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("lints", "linucb", "predictor", "best_fixed", "egreedy", "random")


def offline_predictor(frame, n_models: int, seed: int, drop_family: str | None = None):
    from simmerge.learn.predictor import MergePredictor
    from simmerge.merging.grid import OperatorConfig

    if drop_family:
        family = frame["candidate"].map(lambda c: OperatorConfig.from_id(c).operator)
        frame = frame[family != drop_family]
    return MergePredictor(n_models=n_models, seed=seed).fit(frame, frame["target"].to_numpy())


def replay_data(features, outcomes, predictor):
    """ReplayData of every pair with all candidates measured."""
    from simmerge.learn.datasets import pair_objective, training_frame
    from simmerge.online.bandit import CONTEXT_FEATURES
    from simmerge.online.replay import ReplayData

    frame = training_frame(features, outcomes)
    frame["pred"] = predictor.predict(frame)
    actual = pair_objective(frame, "target").clip(upper=1.0).unstack("candidate").dropna()
    prior = pair_objective(frame, "pred").unstack("candidate").loc[actual.index, actual.columns]
    general = features[features["task"] == ""].set_index(["catalog", "a", "b"])
    feats = general.loc[actual.index, list(CONTEXT_FEATURES)].to_dict("records")
    return ReplayData(
        arms=tuple(actual.columns),
        rewards=actual.to_numpy(),
        priors=prior.to_numpy(),
        features=tuple(feats),
        keys=tuple(actual.index),
    )


def scaler_for(frame, features):
    from simmerge.online.bandit import Scaler

    general = features[features["task"] == ""]
    return Scaler.fit(general, frame["target"].to_numpy())


def summarize_runs(runs: dict[str, list]) -> dict[str, dict[str, float]]:
    from simmerge.online.replay import regret_summary

    return {policy: regret_summary(results) for policy, results in runs.items()}


def format_table(title: str, summary: dict[str, dict[str, float]]) -> str:
    head = (
        f"{'policy':>11} {'cum. regret':>12} {'± sd':>7} {'mean reward':>12} "
        f"{'late regret/req':>16}"
    )
    lines = [title, head, "-" * len(head)]
    for policy, s in summary.items():
        lines.append(
            f"{policy:>11} {s['final_regret_mean']:>12.2f} {s['final_regret_sd']:>7.2f} "
            f"{s['mean_reward']:>12.4f} {s['late_regret_per_request']:>16.4f}"
        )
    return "\n".join(lines)


def new_arm_uptake(result, data, order, hidden: set[str], start: int) -> dict[str, float]:
    """After the hidden arms arrive: requests until one is chosen where it is best, and the
    share of 'hidden arm is best' requests on which one is chosen (first and last half)."""
    col = {a: i for i, a in enumerate(data.arms)}
    best_hidden = []
    for step in range(start, len(order)):
        rewards = data.rewards[order[step]]
        top = max(rewards[col[a]] for a in data.arms)
        best_hidden.append(any(rewards[col[a]] >= top - 1e-9 for a in hidden))
    chosen = [result.chosen[s] in hidden for s in range(start, len(order))]
    hits = [i for i, (b, c) in enumerate(zip(best_hidden, chosen, strict=True)) if b and c]
    where = [i for i, b in enumerate(best_hidden) if b]
    half = len(where) // 2
    rate = lambda idx: float(np.mean([chosen[i] for i in idx])) if idx else float("nan")  # noqa: E731
    return {
        "requests_until_chosen_where_best": float(hits[0] + 1) if hits else float("nan"),
        "chosen_where_best_first_half": rate(where[:half]),
        "chosen_where_best_second_half": rate(where[half:]),
        "chosen_share_after_arrival": float(np.mean(chosen)),
    }


def plot(curves: dict[str, dict[str, np.ndarray]], arrival: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    titles = {"main": "new catalog, all arms", "new_operator": "one operator added mid-stream"}
    for ax, (scenario, by_policy) in zip(axes, curves.items(), strict=True):
        for policy, curve in by_policy.items():
            ax.plot(np.arange(1, len(curve) + 1), curve, label=policy)
        if scenario == "new_operator":
            ax.axvline(arrival, color="grey", linestyle=":", label="new arms")
        ax.set_title(titles[scenario])
        ax.set_xlabel("request")
        ax.set_ylabel("cumulative regret (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from simmerge.learn.datasets import load_training_tables, pair_objective, training_frame
    from simmerge.learn.metrics import best_fixed_candidate
    from simmerge.merging.grid import OperatorConfig
    from simmerge.online.replay import replay

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--offline", default="zoo-default", help="dataset the predictor trains on")
    p.add_argument("--stream", default="zoo-large", help="dataset whose pairs are requested")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--n-models", type=int, default=5, help="predictor ensemble size")
    p.add_argument("--out", default=str(ROOT / "scripts" / "results" / "simulate_bandit"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    off_features, off_outcomes = load_training_tables(args.offline)
    off_frame = training_frame(off_features, off_outcomes)
    scaler = scaler_for(off_frame, off_features)
    fixed = best_fixed_candidate(pair_objective(off_frame, "target"))
    st_features, st_outcomes = load_training_tables(args.stream)
    data = replay_data(st_features, st_outcomes, offline_predictor(off_frame, args.n_models, 0))
    n = len(data.features)
    orders = [np.random.default_rng(s).permutation(n) for s in range(args.seeds)]

    runs = {
        p: [
            replay(data, o, p, seed=s, scaler=scaler, fixed_arm=fixed) for s, o in enumerate(orders)
        ]
        for p in POLICIES
    }
    main_summary = summarize_runs(runs)
    print(
        format_table(
            f"\nnew catalog: {n} requests from {args.stream}, predictor trained on "
            f"{args.offline}, {args.seeds} seeds",
            main_summary,
        )
    )

    # scenario 2: an operator family the predictor never saw joins mid-stream
    family = {a: OperatorConfig.from_id(a).operator for a in data.arms}
    best = data.rewards.argmax(axis=1)
    wins: dict[str, int] = {}
    for i in best:
        wins[family[data.arms[i]]] = wins.get(family[data.arms[i]], 0) + 1
    fixed_family = OperatorConfig.from_id(fixed).operator
    hidden_family = max((f for f in wins if f != fixed_family), key=lambda f: wins[f])
    hidden = {a for a in data.arms if family[a] == hidden_family}
    data2 = replay_data(
        st_features,
        st_outcomes,
        offline_predictor(off_frame, args.n_models, 0, drop_family=hidden_family),
    )
    start = n // 3
    initial = [a for a in data2.arms if a not in hidden]
    arrivals = {start: sorted(hidden)}
    runs2 = {
        p: [
            replay(
                data2,
                o,
                p,
                seed=s,
                scaler=scaler,
                fixed_arm=fixed,
                initial_arms=initial,
                arrivals=arrivals,
            )
            for s, o in enumerate(orders)
        ]
        for p in POLICIES
    }
    new_summary = summarize_runs(runs2)
    uptake = {
        p: {
            k: float(
                np.nanmean(
                    [
                        new_arm_uptake(r, data2, o, hidden, start)[k]
                        for r, o in zip(runs2[p], orders, strict=True)
                    ]
                )
            )
            for k in new_arm_uptake(runs2[p][0], data2, orders[0], hidden, start)
        }
        for p in ("lints", "linucb", "predictor", "egreedy")
    }
    print(
        format_table(
            f"\nnew operator: {hidden_family} ({len(hidden)} configs, never seen by "
            f"the predictor) added at request {start}",
            new_summary,
        )
    )
    head = (
        f"{'policy':>11} {'requests to first pick where best':>34} "
        f"{'picked where best 1st half':>27} {'2nd half':>9}"
    )
    print(head)
    for pol, u in uptake.items():
        print(
            f"{pol:>11} {u['requests_until_chosen_where_best']:>34.1f} "
            f"{u['chosen_where_best_first_half']:>27.3f} {u['chosen_where_best_second_half']:>9.3f}"
        )

    curves = {
        "main": {p: np.mean([r.cumulative_regret for r in runs[p]], axis=0) for p in POLICIES},
        "new_operator": {
            p: np.mean([r.cumulative_regret for r in runs2[p]], axis=0) for p in POLICIES
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, start, out.with_suffix(".png"))
    bandit_best = min(main_summary[p]["final_regret_mean"] for p in ("lints", "linucb"))
    report = {
        "offline": args.offline,
        "stream": args.stream,
        "requests": n,
        "seeds": args.seeds,
        "best_fixed": fixed,
        "main": main_summary,
        "goal_bandit_beats_predictor_and_best_fixed": bool(
            bandit_best < main_summary["predictor"]["final_regret_mean"]
            and bandit_best < main_summary["best_fixed"]["final_regret_mean"]
        ),
        "new_operator": {
            "family": hidden_family,
            "arms": sorted(hidden),
            "arrival_request": start,
            "summary": new_summary,
            "uptake": uptake,
        },
        "curves_every_10": {
            s: {p: c[::10].round(3).tolist() for p, c in by.items()} for s, by in curves.items()
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(
        f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.png')} ({report['seconds']} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
