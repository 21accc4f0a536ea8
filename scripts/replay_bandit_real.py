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

``--out-of-fold N``: the priors come not from the saved predictor but from predictors fitted
like it (same parameters, ensemble and seed) on the stream's own catalog with both of the
pair's experts held out: N partitions of the experts into 5 groups (``model_folds`` seeds
0..N-1), each pair taking the prediction of the first partition that holds both of its experts
in one group; pairs no partition tests are left out of the stream. Intervals and prior sds use
the saved predictor's calibration (held-out-model residuals, what ``simmerge train`` records),
the out-of-distribution flags each fold predictor's own training domain, and best-fixed is
each fold's best candidate on its training pairs (the card's anchor was chosen on all pairs,
the tested ones too). This is the replay warm-started from the real predictor without
letting it see the stream's experts (the file name gets ``_oof``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def saved_model_rows(frame, model):
    """Per (pair, candidate): the saved ``model``'s prediction, spread and widening."""
    from simmerge.learn.validation import objective_rows, pair_widening, predict_with_spread

    mean, std = predict_with_spread(model, frame)
    return objective_rows(frame, mean, std, "all", pair_widening(model, frame))


def out_of_fold_rows(frame, model, partitions: int, groups: int = 5):
    """Per (pair, candidate): the prediction of a predictor fitted like ``model`` without
    either of the pair's experts (the first of ``partitions`` held-out-model partitions into
    ``groups`` groups that tests the pair)."""
    import pandas as pd

    from simmerge.learn.splits import model_folds
    from simmerge.learn.validation import OOF_KEYS, out_of_fold

    parts = []
    for seed in range(partitions):
        rows = out_of_fold(frame, model_folds(frame, groups, seed), model.clone)
        rows["fold"] = f"partition-{seed}/" + rows["fold"]
        parts.append(rows)
        print(f"partition {seed}: {rows[['catalog', 'a', 'b']].drop_duplicates().shape[0]} "
              "pairs tested", flush=True)  # fmt: skip
    return pd.concat(parts, ignore_index=True).drop_duplicates(OOF_KEYS, keep="first")


def fold_best_fixed(frame, partitions: int, groups: int = 5) -> dict[str, str]:
    """Per fold name of :func:`out_of_fold_rows`: the best candidate on that fold's training
    pairs, the best-fixed a user of the fold's predictor would know (the saved card's anchor
    was chosen on every pair, the tested ones too)."""
    from simmerge.learn.datasets import pair_objective
    from simmerge.learn.metrics import best_fixed_candidate
    from simmerge.learn.splits import model_folds

    out = {}
    for seed in range(partitions):
        for fold in model_folds(frame, groups, seed):
            if fold.train.any():
                train = pair_objective(frame[fold.train], "target")
                out[f"partition-{seed}/{fold.name}"] = best_fixed_candidate(train)
    return out


def fixed_results(data, orders, arms: list[str]):
    """best_fixed's replays when each request has its own fixed arm (``arms``)."""
    from simmerge.online.replay import ReplayResult

    col = {a: i for i, a in enumerate(data.arms)}
    results = []
    for order in orders:
        out = ReplayResult("best_fixed")
        for req in order:
            r = float(data.rewards[req, col[arms[req]]])
            out.chosen.append(arms[req])
            out.reward.append(r)
            out.regret.append(float(data.rewards[req].max()) - r)
        results.append(out)
    return results


def replay_data(features, outcomes, model, partitions: int = 0):
    """ReplayData of every pair with all candidates measured (and, out of fold, predicted),
    priors and prior sds from the saved ``model`` or from out-of-fold predictors
    (the bandit service's rule); the share of its pairs out of distribution; out of fold, each
    request's best-fixed arm (:func:`fold_best_fixed`), else None."""
    from simmerge.learn.datasets import pair_objective, training_frame
    from simmerge.online.bandit import CONTEXT_FEATURES, prior_sd_of
    from simmerge.online.replay import ReplayData

    frame = training_frame(features, outcomes)
    if partitions:
        rows = out_of_fold_rows(frame, model, partitions)
        if rows.empty:
            raise SystemExit(
                "--out-of-fold: no partition holds both experts of a measured pair in one "
                "group with other pairs left to train on; the stream is too small for it"
            )
    else:
        rows = saved_model_rows(frame, model)
    rows = rows.set_index(["catalog", "a", "b", "candidate"])
    actual = pair_objective(frame, "target").clip(upper=1.0).unstack("candidate").dropna()
    predicted = rows["pred"].unstack("candidate").dropna().index
    actual = actual.loc[actual.index.intersection(predicted)]
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
    fixed = None
    if partitions:
        by_fold = fold_best_fixed(frame, partitions)
        fold_of = rows["fold"].groupby(["catalog", "a", "b"]).first()
        fixed = [by_fold[fold_of.loc[key]] for key in actual.index]
    data = ReplayData(
        arms=tuple(actual.columns),
        rewards=actual.to_numpy(),
        priors=prior.to_numpy(),
        features=tuple(feats),
        keys=tuple(actual.index),
        prior_sds=sds.to_numpy(),
    )
    return data, float((~inside.loc[actual.index]).mean()), fixed


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
    p.add_argument(
        "--out-of-fold",
        type=int,
        default=0,
        metavar="N",
        help="priors from predictors fitted without the pair's experts, over N partitions",
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    model = MergePredictor.load(args.predictor)
    features, outcomes = load_training_tables(args.stream)
    data, flagged, fold_fixed = replay_data(features, outcomes, model, args.out_of_fold)
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
    if fold_fixed is not None:  # the card's anchor was chosen on the tested pairs too
        runs["card's anchor"] = (data, "best_fixed")
    summary = {}
    for name, (d, policy) in runs.items():
        if name == "best_fixed" and fold_fixed is not None:
            results = fixed_results(d, orders, fold_fixed)
        else:
            results = [
                replay(d, o, policy, seed=s, scaler=scaler, fixed_arm=fixed)
                for s, o in enumerate(orders)
            ]
        summary[name] = regret_summary(results)
    if fold_fixed is not None:
        fixed = dict(Counter(fold_fixed).most_common())  # each fold's own best-fixed
    title = (
        f"{n} requests from {args.stream}; predictor {args.predictor}"
        f"{f' out of fold ({args.out_of_fold} partitions)' if args.out_of_fold else ''} "
        f"(best-fixed {fixed}); "
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
    oof = "_oof" if args.out_of_fold else ""
    out = Path(
        args.out
        or ROOT / "scripts" / "results"
        / f"replay_bandit_{Path(args.stream).name}_{Path(args.predictor).name}{oof}.json"
    )  # fmt: skip
    doc = {
        "stream": args.stream,
        "predictor": args.predictor,
        "out_of_fold_partitions": args.out_of_fold,
        "requests": n,
        "pairs_out_of_distribution": flagged,
        "best_fixed": fixed,
        "card_anchor": (model.card_.get("selection") or {}).get("best_fixed"),
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
