"""Which columns should the multi-way plan model use? Leave-one-zoo-out comparison.

    python scripts/explore_plan_model_variants.py [--zoos tiny-zoo,tiny-zoo-s1,tiny-zoo-s2]

For each zoo, plan model variants (column sets) are fitted on the *other* zoos' training tables
(``features/multiway/<zoo>.parquet``) and score every plan of that zoo's bounded space; the
pick per task set is the plan with the best predicted mean over its target tasks. Gap
closure is against the best-fixed and oracle values of ``runs/multiway/analytic_<zoo>.json``
(written by ``scripts/evaluate_multiway.py --json``, as ``scripts/regenerate_plan_model.sh``
does). This scores the whole space, so it measures the model, not the beam search that
``plan_merge`` adds on top (``scripts/evaluate_multiway.py`` measures that). Prints a table
and writes ``scripts/results/explore_plan_model_variants.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def variants() -> dict[str, list[str]]:
    from simmerge.plan_model import analysis_columns, plan_columns

    shipped = list(plan_columns())
    return {
        "analytic score alone (no model)": [],
        "shipped columns": shipped,
        "+ similarity columns": shipped + list(analysis_columns()),
        "- step predictions": [c for c in shipped if not c.startswith("step_")],
        "- analytic score": [c for c in shipped if c != "analytic"],
    }


def pick_values(test, predicted: np.ndarray, report: dict) -> tuple[np.ndarray, ...]:
    """(picked, best-fixed, oracle) value per task set of ``report``."""
    test = test.assign(pred=predicted)
    picked, fixed, oracle = [], [], []
    for rec in report["task_sets"]:
        tasks = rec["tasks"]
        rows = test[test["task"].isin(tasks)].groupby("plan")
        complete = rows["task"].count() == len(tasks)  # plans measured on every target task
        value, pred = rows["target"].mean()[complete], rows["pred"].mean()[complete]
        picked.append(value[pred.idxmax()])
        fixed.append(rec["best_fixed"])
        oracle.append(rec["oracle"])
    return tuple(np.array(v) for v in (picked, fixed, oracle))


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from simmerge.io_utils import write_json_report
    from simmerge.plan_model import PlanModel

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoos", default="tiny-zoo,tiny-zoo-s1,tiny-zoo-s2")
    p.add_argument("--json", default=str(ROOT / "scripts/results/explore_plan_model_variants.json"))
    args = p.parse_args(argv)
    zoos = args.zoos.split(",")
    tables = {z: pd.read_parquet(ROOT / "features" / "multiway" / f"{z}.parquet") for z in zoos}
    reports = {
        z: json.loads((ROOT / "runs" / "multiway" / f"analytic_{z}.json").read_text()) for z in zoos
    }
    results: dict[str, dict[str, float]] = {}
    for name, columns in variants().items():
        results[name] = {}
        for test_zoo in zoos:
            test = tables[test_zoo]
            if columns:
                train = pd.concat([tables[z] for z in zoos if z != test_zoo], ignore_index=True)
                model = PlanModel(columns=tuple(columns), params={"num_threads": 1})
                predicted = model.fit(train, train["target"]).predict(test)[0]
            else:
                predicted = test["analytic"].to_numpy()
            picked, fixed, oracle = pick_values(test, predicted, reports[test_zoo])
            results[name][test_zoo] = float((picked - fixed).sum() / (oracle - fixed).sum())
        results[name]["mean"] = float(np.mean([results[name][z] for z in zoos]))
    width = max(len(n) for n in results)
    print("gap closure of the best-predicted plan per task set, model fitted on the other zoos")
    print(f"{'variant':<{width}} " + " ".join(f"{z:>12}" for z in [*zoos, "mean"]))
    for name, r in results.items():
        print(f"{name:<{width}} " + " ".join(f"{r[z]:>12.3f}" for z in [*zoos, "mean"]))
    write_json_report(Path(args.json), {"zoos": zoos, "gap_closure": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
