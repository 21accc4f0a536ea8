"""Does averaging a merge's prediction over the two member orders pick better merges?

    python scripts/explore_order_averaging.py [--data smol-large] [--seeds 0,1,2] [--deals 4]

A symmetric merge of (a, b) is the same merge as of (b, a) (slerp with t mirrored to 1 - t),
and the collector measures it once for both orders, but the predictor sees two different
feature rows (KL divergences and ``task_of_a`` / ``task_of_b`` swap sides), so it predicts
the same merge twice, differently. *Order averaging* replaces each prediction by the mean of
the two (test-time augmentation). This script measures it the way ``evaluate_selector.py``
measures the predictor: held-out models, ``--deals`` deals pooled, for each seed in
``--seeds`` (the seed sets the deals and the ensemble's bagging). Within one seed the two
rows use the same fitted models, so their difference is the averaging alone.

Prints a table and writes JSON (default
``scripts/results/explore_order_averaging_<data>.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("gap_closure", "risk", "pct_of_oracle", "pct_of_oracle_top_k", "mean_abs_error")


def order_averaged(frame, mean: np.ndarray) -> np.ndarray:
    """``mean`` with each row averaged with the row of the same merge in the other member
    order (same catalog and task, a and b swapped, the candidate mirrored), where the frame
    has it."""
    from simmerge.merging.grid import OperatorConfig

    cols = ("catalog", "a", "b", "task", "candidate")
    keys = list(zip(*(frame[c] for c in cols), strict=True))
    row = {k: i for i, k in enumerate(keys)}
    mirror = {c: OperatorConfig.from_id(c).mirrored().id for c in set(frame["candidate"])}
    partner = np.array([row.get((c, b, a, t, mirror[k]), -1) for c, a, b, t, k in keys])
    out = np.array(mean, dtype=np.float64)
    has = partner >= 0
    out[has] = 0.5 * (mean[has] + mean[partner[has]])
    return out


def main(argv: list[str] | None = None) -> int:
    from simmerge.infra.files import write_json_report
    from simmerge.learn.datasets import load_training_tables, training_frame
    from simmerge.learn.metrics import summarize
    from simmerge.learn.predictor import DEFAULT_ENSEMBLE, MergePredictor
    from simmerge.learn.splits import model_folds
    from simmerge.learn.validation import cross_validate

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="smol-large", help="shipped dataset name or folder")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--deals", type=int, default=4)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    frame = training_frame(*load_training_tables(args.data))
    fitted: dict[str, MergePredictor] = {}

    class Plain(MergePredictor):
        """The shipped recipe; remembers itself so that the averaged row reuses the fit."""

        def fit(self, frame, y):
            super().fit(frame, y)
            fitted["last"] = self
            return self

    class Averaged:
        """The fold's plain model (fitted just before, on the same rows), order-averaged."""

        def fit(self, frame, y):
            self.model = fitted["last"]
            return self

        def predict(self, frame, return_std=False):
            mean, std = self.model.predict(frame, return_std=True)
            mean = order_averaged(frame, mean)
            return (mean, std) if return_std else mean

    report: dict[str, object] = {"data": str(args.data), "deals": args.deals, "seeds": {}}
    head = f"{'seed':>4} {'selector':>14} " + " ".join(f"{c:>20}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    t0 = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        models = {
            "plain": lambda seed=seed: Plain(n_models=DEFAULT_ENSEMBLE, seed=seed),
            "order_averaged": Averaged,
        }
        folds = model_folds(frame, args.folds, seed, deals=args.deals)
        cv = cross_validate(frame, folds, models, 3)
        results = {m: summarize(cv.pooled[m]) for m in ("plain", "order_averaged", "best_fixed")}
        report["seeds"][str(seed)] = results
        for m in ("plain", "order_averaged"):
            cells = " ".join(f"{results[m][c]:>20.3f}" for c in COLUMNS)
            lines.append(f"{seed:>4} {m:>14} {cells}")
            print(lines[-1], file=sys.stderr, flush=True)  # progress: a seed takes minutes
    seeds = report["seeds"]
    report["mean"] = {
        m: {c: float(np.mean([s[m][c] for s in seeds.values()])) for c in COLUMNS}
        for m in ("plain", "order_averaged")
    }
    for m, r in report["mean"].items():
        lines.append(f"{'mean':>4} {m:>14} " + " ".join(f"{r[c]:>20.3f}" for c in COLUMNS))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print("\n".join(lines))
    name = Path(str(args.data)).name
    out = Path(args.json or ROOT / "scripts" / "results" / f"explore_order_averaging_{name}.json")
    write_json_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
