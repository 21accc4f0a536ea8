"""Replay online selection over a catalog's recorded outcomes, warm-started from a *saved*
predictor, as ``simmerge bandit select`` uses it: its priors, and out of distribution its
widened intervals as the priors' sd.

    python scripts/replay_bandit_real.py --stream features/smol-large
        [--predictor models/default] [--seeds 10] [--out FILE]

Each request is an ordered expert pair of ``--stream`` with every grid candidate measured; the
policy picks one candidate; the reward is its recorded pair objective (mean normalized score,
capped at 1); regret is the best candidate's reward minus that. Policies: Thompson sampling
and LinUCB with the untrusted-prior rule (``ArmContext.prior_sd`` from the predictor's domain
and interval), the same two trusting the prior (``prior_sd`` = 0), predictor-only, the
predictor's best-fixed candidate (its card's anchor) and random. The question it answers (the
issue "A predictor that has seen real models"): warm-started from a predictor that is out of
distribution on the stream, does learning beat both predictor-only and best-fixed? Prints a
table and writes JSON (default scripts/results/replay_bandit_<stream>_<predictor>.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def replay_data(features, outcomes, model):
    """ReplayData of every pair with all candidates measured, priors and prior sds from the
    saved ``model`` (the bandit service's rule)."""
    from simmerge.learn.datasets import pair_objective, training_frame
    from simmerge.learn.validation import objective_rows, pair_widening, predict_with_spread
    from simmerge.online.bandit import CONTEXT_FEATURES, prior_sd_of
    from simmerge.online.replay import ReplayData

    frame = training_frame(features, outcomes)
    mean, std = predict_with_spread(model, frame)
    rows = objective_rows(frame, mean, std, "all", pair_widening(model, frame))
    rows = rows.set_index(["catalog", "a", "b", "candidate"])
    actual = pair_objective(frame, "target").clip(upper=1.0).unstack("candidate").dropna()
    prior = rows["pred"].unstack("candidate").loc[actual.index, actual.columns]
    cal = model.interval_
    sd = []
    for _, r in rows.iterrows():
        interval = None
        if cal is not None:
            interval = cal.interval(r["pred"], r["spread"], r["widen"])
        level = cal.level if cal is not None else None
        sd.append(prior_sd_of(interval, bool(r["in_distribution"]), level))
    rows["prior_sd"] = sd
    sds = rows["prior_sd"].unstack("candidate").loc[actual.index, actual.columns]
    general = features[features["task"] == ""].set_index(["catalog", "a", "b"])
    feats = general.loc[actual.index, list(CONTEXT_FEATURES)].to_dict("records")
    inside = rows["in_distribution"].groupby(["catalog", "a", "b"]).all()
    return ReplayData(
        arms=tuple(actual.columns),
        rewards=actual.to_numpy(),
        priors=prior.to_numpy(),
        features=tuple(feats),
        keys=tuple(actual.index),
        prior_sds=sds.to_numpy(),
    ), float((~inside.loc[actual.index]).mean())


def main(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    from simmerge.learn.datasets import load_training_tables
    from simmerge.learn.predictor import MergePredictor
    from simmerge.online.bandit import Scaler
    from simmerge.online.replay import regret_summary, replay

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stream", required=True, help="dataset whose pairs are requested")
    p.add_argument("--predictor", default=str(ROOT / "models" / "default"))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    model = MergePredictor.load(args.predictor)
    features, outcomes = load_training_tables(args.stream)
    data, flagged = replay_data(features, outcomes, model)
    trusting = replace(data, prior_sds=None)
    fixed = (model.card_.get("selection") or {}).get("best_fixed") or data.arms[0]
    scaler = Scaler.fit(features[features["task"] == ""])
    n = len(data.features)
    orders = [np.random.default_rng(s).permutation(n) for s in range(args.seeds)]
    runs = {
        "lints": (data, "lints"),
        "linucb": (data, "linucb"),
        "lints, trusting": (trusting, "lints"),
        "linucb, trusting": (trusting, "linucb"),
        "predictor": (data, "predictor"),
        "best_fixed": (data, "best_fixed"),
        "random": (data, "random"),
    }
    summary = {}
    for name, (d, policy) in runs.items():
        results = [
            replay(d, o, policy, seed=s, scaler=scaler, fixed_arm=fixed)
            for s, o in enumerate(orders)
        ]
        summary[name] = regret_summary(results)
    title = (
        f"{n} requests from {args.stream}; predictor {args.predictor} (anchor {fixed}); "
        f"{flagged:.0%} of the pairs out of its distribution; {args.seeds} seeds"
    )
    print(title)
    head = f"{'policy':>17} {'cum. regret':>12} {'± sd':>7} {'mean reward':>12} {'late/req':>9}"
    print(head + "\n" + "-" * len(head))
    for name, s in summary.items():
        print(
            f"{name:>17} {s['final_regret_mean']:>12.2f} {s['final_regret_sd']:>7.2f} "
            f"{s['mean_reward']:>12.4f} {s['late_regret_per_request']:>9.4f}"
        )
    out = Path(
        args.out
        or ROOT / "scripts" / "results"
        / f"replay_bandit_{Path(args.stream).name}_{Path(args.predictor).name}.json"
    )  # fmt: skip
    doc = {
        "stream": args.stream,
        "predictor": args.predictor,
        "requests": n,
        "pairs_out_of_distribution": flagged,
        "best_fixed": fixed,
        "seeds": args.seeds,
        "policies": summary,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
