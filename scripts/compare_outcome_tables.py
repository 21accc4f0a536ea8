"""How far two measurements of the same merges agree: compare two ``outcomes.parquet`` tables.

    python scripts/compare_outcome_tables.py OLD.parquet NEW.parquet [--json OUT]

Why: the shipped training data was regenerated with today's library versions (the zoo build is
deterministic for one set of versions only), and the question "how different is the new data"
needs a number anyone can rerun, not a one-off join. The old table is in git history, e.g.
``git show <commit>:features/zoo-large/outcomes.parquet > old.parquet``.

Rows are matched on (a, b, candidate, task), the key of an outcome. Prints, overall and per
operator: matched rows, the share of identical normalized scores, the mean absolute difference
of the raw and the normalized scores and their Pearson correlation; also the rows only one
table has. Writes the same as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

KEY = ["a", "b", "candidate", "task"]


def agreement(old, new) -> dict:
    """Agreement statistics of two matched score columns (``*_old`` / ``*_new``)."""
    import numpy as np

    def corr(x, y) -> float | None:
        return float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() and y.std() else None

    return {
        "rows": int(len(old)),
        "normalized_identical": float((old["normalized"] == new["normalized"]).mean()),
        "score_mean_abs_diff": float((old["score"] - new["score"]).abs().mean()),
        "normalized_mean_abs_diff": float((old["normalized"] - new["normalized"]).abs().mean()),
        "score_correlation": corr(old["score"], new["score"]),
        "normalized_correlation": corr(old["normalized"], new["normalized"]),
    }


def compare(old, new) -> dict:
    """Match the two tables on the outcome key and summarize their agreement."""
    joined = old.merge(new, on=KEY, suffixes=("_old", "_new"), how="outer", indicator=True)
    both = joined[joined["_merge"] == "both"]

    def side(frame, suffix: str):
        return frame[[f"score_{suffix}", f"normalized_{suffix}"]].set_axis(
            ["score", "normalized"], axis=1
        )

    per_operator = {
        str(op): agreement(side(group, "old"), side(group, "new"))
        for op, group in both.groupby("operator_old")
    }
    return {
        "overall": agreement(side(both, "old"), side(both, "new")),
        "per_operator": per_operator,
        "only_in_old": int((joined["_merge"] == "left_only").sum()),
        "only_in_new": int((joined["_merge"] == "right_only").sum()),
    }


def print_table(result: dict) -> None:
    rows = [("all", result["overall"])] + sorted(result["per_operator"].items())
    print(f"{'operator':<16} {'rows':>6} {'identical':>9} {'mad':>6} {'corr':>6}")
    for name, stats in rows:
        corr = stats["normalized_correlation"]
        print(
            f"{name:<16} {stats['rows']:>6} {stats['normalized_identical']:>9.3f} "
            f"{stats['normalized_mean_abs_diff']:>6.3f} "
            f"{'-' if corr is None else f'{corr:.3f}':>6}"
        )
    print(f"rows only in old: {result['only_in_old']}, only in new: {result['only_in_new']}")


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--json", type=Path, help="write the comparison here")
    parser.add_argument(
        "--old-label", help="what OLD is, for the JSON (e.g. 'git show COMMIT:PATH')"
    )
    args = parser.parse_args(argv)
    for path in (args.old, args.new):
        if not path.is_file():
            parser.error(f"{path} is not a file; pass two outcomes.parquet files (old, new).")
    result = compare(pd.read_parquet(args.old), pd.read_parquet(args.new))
    result["old"], result["new"] = args.old_label or str(args.old), str(args.new)
    print_table(result)
    if args.json:
        from simmerge.infra.files import write_json_report

        write_json_report(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
