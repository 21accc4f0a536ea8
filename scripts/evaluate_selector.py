"""Evaluate merge selection on held-out models and held-out tasks.

    python scripts/evaluate_selector.py [--data zoo-large] [--extra DATASETS] [--folds 5]

For each split scheme (group k-fold by model; leave one task out) the LightGBM predictor and
a linear baseline on the same features (the Mergeability-Bench approach) are trained on the
training pairs -- plus the ``--extra`` datasets, if any, other catalogs whose rows are only
ever trained on (minus pairs with a held-out task) -- and select a candidate for every test
pair. The default is no extra data, the recipe of the shipped predictor (``simmerge train
--data zoo-large``): on the regenerated data the default zoo as extra training data lowered
the held-out-model figures (docs/results/pairwise.md, "Training-seed noise");
best-fixed, random and oracle are the references. Metrics are defined in
:mod:`simmerge.learn.metrics` (docs/design.md, "Metrics"). Prints a table per scheme and writes JSON
(default ``scripts/results/evaluate_selector_<data>.json``).

Where the dataset has remeasured test pairs (``features/<data>/remeasured``,
``scripts/remeasure_outcomes.py``: the held-out-model test pairs of a rebuilt zoo, measured on
the zoo's eval set and again on a fresh, larger one), two more held-out-model tables use them
as the test pairs: scored on the first measurement, and scored on the second, where
``exhaustive`` is the pick of merging and evaluating every candidate (the argmax of the first
measurement).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORE_PREDICTORS = ("simmerge", "linear")
METHODS = ("simmerge", "simmerge_anchored", "linear", "best_fixed", "random", "oracle")
COLUMNS = (
    ("gap_closure", "gap clos."),
    ("pct_of_oracle", "% oracle"),
    ("pct_of_oracle_top_k", "% or. top-k"),
    ("top1_accuracy", "top-1"),
    ("spearman", "spearman"),
    ("risk", "risk"),
    ("mean_abs_error", "abs. err."),
    ("mean_selected", "mean sel."),
    ("pairs", "pairs"),
)


def format_table(title: str, results: dict[str, dict[str, float]], k: int) -> str:
    head = f"{'method':>17} " + " ".join(
        f"{label.replace('top-k', f'top-{k}'):>11}" for _, label in COLUMNS
    )
    head += f" {'gap clos. 90 %':>15}"
    lines = [title, head, "-" * len(head)]
    for method in [m for m in (*METHODS, "exhaustive") if m in results]:
        r = results[method]
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key, float("nan"))
            if key == "mean_abs_error" and method not in SCORE_PREDICTORS:
                cells.append(f"{'–':>11}")  # the others rank, they do not predict the score
            else:
                cells.append(f"{v:>11d}" if key == "pairs" else f"{v:>11.3f}")
        lo, hi = r.get("gap_closure_90", (float("nan"), float("nan")))
        cells.append(f"{f'{lo:.2f} – {hi:.2f}':>15}")
        lines.append(f"{method:>17} " + " ".join(cells))
    return "\n".join(lines)


def replace_pairs(frame, test):
    """``frame`` without the rows of the pairs that ``test`` has (remeasured test pairs of a
    rebuilt zoo replace the dataset's rows of the same pairs; model folds are unchanged, as
    they go by catalog and expert name)."""
    keys = ["catalog", "a", "b"]
    pairs = set(test[keys].itertuples(index=False, name=None))
    return frame[[k not in pairs for k in frame[keys].itertuples(index=False, name=None)]]


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from simmerge.infra.files import write_json_report
    from simmerge.learn.datasets import (
        describe,
        extra_training_frame,
        load_remeasured,
        load_training_tables,
        pair_objective,
        training_frame,
    )
    from simmerge.learn.metrics import summarize
    from simmerge.learn.predictor import DEFAULT_ENSEMBLE, MergePredictor, predictor_columns
    from simmerge.learn.splits import model_folds, task_folds
    from simmerge.learn.validation import LinearBaseline, cross_validate

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="zoo-large", help="shipped dataset name or folder")
    p.add_argument(
        "--extra",
        default="",
        help="comma-separated training-only datasets from other catalogs ('' = none, the "
        "default, as the shipped predictor is fitted)",
    )
    p.add_argument("--folds", type=int, default=5, help="model folds")
    p.add_argument(
        "--deals",
        type=int,
        default=1,
        help="held-out models: pool this many deals of the models into folds (seeds --seed "
        "onwards); one deal of a ~20-model catalog tests a few dozen pairs",
    )
    p.add_argument("--k", type=int, default=3, help="verifications for the top-k metric")
    p.add_argument("--n-models", type=int, default=DEFAULT_ENSEMBLE, help="predictor ensemble size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-remeasured",
        action="store_true",
        help="skip the tables on the dataset's remeasured test pairs",
    )
    p.add_argument(
        "--distinct-top-k",
        action="store_true",
        help="the k verified are k distinct merges, as `simmerge verify` picks them (the "
        "tiny-zoo tables in docs were measured without)",
    )
    p.add_argument("--json", default=None, help="output JSON path")
    args = p.parse_args(argv)

    features, outcomes = load_training_tables(args.data)
    frame = training_frame(features, outcomes)
    extra = extra_training_frame(args.extra)
    models = {
        "simmerge": partial(MergePredictor, n_models=args.n_models, seed=args.seed),
        "linear": partial(LinearBaseline, predictor_columns()),
    }
    report: dict[str, object] = {
        "data": str(args.data),
        "dataset": describe(features, outcomes),
        "extra": args.extra,
        "extra_rows": 0 if extra is None else len(extra),
        "k_verify": args.k,
        "folds": args.folds,
        "deals": args.deals,
        "seed": args.seed,
        "distinct_top_k": args.distinct_top_k,
    }
    n_candidates = int(outcomes["candidate"].nunique())
    tasks_per_pair = float(outcomes.groupby(["catalog", "a", "b"])["task"].nunique().mean())
    report["cost"] = {
        "exhaustive_merges_per_pair": n_candidates,
        "exhaustive_evals_per_pair": n_candidates * tasks_per_pair,
        "selector_merges_per_pair": 0,
        "verified_merges_per_pair": args.k,
        "verified_evals_per_pair": args.k * tasks_per_pair,
        "fewer_merge_evals_with_k": n_candidates / args.k,
    }
    t0 = time.perf_counter()
    schemes = {
        "held-out models": (
            frame,
            model_folds(frame, args.folds, args.seed, deals=args.deals),
            None,
        ),
        "held-out tasks": (frame, task_folds(frame), None),
    }
    rebuilt = None if args.no_remeasured else load_remeasured(args.data)
    if rebuilt is not None:
        features_r, first_r, second_r = rebuilt
        test = training_frame(features_r, first_r)
        rebuilt_frame = pd.concat([replace_pairs(frame, test), test], ignore_index=True)
        second = pair_objective(second_r, "normalized")
        for scheme, remeasured in (("first", None), ("second", second)):
            schemes[f"held-out models, rebuilt zoo, {scheme} measurement"] = (
                rebuilt_frame,
                model_folds(rebuilt_frame, args.folds, args.seed),
                remeasured,
            )
        report["remeasured_pairs"] = int(second.droplevel("candidate").index.nunique())
    for scheme, (data, folds, remeasured) in schemes.items():
        cv = cross_validate(
            data,
            folds,
            models,
            args.k,
            anchored=("simmerge",),
            extra=extra,
            remeasured=remeasured,
            distinct=args.distinct_top_k,
        )
        results = {m: summarize(cv.pooled[m]) for m in cv.pooled}
        results["anchoring_margins"] = cv.margins
        report[scheme] = results
        print(format_table(f"\n{scheme} ({args.data})", results, args.k))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    cost = report["cost"]
    print(
        f"\ncost per pair: exhaustive {cost['exhaustive_merges_per_pair']} merges + "
        f"{cost['exhaustive_evals_per_pair']:.1f} evals; selector 0; with top-{args.k} "
        f"verification {args.k} merges ({cost['fewer_merge_evals_with_k']:.1f}x fewer)"
    )
    name = Path(str(args.data)).name + (f"_deals{args.deals}" if args.deals > 1 else "")
    out = Path(args.json or ROOT / "scripts" / "results" / f"evaluate_selector_{name}.json")
    write_json_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
