"""Add the training domain (simmerge.learn.domain) to a predictor saved without one.

    python scripts/add_training_domain.py --predictor models/default
    python scripts/add_training_domain.py --plan-model models/multiway

Reads the card's ``training_sources`` (shipped datasets such as ``zoo-large``), rebuilds the
training frame, checks it is the data the predictor was fitted on (the card's
``training_data_hash``), fits the domain, and writes ``domain.npz`` plus the card's ``domain``
entry. The boosters are not touched, so every prediction stays the same. Prints the domain's
size and threshold and how many training rows it calls out of distribution. ``--plan-model``
does the same for a multi-way plan model, whose card lists its ``training_tables`` (in
``features/multiway``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from simmerge.learn.datasets import training_frame
    from simmerge.learn.fitting import gather_training_tables
    from simmerge.learn.predictor import MergePredictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="models/default")
    ap.add_argument("--plan-model", default=None, help="a plan model folder instead")
    args = ap.parse_args(argv)
    if args.plan_model:
        return plan_model_domain(args.plan_model)

    model = MergePredictor.load(args.predictor)
    sources = [s.removeprefix("dataset:") for s in model.card_.get("training_sources") or []]
    if any(s.startswith("store:") for s in sources):
        print(
            f"{args.predictor} was trained on an outcome store; refit it instead.", file=sys.stderr
        )
        return 1
    features, outcomes, _ = gather_training_tables(sources)
    frame = training_frame(features, outcomes)
    entry = model.add_domain(frame, frame["target"].to_numpy())
    model.save_domain(args.predictor)
    checks = model.check_domain(frame)
    outside = sum(not c.in_distribution for c in checks)
    print(
        f"{args.predictor}: domain of {entry['reference_rows']} reference rows, k = "
        f"{entry['neighbours']}, threshold {entry['threshold']:.3f}; {outside} of {len(checks)} "
        "training rows fall outside it"
    )
    return 0


def plan_model_domain(folder: str) -> int:
    import pandas as pd

    from simmerge.infra.resources import data_dir
    from simmerge.learn.plan_model import PlanModel

    model = PlanModel.load(folder)
    tables = model.card_.get("training_tables") or []
    if not tables:
        print(f"{folder}: its card lists no training_tables; refit it.", file=sys.stderr)
        return 1
    root = data_dir("features") / "multiway"
    frame = pd.concat([pd.read_parquet(root / t) for t in tables], ignore_index=True)
    entry = model.add_domain(frame, frame["target"].to_numpy())
    model.save_domain(folder)
    outside = sum(not c.in_distribution for c in model.check_domain(frame))
    print(
        f"{folder}: domain of {entry['reference_rows']} reference rows, threshold "
        f"{entry['threshold']:.3f}; {outside} of {len(frame)} training rows fall outside it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
