"""A saved predictor on another catalog's outcomes, without retraining: transfer rows.

    python scripts/evaluate_transfer.py --predictor models/default --data features/smol-large
        [--k 3] [--out FILE]

Every pair of ``--data`` with all candidates measured is a test pair. Methods: the plain pick
(argmax of the prediction), ``rank``'s rule (the card's anchor kept first unless beaten by its
margin, and always first on a pair outside the predictor's training domain), the card's anchor
alone (``best_fixed``: the best candidate of the predictor's training data, what a user without
a predictor would fall back to), random and the oracle. Metrics are those of
``scripts/evaluate_selector.py`` (simmerge.learn.metrics; gap closure against the card's
anchor), plus the mean absolute error of the predictions and the share of pairs flagged out of
distribution. The k verified are k distinct merges, as ``simmerge verify`` picks them. Prints a
table and writes JSON (default
scripts/results/transfer_<predictor>_<data>.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("gap_closure", "pct_of_oracle", "pct_of_oracle_top_k", "top1_accuracy", "spearman",
           "risk", "mean_abs_error", "mean_selected", "pairs")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from simmerge.learn.anchoring import anchor
    from simmerge.learn.datasets import load_training_tables, pair_objective, training_frame
    from simmerge.learn.metrics import per_pair, random_outcomes, summarize
    from simmerge.learn.predictor import MergePredictor
    from simmerge.learn.validation import objective_rows, pair_widening, predict_with_spread

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--predictor", default=str(ROOT / "models" / "default"))
    p.add_argument("--data", required=True)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    model = MergePredictor.load(args.predictor)
    rule = model.card_.get("selection") or {}
    fixed, margin = rule.get("best_fixed"), float(rule.get("margin", 0.0))
    frame = training_frame(*load_training_tables(args.data))
    mean, std = predict_with_spread(model, frame)
    rows = objective_rows(frame, mean, std, "all", pair_widening(model, frame))
    rows = rows.set_index(["catalog", "a", "b", "candidate"]).sort_index()
    actual = pair_objective(frame, "target").reindex(rows.index)
    predicted = rows["pred"]
    inside = rows["in_distribution"].groupby(level=["catalog", "a", "b"]).transform("all")
    ranked = pd.concat(
        [anchor(predicted[inside], fixed, margin), anchor(predicted[~inside], fixed, math.inf)]
    ).reindex(rows.index)
    indicator = pd.Series([float(c == fixed) for c in rows.index.get_level_values("candidate")],
                          index=rows.index)  # fmt: skip
    results = {
        "simmerge": summarize(per_pair(actual, predicted, fixed, args.k, distinct=True)),
        "simmerge_rank_rule": summarize(per_pair(actual, ranked, fixed, args.k, distinct=True)),
        "best_fixed": summarize(per_pair(actual, indicator, fixed, args.k, distinct=True)),
        "random": summarize(random_outcomes(actual, fixed, args.k)),
        "oracle": summarize(per_pair(actual, actual, fixed, args.k)),
    }
    results["simmerge_rank_rule"]["mean_abs_error"] = results["simmerge"]["mean_abs_error"]
    pairs_out = float(1 - inside.groupby(level=["catalog", "a", "b"]).first().mean())
    print(f"{args.predictor} on {args.data}: {results['oracle']['pairs']} pairs, "
          f"{pairs_out:.0%} out of its distribution; anchor {fixed}, margin {margin}")  # fmt: skip
    print(f"{'method':>19} " + " ".join(f"{c[:11]:>11}" for c in COLUMNS))
    for name, r in results.items():
        cells = []
        for c in COLUMNS:
            v = r.get(c, float("nan"))
            if c == "mean_abs_error" and not name.startswith("simmerge"):
                cells.append(f"{'–':>11}")
            else:
                cells.append(f"{v:>11d}" if c == "pairs" else f"{v:>11.3f}")
        print(f"{name:>19} " + " ".join(cells))
    out = Path(
        args.out
        or ROOT / "scripts" / "results"
        / f"transfer_{Path(args.predictor).name}_{Path(args.data).name}.json"
    )  # fmt: skip
    by_pair = ["catalog", "a", "b"]
    doc = {"predictor": args.predictor, "data": args.data, "k_verify": args.k,
           "best_fixed": fixed, "margin": margin, "pairs_out_of_distribution": pairs_out,
           "results": results,
           # what the catalog rewards, whatever the predictor: each candidate's mean objective,
           # how often it is a pair's best, and how often it is the plain pick
           "candidate_mean": actual.groupby(level="candidate").mean().round(4).to_dict(),
           "best_of_pairs": _counts(actual.groupby(level=by_pair).idxmax()),
           "plain_picks": _counts(predicted.groupby(level=by_pair).idxmax())}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _counts(argmax) -> dict[str, int]:
    """Per candidate, the pairs whose argmax (index tuples ending in the candidate) it is."""
    return argmax.map(lambda key: key[-1]).value_counts().to_dict()


if __name__ == "__main__":
    sys.exit(main())
