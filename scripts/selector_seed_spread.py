"""How much the selector's held-out figures move with the predictor's training seed alone.

    python scripts/selector_seed_spread.py [--sizes 5,20] [--seeds 0,100,200,300,400]
                                           [--splits models] [--extra DATASETS]

Same data, folds and recipe as scripts/evaluate_selector.py, through the same
:func:`simmerge.learn.validation.cross_validate` (zoo-large; ``--extra`` adds training-only datasets
of other catalogs, none by default, as for the shipped predictor; model folds of seed 0; the
plain pick, no anchoring); only the seed of the
LightGBM ensemble changes, and the ensemble size (``n_models``). Each member bags 80 % of the
rows and 80 % of the columns with its own seed, so a 5-member ensemble's pick on a close pair
can flip with the seed -- and every single-run figure in docs/results/pairwise.md (the shipped
recipe's and each variant's) carries that noise on top of the choice of test pairs (the bootstrap
interval). This script measures it: gap closure and risk per (size, seed), with the mean,
standard deviation and range over seeds.

Prints a table and writes JSON (default ``scripts/results/selector_seed_spread.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample sd (None for a single seed: JSON has no NaN), min and max."""
    arr = np.asarray(values, dtype=float)
    return {
        "mean": round(float(arr.mean()), 3),
        "sd": round(float(arr.std(ddof=1)), 3) if len(arr) > 1 else None,
        "min": round(float(arr.min()), 3),
        "max": round(float(arr.max()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    from simmerge.infra.files import write_json_report
    from simmerge.learn.datasets import extra_training_frame, load_training_tables, training_frame
    from simmerge.learn.metrics import summarize
    from simmerge.learn.predictor import MergePredictor
    from simmerge.learn.splits import model_folds, task_folds
    from simmerge.learn.validation import cross_validate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5,20", help="ensemble sizes (n_models)")
    parser.add_argument("--seeds", default="0,100,200,300,400", help="training seeds")
    parser.add_argument("--splits", default="models", help="models and/or tasks")
    parser.add_argument(
        "--extra",
        default="",
        help="comma-separated training-only datasets from other catalogs ('' = none, the "
        "default: the shipped predictor is fitted without any)",
    )
    parser.add_argument("--out", default=str(ROOT / "scripts/results/selector_seed_spread.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = args.splits.split(",")
    if set(splits) - {"models", "tasks"}:
        raise SystemExit(f"--splits takes models and/or tasks; got {args.splits!r}.")
    frame = training_frame(*load_training_tables("zoo-large"))
    extra = extra_training_frame(args.extra)

    def folds(split):
        return model_folds(frame, 5, 0) if split == "models" else task_folds(frame)

    runs: list[dict[str, object]] = []
    start = time.perf_counter()
    for split in splits:
        for size in sizes:
            for seed in seeds:
                factory = partial(MergePredictor, n_models=size, seed=seed)
                cv = cross_validate(frame, folds(split), {"simmerge": factory}, extra=extra)
                res = summarize(cv.pooled["simmerge"])
                runs.append(
                    {
                        "split": split,
                        "n_models": size,
                        "seed": seed,
                        "gap_closure": round(res["gap_closure"], 3),
                        "risk": round(res["risk"], 3),
                    }
                )
                print(
                    f"{split:>7} n_models={size:<3} seed={seed:<5} gap closure "
                    f"{res['gap_closure']:.3f} risk {res['risk']:.3f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    summary = []
    head = f"{'split':>7} {'n_models':>8} {'seeds':>5}  gap closure mean / sd / min-max"
    print(f"\n{head}   risk mean")
    for split in splits:
        for size in sizes:
            rows = [r for r in runs if r["split"] == split and r["n_models"] == size]
            gap = spread([r["gap_closure"] for r in rows])
            risk = spread([r["risk"] for r in rows])
            summary.append({"split": split, "n_models": size, "gap_closure": gap, "risk": risk})
            sd = "-" if gap["sd"] is None else f"{gap['sd']:.3f}"
            print(
                f"{split:>7} {size:>8} {len(rows):>5}  {gap['mean']:.3f} / {sd} / "
                f"{gap['min']:.3f}-{gap['max']:.3f}   {risk['mean']:.3f}"
            )
    write_json_report(
        Path(args.out),
        {
            "data": "zoo-large",
            "extra": args.extra or None,
            "folds": "model folds of seed 0" if "models" in splits else "leave one task out",
            "runs": runs,
            "summary": summary,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
