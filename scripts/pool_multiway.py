"""Pool the multi-way evaluation of several zoos into one table (the "all 100 sets" of
docs/results/multiway.md).

    python scripts/pool_multiway.py [scripts/results/evaluate_multiway_tiny-zoo.json ...]
                                    [--json scripts/results/evaluate_multiway_pooled.json]

Why: ``scripts/evaluate_multiway.py`` reports each zoo on its own 20 task sets, where one pick
moves a zoo's figure by several points; the headline figure of docs/results/multiway.md pools the
task sets of all zoos, and a pooled figure must come from a script, not from arithmetic by hand.

Per method, over every task set of every file: gap closure Σ(selected − best-fixed) /
Σ(oracle − best-fixed) (as docs/design.md defines it, pooled over task sets), % of oracle (mean
selected / mean oracle, as the per-zoo reports), the mean normalized score, the mean
*predicted* score of the picks (where the method predicts one), the share of task sets whose
pick is worse than best-fixed by more than 0.01 (risk), and each zoo's own gap closure.
Defaults to the five zoos of ``scripts/regenerate_plan_model.sh``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results"
DEFAULT_FILES = [
    RESULTS / f"evaluate_multiway_{name}.json"
    for name in ("tiny-zoo", "tiny-zoo-s1", "tiny-zoo-s2", "tiny-zoo-s3", "tiny-zoo-s4")
]
RISK_TOLERANCE = 0.01


def pick_value(entry) -> tuple[float, float | None]:
    """(measured score, predicted score or None) of one method on one task set."""
    if isinstance(entry, dict):
        return float(entry["value"]), entry.get("predicted")
    return float(entry), None


def pool(reports: list[dict]) -> dict[str, dict]:
    """Pooled metrics per method over the task sets of all ``reports``."""
    methods = sorted(reports[0]["results"])
    pooled: dict[str, dict] = {}
    for method in methods:
        selected, fixed, oracle, predicted, per_zoo = [], [], [], [], {}
        for report in reports:
            zoo_sel, zoo_fixed, zoo_oracle = [], [], []
            for task_set in report["task_sets"]:
                value, pred = pick_value(task_set[method])
                zoo_sel.append(value)
                zoo_fixed.append(float(task_set["best_fixed"]))
                zoo_oracle.append(float(task_set["oracle"]))
                if pred is not None:
                    predicted.append(float(pred))
            per_zoo[report["catalog"]] = gap_closure(zoo_sel, zoo_fixed, zoo_oracle)
            selected += zoo_sel
            fixed += zoo_fixed
            oracle += zoo_oracle
        pooled[method] = {
            "gap_closure": gap_closure(selected, fixed, oracle),
            "pct_of_oracle": sum(selected) / sum(oracle),
            "mean": sum(selected) / len(selected),
            "mean_predicted": sum(predicted) / len(predicted) if predicted else None,
            "risk": sum(s < f - RISK_TOLERANCE for s, f in zip(selected, fixed, strict=True))
            / len(selected),
            "task_sets": len(selected),
            "per_zoo_gap_closure": per_zoo,
        }
    return pooled


def gap_closure(selected, fixed, oracle) -> float:
    gap = sum(o - f for o, f in zip(oracle, fixed, strict=True))
    gain = sum(s - f for s, f in zip(selected, fixed, strict=True))
    return gain / gap if gap else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", type=Path, default=DEFAULT_FILES)
    parser.add_argument("--json", type=Path, default=RESULTS / "evaluate_multiway_pooled.json")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.reports if not p.is_file()]
    if missing:
        parser.error(
            f"no report at {', '.join(missing)}; run scripts/evaluate_multiway.py for those zoos "
            "(scripts/regenerate_plan_model.sh runs all five) or pass existing report files."
        )
    reports = [json.loads(p.read_text()) for p in args.reports]
    pooled = pool(reports)
    zoos = [r["catalog"] for r in reports]
    print(
        f"{'method':<19} {'gap clos.':>9} {'% oracle':>8} {'mean':>6} {'predicted':>9} "
        f"{'risk':>5}  per zoo ({', '.join(zoos)})"
    )
    for method, row in pooled.items():
        pred = "-" if row["mean_predicted"] is None else f"{row['mean_predicted']:.3f}"
        zoo = " / ".join(f"{row['per_zoo_gap_closure'][z]:.2f}" for z in zoos)
        print(
            f"{method:<19} {row['gap_closure']:>9.3f} {row['pct_of_oracle']:>8.3f} "
            f"{row['mean']:>6.3f} {pred:>9} {row['risk']:>5.2f}  {zoo}"
        )
    from simmerge.infra.files import write_json_report

    write_json_report(
        args.json,
        {
            "reports": [
                str(p.relative_to(ROOT)) if p.is_absolute() and ROOT in p.parents else str(p)
                for p in args.reports
            ],
            "pooled": pooled,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
