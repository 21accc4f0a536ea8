"""Add a calibrated interval (simmerge.learn.conformal) to a predictor saved without one.

    python scripts/add_interval_calibration.py --predictor models/default [--folds 5]

Reads the card's ``training_sources`` (shipped datasets), rebuilds the training frame, checks
it is the data the predictor was fitted on (the card's ``training_data_hash``), runs the
held-out-model cross-validation ``simmerge train`` runs (same folds, same settings) to get
out-of-fold predictions, and writes the card's ``interval`` entry: level, conformal quantile,
floor and the coverage measured the cross-conformal way. Boosters and domain are not touched,
so every prediction stays the same; only the intervals appear. Prints the calibration.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from simmerge.learn.datasets import training_frame
    from simmerge.learn.fitting import calibrate_interval, gather_training_tables
    from simmerge.learn.predictor import MergePredictor
    from simmerge.learn.splits import model_folds
    from simmerge.learn.validation import out_of_fold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="models/default")
    ap.add_argument("--folds", type=int, default=5, help="held-out-model folds (train's default)")
    args = ap.parse_args(argv)

    model = MergePredictor.load(args.predictor)
    sources = [s.removeprefix("dataset:") for s in model.card_.get("training_sources") or []]
    if not sources or any(s.startswith("store:") for s in sources):
        print(f"{args.predictor}: no shipped training sources; refit it instead.", file=sys.stderr)
        return 1
    features, outcomes, _ = gather_training_tables(sources)
    frame = training_frame(features, outcomes)
    model.check_training_data(frame, frame["target"].to_numpy())
    oof = out_of_fold(frame, model_folds(frame, args.folds, model.seed), model.clone)
    calibration, measured = calibrate_interval(oof)
    model.set_interval(calibration, measured)
    model.save_card(args.predictor)
    print(
        f"{args.predictor}: {calibration.level:.0%} interval = prediction +- "
        f"{calibration.quantile:.2f} x (spread + {calibration.floor:.3f}), from "
        f"{calibration.calibration_rows} held-out (pair, candidate) rows; cross-conformal "
        f"coverage {measured['coverage']:.3f}, mean width {measured['mean_width']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
