"""Compare two pair-feature tables of the same catalog, e.g. computed on two builds of a zoo.

    python scripts/compare_feature_tables.py features/smol-large NEW_TABLE \
        [--exclude-models sort_json,words_en_de] [--json OUT]

Outcome rows can agree exactly between two builds (scripts/compare_outcome_tables.py) while
the similarity features do not: a forward pass or a weight sketch that rounds differently on
another CPU kind moves them a little, and features are what the predictor reads. Rows are
matched on (catalog, a, b, task); pairs with an expert in ``--exclude-models`` are left out
(experts known to differ between the builds). Prints, per numeric column that differs, the
largest and the mean absolute difference, the mean absolute value in the first table (for
scale) and how many matched rows differ by more than 1e-6; writes the same as JSON
(default ``scripts/results/compare_feature_tables.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["catalog", "a", "b", "task"]
TOLERANCE = 1e-6


def compare(old, new, exclude: set[str]) -> dict[str, object]:
    """Per numeric column, how the matched rows of ``new`` differ from ``old``."""
    matched = old.merge(new, on=KEYS, suffixes=("_old", "_new"))
    matched = matched[~(matched["a"].isin(exclude) | matched["b"].isin(exclude))]
    columns = [c for c in old.columns if c not in KEYS and old[c].dtype.kind == "f"]
    diffs = {}
    for c in columns:
        d = (matched[f"{c}_old"] - matched[f"{c}_new"]).abs().to_numpy()
        both_nan = matched[f"{c}_old"].isna() & matched[f"{c}_new"].isna()
        d = np.where(both_nan.to_numpy(), 0.0, d)  # absent in both: equal
        differ = int(np.sum(~(d <= TOLERANCE)))  # NaN on one side only counts as differing
        if differ:
            diffs[c] = {
                "max_abs": float(np.nanmax(d)),
                "mean_abs": float(np.nanmean(d)),
                "mean_abs_value": float(matched[f"{c}_old"].abs().mean()),
                "rows_differing": differ,
            }
    return {
        "matched_rows": len(matched),
        "columns": len(columns),
        "columns_differing": len(diffs),
        "excluded_models": sorted(exclude),
        "differences": diffs,
    }


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from simmerge.infra.files import write_json_report
    from simmerge.learn.datasets import PAIR_FEATURES_FILE, dataset_folder

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old", help="dataset name or folder")
    p.add_argument("new", help="dataset name or folder")
    p.add_argument("--exclude-models", default="")
    p.add_argument("--json", default=str(ROOT / "scripts/results/compare_feature_tables.json"))
    args = p.parse_args(argv)
    old = pd.read_parquet(dataset_folder(args.old) / PAIR_FEATURES_FILE)
    new = pd.read_parquet(dataset_folder(args.new) / PAIR_FEATURES_FILE)
    report = compare(old, new, {m for m in args.exclude_models.split(",") if m})
    report.update(old=str(args.old), new=str(args.new))
    print(
        f"{report['matched_rows']} matched rows, {report['columns_differing']} of "
        f"{report['columns']} numeric columns differ"
    )
    head = f"{'column':>24} {'max |diff|':>12} {'mean |diff|':>12} {'mean |value|':>13} {'rows':>6}"
    print(head + "\n" + "-" * len(head))
    for c, d in report["differences"].items():
        print(
            f"{c:>24} {d['max_abs']:>12.4g} {d['mean_abs']:>12.4g} {d['mean_abs_value']:>13.4g} "
            f"{d['rows_differing']:>6}"
        )
    write_json_report(Path(args.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
