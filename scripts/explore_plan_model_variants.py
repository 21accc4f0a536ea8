"""Which columns should the multi-way plan model use? Leave-one-zoo-out comparison.

    python scripts/explore_plan_model_variants.py [--zoos tiny-zoo,tiny-zoo-s1,...]
    python scripts/explore_plan_model_variants.py --zoos tiny-zoo,tiny-zoo-s1,tiny-zoo-s2 \
        --holdout tiny-zoo-s3,tiny-zoo-s4

For each zoo, plan model variants (column sets) are fitted on the *other* zoos' training tables
(``features/multiway/<zoo>.parquet``) and score every plan of that zoo's bounded space; the
pick per task set is the plan with the best predicted mean over its target tasks. Gap
closure is against the best-fixed and oracle values of ``runs/multiway/analytic_<zoo>.json``
(written by ``scripts/evaluate_multiway.py --json``, as ``scripts/regenerate_plan_model.sh``
does). This scores the whole space, so it measures the model, not the beam search that
``plan_merge`` adds on top (``scripts/evaluate_multiway.py`` measures that).

With ``--holdout`` every variant is instead fitted on all of ``--zoos`` and tested on the
held-out zoos: a check of choices made on ``--zoos`` on zoos that played no part in them
(written to ``..._holdout.json``). ``--zoos`` and ``--holdout`` may name real catalogs'
tables too (``smol-small``, ``gemma-small``, ...); a catalog with no
``runs/multiway/analytic_<name>.json`` takes its best-fixed and oracle values from the
shipped report ``scripts/results/evaluate_multiway_<name>.json``. ``--shipped-only`` keeps the
one row of the shipped columns and seed (e.g. a transfer row: the plan model fitted on SmolLM2
and tiny zoos, tested on Gemma without retraining).

More rows, on the shipped columns: LightGBM's default leaf size instead of the plan model's
(``PLAN_PARAMS``), the same model with other training seeds
(``--seeds``: does the pick move with the bagging draw, as the 2-way predictor's does?), and
the **anchored** rule of the 2-way selector -- keep best-fixed's plan unless another plan is
predicted to beat it by more than a margin (``--margins``, fixed here, not chosen by inner
cross-validation). Best-fixed's plan is the one-shot plan whose measured mean equals the
recorded best-fixed value (sets where no single one-shot plan matches keep the plain pick).
One row is no model at all: each plan is scored by its *measured* score on the same task in the
training zoos (the zoos share expert names, so a plan there is "the same plan"); a real catalog
has no such twin, so this only bounds what learning across catalogs can give. A last pair of
rows fits the target minus its mean over each task's plans (the per-task level
is the same for every plan, so it cancels in a pick, as the 2-way predictor's level does).
Every row also has the pooled gap closure, the risk (the share of task sets whose pick is
worse than best-fixed by more than 0.01), the median, over task sets, of the number of
plans the model ranks above the best measured one, and the pooled gap closure with the top 3
verified (the best measured of the three best-predicted plans).

Prints a table and writes ``scripts/results/explore_plan_model_variants.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def variants() -> dict[str, list[str]]:
    from simmerge.learn.plan_model import SKILL_COLUMN, analysis_columns, plan_columns

    shipped = list(plan_columns())
    return {
        "analytic score alone (no model)": [],
        "shipped columns": shipped,
        "- single-model skill": [c for c in shipped if c != SKILL_COLUMN],
        "+ similarity columns": shipped + list(analysis_columns()),
        "- step predictions": [c for c in shipped if not c.startswith("step_")],
        "- analytic score": [c for c in shipped if c != "analytic"],
    }


VERIFIED = 3  # plans merged and evaluated in the "top 3 verified" figure


def pick_values(
    test, predicted: np.ndarray, report: dict, margin: float = 0.0
) -> tuple[np.ndarray, ...]:
    """(picked, best-fixed, oracle) value per task set of ``report``, how many plans the
    model ranks above the best measured one, and the best measured value among the
    ``VERIFIED`` best-predicted plans; with ``margin``, the anchored rule (module docs)."""
    test = test.assign(pred=predicted)
    picked, fixed, oracle, oracle_rank, verified = [], [], [], [], []
    for rec in report["task_sets"]:
        tasks = rec["tasks"]
        rows = test[test["task"].isin(tasks)].groupby("plan")
        complete = rows["task"].count() == len(tasks)  # plans measured on every target task
        value, pred = rows["target"].mean()[complete], rows["pred"].mean()[complete]
        if margin:
            oneshot = value[(rows["oneshot"].first()[complete] == 1).to_numpy()]
            anchor = oneshot.index[np.abs(oneshot.to_numpy() - rec["best_fixed"]) < 1e-9]
            if len(anchor) == 1:
                pred = pred.copy()
                pred[anchor[0]] += margin
        picked.append(value[pred.idxmax()])
        fixed.append(rec["best_fixed"])
        oracle.append(rec["oracle"])
        oracle_rank.append(int((pred > pred[value.idxmax()]).sum()))
        verified.append(value[pred.nlargest(VERIFIED).index].max())
    return tuple(np.array(v) for v in (picked, fixed, oracle, oracle_rank, verified))


def multiway_report(name: str) -> dict:
    """Best-fixed and oracle values per task set of one catalog: the report that
    ``scripts/regenerate_plan_model.sh`` writes for a tiny zoo, else the shipped one."""
    local = ROOT / "runs" / "multiway" / f"analytic_{name}.json"
    shipped = ROOT / "scripts" / "results" / f"evaluate_multiway_{name}.json"
    return json.loads((local if local.is_file() else shipped).read_text())


MULTIWAY_ZOOS = "tiny-zoo,tiny-zoo-s1,tiny-zoo-s2,tiny-zoo-s3,tiny-zoo-s4"


@dataclass(frozen=True)
class Variant:
    columns: tuple[str, ...]  # empty: the analytic score alone
    seed: int = 0
    margin: float = 0.0
    demean: bool = False
    params: tuple[tuple[str, Any], ...] = ()  # LightGBM parameters over the plan model's
    lookup: bool = False  # no model: each plan's measured mean in the training zoos


def variant_rows(args) -> dict[str, Variant]:
    shipped = tuple(variants()["shipped columns"])
    if args.shipped_only:
        return {"shipped columns": Variant(shipped)}
    rows = {name: Variant(tuple(columns)) for name, columns in variants().items()}
    rows["lookup: the same plan's measured score in the training zoos (names; no model)"] = Variant(
        (), lookup=True
    )
    rows["shipped columns, LightGBM's default leaves (>= 20 rows)"] = Variant(
        shipped, params=(("min_data_in_leaf", 20),)
    )
    for seed in [int(s) for s in args.seeds.split(",") if s and int(s) != 0]:
        rows[f"shipped columns, seed {seed}"] = Variant(shipped, seed)
    for margin in [float(m) for m in args.margins.split(",") if m]:
        rows[f"shipped columns, anchored {margin:g}"] = Variant(shipped, margin=margin)
    for seed in (0, 100):
        rows[f"target minus its per-task mean, seed {seed}"] = Variant(shipped, seed, demean=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from pool_multiway import gap_closure

    from simmerge.infra.files import write_json_report
    from simmerge.learn.plan_model import PlanModel

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoos", default=MULTIWAY_ZOOS, help="zoos (leave one out over them)")
    p.add_argument(
        "--holdout",
        default="",
        help="zoos to test on instead, each with a model fitted on all of --zoos",
    )
    p.add_argument("--seeds", default="0,100,200,300", help="training seeds of the shipped columns")
    p.add_argument("--margins", default="0.05,0.1,0.15", help="anchoring margins")
    p.add_argument("--shipped-only", action="store_true", help="only the shipped columns' row")
    p.add_argument(
        "--json",
        default=None,
        help="default: scripts/results/explore_plan_model_"
        "variants.json (with --holdout: ..._holdout.json)",
    )
    args = p.parse_args(argv)
    zoos = args.zoos.split(",")
    holdout = [z for z in args.holdout.split(",") if z]
    tested = holdout or zoos
    tables = {
        z: pd.read_parquet(ROOT / "features" / "multiway" / f"{z}.parquet")
        for z in dict.fromkeys([*zoos, *holdout])
    }
    reports = {z: multiway_report(z) for z in tested}
    results: dict[str, dict[str, float]] = {}
    for name, v in variant_rows(args).items():
        results[name] = {}
        pooled = []
        for test_zoo in tested:
            test = tables[test_zoo]
            train = pd.concat([tables[z] for z in zoos if z != test_zoo], ignore_index=True)
            if v.lookup:
                known = train.groupby(["plan", "task"])["target"].mean()
                predicted = known.reindex(pd.MultiIndex.from_frame(test[["plan", "task"]]))
                predicted = predicted.to_numpy()
            elif v.columns:
                params = {"num_threads": 1, **dict(v.params)}
                model = PlanModel(columns=v.columns, seed=v.seed, params=params)
                target = train["target"]
                if v.demean:  # a task's level is the same for all its plans: it cancels
                    target = target - train.groupby(["catalog", "task"])["target"].transform("mean")
                predicted = model.fit(train, target).predict(test)
            else:
                predicted = test["analytic"].to_numpy()
            picks = pick_values(test, predicted, reports[test_zoo], v.margin)
            picked, fixed, oracle, *_ = picks
            results[name][test_zoo] = float(gap_closure(picked, fixed, oracle))
            pooled.append(picks)
        picked, fixed, oracle, rank, verified = (
            np.concatenate(x) for x in zip(*pooled, strict=True)
        )
        results[name]["mean"] = float(np.mean([results[name][z] for z in tested]))
        results[name]["pooled"] = float(gap_closure(picked, fixed, oracle))
        results[name]["risk"] = float(np.mean(picked < fixed - 0.01))
        results[name]["median_oracle_rank"] = float(np.median(rank))
        results[name][f"pooled_verify{VERIFIED}"] = float(gap_closure(verified, fixed, oracle))
    width = max(len(n) for n in results)
    cols = [*tested, "mean", "pooled", "risk", "median_oracle_rank", f"pooled_verify{VERIFIED}"]
    if holdout:
        print(f"gap closure of the best-predicted plan per task set, model fitted on {zoos}")
    else:
        print("gap closure of the best-predicted plan per task set, model fitted on the other zoos")
    print(f"{'variant':<{width}} " + " ".join(f"{z:>12}" for z in cols))
    for name, r in results.items():
        print(f"{name:<{width}} " + " ".join(f"{r[z]:>{max(12, len(z))}.3f}" for z in cols))
    default = "explore_plan_model_variants" + ("_holdout" if holdout else "") + ".json"
    out = Path(args.json or ROOT / "scripts" / "results" / default)
    write_json_report(out, {"zoos": zoos, "tested": tested, "gap_closure": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
