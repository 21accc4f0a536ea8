"""Score the multi-way evaluation's picks a second time, on fresh eval examples.

    python scripts/remeasure_multiway.py runs/zoo runs/zoo-s1 runs/zoo-s2 [--examples 1000]

Why: ``scripts/evaluate_multiway.py``'s oracle is the best of ~200-300 plans, each measured on
200 examples per task, so it is biased upwards by the noise it was picked on (the winner's
curse), and every method is marked down for that noise. For each zoo (built as in
``features/DATASHEET.md``) this script reads the evaluation's picks
(``scripts/results/evaluate_multiway_<catalog>.json``) and the first measurement of every plan
(``features/multiway/<catalog>.parquet``), and merges and scores again, on ``--examples``
fresh prompts per task disjoint from the first set:

* each method's pick (fast, exact, with and without the plan model);
* best-fixed's plan (the N-way operator chosen on the other task sets, as in the evaluation);
* **exhaustive**: the plan exhaustive search picks, i.e. the argmax of the first measurement.

Gap closure is then (method - best-fixed) / (exhaustive - best-fixed), all on the second
measurement: how much of what the full merge-and-evaluate loop gains over best-fixed a method
gets without it. ``random`` (the mean of all plans) is not remeasured. The first measurement's
figures for the same sets are printed beside it. Scores are cached in
``runs/multiway/<catalog>-remeasure.jsonl`` (resumable). Writes
``scripts/results/remeasure_multiway.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

STREAM = "remeasure"


def first_values(table, tasks, plans) -> dict[str, float]:
    """The first-measurement score of each of ``plans`` on a task set: the mean normalized
    score over the tasks (a plan of another task set may have rows for these tasks too)."""
    rows = table[table["task"].isin(tasks) & table["plan"].isin(plans)]
    per_plan = rows.groupby("plan")["target"].agg(["mean", "size"])
    return {p: float(r["mean"]) for p, r in per_plan.iterrows() if r["size"] == len(tasks)}


def summary(records: list[dict], key: str, methods: list[str]) -> dict[str, dict[str, float]]:
    """Gap closure and % of the reference per method, on measurement ``key``."""
    ref = np.array([r[key]["exhaustive"] for r in records])
    bf = np.array([r[key]["best_fixed"] for r in records])
    gap = float((ref - bf).sum())
    out = {}
    for m in [*methods, "best_fixed", "exhaustive"]:
        sel = np.array([r[key][m] for r in records])
        out[m] = {
            "mean": float(sel.mean()),
            "gap_closure": float((sel - bf).sum() / gap) if gap > 1e-9 else float("nan"),
            "pct_of_exhaustive": float(sel.sum() / ref.sum()) if ref.sum() > 0 else float("nan"),
        }
    return out


def remeasure_zoo(zoo: Path, args: argparse.Namespace) -> tuple[str, list[dict], list[str]]:
    import json

    import pandas as pd
    from evaluate_multiway import ScoreCache, best_fixed_ops, bounded_space, fixed_plans, measure

    from simmerge.catalog import Catalog
    from simmerge.errors import ConfigError
    from simmerge.evaluation.scorer import MergeScorer
    from simmerge.infra.resources import data_dir
    from simmerge.merging.registry import get_operator
    from simmerge.zoo.build import remeasure_catalog

    name = Catalog.load(zoo / "catalog.yaml").name
    results = Path(args.results_dir or ROOT / "scripts" / "results")
    tables = Path(args.tables_dir or data_dir("features") / "multiway")
    report = json.loads((results / f"evaluate_multiway_{name}.json").read_text())
    table = pd.read_parquet(tables / f"{name}.parquet")
    catalog = Catalog.load(remeasure_catalog(zoo, args.examples, STREAM))
    grid = tuple(report["grid"])
    nway = tuple(g for g in grid if get_operator(g.partition("[")[0]).max_members is None)
    methods = [m for m in report["results"] if isinstance(report["task_sets"][0].get(m), dict)]
    methods = [m for m in methods if "plan" in report["task_sets"][0][m]]
    scorer = MergeScorer(catalog)
    caches = Path(args.cache_dir or ROOT / "runs" / "multiway")
    cache = ScoreCache(caches / f"{name}-{STREAM}.jsonl")
    records = []
    refs: dict[str, float] = {}  # task -> its best expert's score on the fresh examples
    try:
        ops = best_fixed_ops(report["task_sets"])
        for rec, op in zip(report["task_sets"], ops, strict=True):
            tasks = rec["tasks"]
            space = {
                p.id: p for p in bounded_space(catalog, tasks, report["max_models"], grid, nway)
            }
            first = first_values(table, tasks, set(space))
            if len(first) != len(space) or len(space) != rec["space"]:
                raise ConfigError(
                    f"{name} {tasks}: the table has {len(first)} of the space's {len(space)} "
                    f"plans; the evaluation measured {rec['space']}.",
                    "regenerate the table and the evaluation together "
                    "(scripts/regenerate_plan_model.sh).",
                )
            exhaustive = max(first, key=first.get)
            if abs(first[exhaustive] - rec["oracle"]) > 1e-9:
                raise ConfigError(
                    f"{name} {tasks}: the table's best plan scores {first[exhaustive]:.4f}, the "
                    f"evaluation's oracle {rec['oracle']:.4f}.",
                    "regenerate the table and the evaluation together "
                    "(scripts/regenerate_plan_model.sh).",
                )
            fixed = fixed_plans(catalog, tasks, report["max_models"], nway)
            picks = {m: rec[m]["plan"] for m in methods}
            picks["exhaustive"] = exhaustive
            if op is not None:
                picks["best_fixed"] = fixed[op].id
            else:  # as the evaluation: the better fixed plan, or the mean plan without one
                picks["best_fixed"] = max(
                    (p.id for p in fixed.values()), key=first.get, default=None
                )
            if picks["best_fixed"] is None:
                continue  # no fixed plan to compare with (never the case on the default zoo)
            plans = [space[p] for p in sorted(set(picks.values()))]
            raw = measure(plans, tasks, catalog, scorer, cache, not args.quiet)
            for t in set(tasks) - set(refs):
                refs[t] = max(scorer.score_folder(e, [t])[t] for e in catalog.experts_for(t))
            second = {
                p: float(np.mean([s[t] / refs[t] if refs[t] > 0 else 0.0 for t in tasks]))
                for p, s in raw.items()
            }
            records.append(
                {
                    "catalog": name,
                    "tasks": tasks,
                    "plans": picks,
                    "first": {m: first[p] for m, p in picks.items()},
                    "second": {m: second[p] for m, p in picks.items()},
                }
            )
    finally:
        cache.close()
    return name, records, methods


def main(argv: list[str] | None = None) -> int:
    from simmerge.infra.files import write_json_report

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("zoos", nargs="+", help="zoo folders of evaluated catalogs")
    p.add_argument("--examples", type=int, default=1000, help="fresh eval examples per task")
    p.add_argument("--json", default=str(ROOT / "scripts/results/remeasure_multiway.json"))
    p.add_argument(
        "--results-dir", default=None, help="evaluate_multiway reports (scripts/results)"
    )
    p.add_argument("--tables-dir", default=None, help="plan tables (features/multiway)")
    p.add_argument("--cache-dir", default=None, help="score caches (runs/multiway)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    all_records: list[dict] = []
    report: dict[str, object] = {"examples_per_task": args.examples, "zoos": {}}
    methods: list[str] = []
    for zoo in map(Path, args.zoos):
        name, records, methods = remeasure_zoo(zoo, args)
        all_records += records
        report["zoos"][name] = {
            "first": summary(records, "first", methods),
            "second": summary(records, "second", methods),
            "task_sets": records,
        }
    pooled = {k: summary(all_records, k, methods) for k in ("first", "second")}
    report["pooled"] = pooled
    print(f"\n{len(all_records)} task sets; gap closure vs exhaustive search's pick")
    head = f"{'method':>19} {'first':>8} {'second':>8} {'% exh. (2nd)':>13} {'mean (2nd)':>11}"
    print(head + "\n" + "-" * len(head))
    for m in [*methods, "best_fixed", "exhaustive"]:
        f, s = pooled["first"][m], pooled["second"][m]
        print(
            f"{m:>19} {f['gap_closure']:>8.3f} {s['gap_closure']:>8.3f} "
            f"{s['pct_of_exhaustive']:>13.3f} {s['mean']:>11.3f}"
        )
    write_json_report(Path(args.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
