"""Fit the multi-way plan model (:mod:`simmerge.learn.plan_model`) on measured plan outcomes.

    python scripts/train_plan_model.py features/multiway/tiny-zoo-s1.parquet --out models/multiway
        [--test features/multiway/tiny-zoo.parquet]

Inputs are training tables written by ``scripts/evaluate_multiway.py --data-out`` (one row per
measured plan and task). With ``--test`` (tables of *other* catalogs) it prints how well the
fitted model and the analytic score predict those rows -- Spearman rho and mean absolute error
over rows, and the mean Spearman rho of plans within each task -- and writes them to the card;
``scripts/evaluate_multiway.py`` measures what matters, the plans it then picks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load(paths: list[str]):
    import pandas as pd

    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def agreement(frame, predicted: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    target = frame["target"].to_numpy()
    per_task = [
        spearmanr(predicted[idx], target[idx]).statistic
        for idx in frame.groupby("task").indices.values()
        if len(idx) > 2
    ]
    return {
        "spearman": float(spearmanr(predicted, target).statistic),
        "mae": float(np.mean(np.abs(predicted - target))),
        "spearman_within_task": float(np.nanmean(per_task)),
    }


def shipped_predictor(hashes: list[str]) -> str | None:
    """The name of the shipped 2-way predictor (``models/<name>``) fitted on the data whose
    hash the tables record, or None (the tables hold no shipped predictor's predictions)."""
    for card in sorted((ROOT / "models").glob("*/card.json")):
        meta = json.loads(card.read_text())
        if "selection" in meta and meta.get("training_data_hash") in hashes:
            return card.parent.name
    return None


def main(argv: list[str] | None = None) -> int:
    from simmerge.learn.plan_model import PlanModel

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="+", help="training tables (parquet)")
    p.add_argument("--out", default=str(ROOT / "models" / "multiway"))
    p.add_argument("--test", nargs="*", default=[], help="tables of other catalogs to score")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    train = load(args.data)
    model = PlanModel(seed=args.seed, params={"num_threads": 1}).fit(train, train["target"])
    card = {
        "training_sources": sorted(train["catalog"].unique()),
        "training_tables": [Path(d).name for d in args.data],
        # plan_merge plans only with operators the model has seen (simmerge.learn.plan_model)
        "operators": sorted({c for steps in train["steps"] for c in steps.split(";")}),
        # ...and plans of at most this many experts
        "max_members": int(train["n_members"].max()),
        # the 2-way predictor(s) whose predictions the tables hold (plan_merge warns on another)
        "predictor_hashes": sorted(train["predictor_hash"].dropna().unique()),
    }
    # ...and the shipped one among them, which plan_merge then uses for the steps by default
    step = shipped_predictor(card["predictor_hashes"])
    if step is not None:
        card["step_predictor"] = step
    if args.test:
        test = load(args.test)
        predicted = np.clip(model.predict(test), 0.0, 1.0)
        card["test"] = {
            "catalogs": sorted(test["catalog"].unique()),
            "rows": len(test),
            "plan_model": agreement(test, predicted),
            "analytic": agreement(test, test["analytic"].to_numpy()),
        }
        header = f"{'scorer':>10} {'rho':>6} {'rho/task':>9} {'MAE':>6}"
        print(f"{header}  on {card['test']['catalogs']}")
        for name in ("analytic", "plan_model"):
            r = card["test"][name]
            rho, within, mae = r["spearman"], r["spearman_within_task"], r["mae"]
            print(f"{name:>10} {rho:>6.3f} {within:>9.3f} {mae:>6.3f}")
    model.save(args.out, extra_card=card)
    print(f"saved the plan model ({len(train)} rows) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
