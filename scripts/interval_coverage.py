"""Coverage of the predictor's calibrated intervals, per split: held-out models, held-out
tasks, and a shipped predictor on another catalog's outcomes.

    python scripts/interval_coverage.py [--data zoo-large] [--level 0.9]
        [--transfer models/default=features/smol-large] [--out FILE]

For each ``--data`` dataset and split, a fresh predictor (the shipped settings) is fitted on
each fold's training rows and predicts its test rows; each fold's intervals are calibrated on
the *other* folds' held-out rows of other pairs (cross-conformal: simmerge.learn.validation.
conformal_coverage) with the out-of-distribution widening ranking applies, and the table gives
the share of test (pair, candidate) objectives inside their interval, overall and for pairs in
and out of the fold's training domain. ``--transfer PREDICTOR=DATASET`` scores a saved
predictor's own intervals (its card's calibration, widened by its domain) on every row of
another dataset, e.g. the tiny-zoo predictor on a real catalog. Prints a table, writes JSON
(default scripts/results/interval_coverage.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def split_rows(name: str, level: float, seed: int) -> list[dict]:
    from simmerge.learn.datasets import load_training_tables, training_frame
    from simmerge.learn.predictor import MergePredictor
    from simmerge.learn.splits import model_folds, task_folds
    from simmerge.learn.validation import conformal_coverage, out_of_fold

    frame = training_frame(*load_training_tables(name))
    factory = partial(MergePredictor, seed=seed)
    out = []
    for split, folds in (
        ("held-out models", model_folds(frame, 5, seed)),
        ("held-out tasks", task_folds(frame)),
    ):
        t0 = time.perf_counter()
        oof = out_of_fold(frame, folds, factory)
        cov = conformal_coverage(oof, level)
        out.append({"data": name, "split": split, **cov, "seconds": time.perf_counter() - t0})
    return out


def transfer_row(spec: str) -> dict:
    from simmerge.learn.datasets import load_training_tables, training_frame
    from simmerge.learn.predictor import MergePredictor
    from simmerge.learn.validation import (
        coverage_summary,
        objective_rows,
        pair_widening,
        predict_with_spread,
    )

    predictor, _, name = spec.partition("=")
    model = MergePredictor.load(predictor)
    if model.interval_ is None:
        raise SystemExit(f"{predictor} has no interval calibration (add_interval_calibration.py)")
    frame = training_frame(*load_training_tables(name))
    mean, std = predict_with_spread(model, frame)
    rows = objective_rows(frame, mean, std, "all", pair_widening(model, frame))
    half = model.interval_.half_width(rows["spread"].to_numpy(), rows["widen"].to_numpy())
    hit = (rows["target"] - rows["pred"]).abs().to_numpy() <= half
    import pandas as pd

    summary = coverage_summary(rows, pd.Series(hit), pd.Series(half))
    return {
        "data": name,
        "split": f"transfer: {predictor}",
        "level": model.interval_.level,
        **summary,
        "mean_abs_error": float((rows["target"] - rows["pred"]).abs().mean()),
        "pairs_out_of_distribution": int(
            rows.loc[~rows["in_distribution"], ["catalog", "a", "b"]].drop_duplicates().shape[0]
        ),
        "pairs": int(rows[["catalog", "a", "b"]].drop_duplicates().shape[0]),
    }


def fmt(x) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="zoo-large", help="datasets, comma-separated ('' for none)")
    ap.add_argument("--transfer", action="append", default=[], help="PREDICTOR=DATASET")
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "scripts/results/interval_coverage.json"))
    args = ap.parse_args(argv)

    rows = []
    for name in filter(None, args.data.split(",")):
        rows += split_rows(name, args.level, args.seed)
    rows += [transfer_row(spec) for spec in args.transfer]

    print(f"{'data':<18} {'split':<34} {'rows':>6} {'cover':>6} {'width':>6} "
          f"{'in: cover':>9} {'out: n':>7} {'out: cover':>10}")  # fmt: skip
    for r in rows:
        out = r["out_of_distribution"]
        print(
            f"{r['data']:<18} {r['split'][:34]:<34} {r['rows']:>6} {fmt(r['coverage']):>6} "
            f"{fmt(r['mean_width']):>6} {fmt(r['in_distribution']['coverage']):>9} "
            f"{out['rows']:>7} {fmt(out['coverage']):>10}"
        )
    print(f"nominal level {args.level:.0%}; goal: within 5 points of it on held-out models")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    doc = {"level": args.level, "seed": args.seed, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
