"""Selector variants tried against the shipped predictor's recipe (negative results kept).

    python scripts/explore_selector_variants.py [--data zoo-large] [--splits models,tasks]

Same data and splits as scripts/evaluate_selector.py (``--data``, default zoo-large, plus the
``--extra`` training-only datasets if any -- none by default, as there; group 5-fold by model,
``--deals`` deals of the models pooled from ``--seed`` on, and leave-one-task-out), without the
anchored rule except in the ``anchoring`` group. A variant chosen on this table is chosen on
its test pairs: confirm it on deals it was not chosen on (another ``--seed``) before adopting
it. Variants:

* ``regression`` -- the shipped recipe: level + deviation LightGBM regression, argmax of the
  mean predicted normalized score over the pair's tasks;
* ``lcb k`` -- argmax of mean - k * ensemble sd (does the seed ensemble's spread flag risky
  picks?);
* ``z-switch k`` -- keep best-fixed unless the predicted best beats it by k combined sds;
* ``lambdarank`` / ``rank_xendcg`` -- a ranking objective within each (pair, task), with
  graded relevance (the range of each group cut into ``levels``), scores standardized per group
  before averaging over the pair's tasks;
* LightGBM settings: fewer/more leaves, larger leaves, and the stronger regularization a small
  catalog may need (7 leaves, 200 rows per leaf, an L1 loss that a few noisy outcomes pull
  less);
* ``catalog-relative (rank|z)`` -- the similarity columns replaced by their percentile rank
  (or z-score) among the rows of their own catalog, so that catalogs with another base model
  line up (the extra training catalog is transformed on its own rows; at use time this needs
  the features of the user's whole catalog, which a scan has).

* ``derived`` -- analytic candidate features added to the deviation model: the nominal
  coefficients of the target task's expert and of the other expert in the merged task vector
  (:func:`merge_coefficients`), and from them and the pair's ``cos_all`` / ``norm_ratio_all``
  the retained share of the task's own task vector, the orthogonal interference and the
  merged norm, all relative to the own task vector's norm (a first-order picture of what a
  linear merge keeps of each expert).

* ``anchoring`` -- the anchored rule (keep best-fixed unless beaten by a margin), its margin
  chosen per fold by inner cross-validation on the fold's training pairs as
  ``evaluate_selector.py`` does (3 inner folds), or with 5 inner folds on a finer grid (the
  3-fold inner models see fewer models than the outer ones, so they may ask for too large a
  margin); plus fixed margins, which trace the gap-closure / risk trade-off but are tuned on
  the test pairs if read off this table. The margins chosen per fold are kept in the JSON.

``--groups`` runs some of the groups (regression, params, ranking, relative, derived,
anchoring); the other rows of an existing output file are kept.

Prints a table (gap closure and risk per split) and writes JSON (default
``scripts/results/explore_selector_variants.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GROUP_EXTRA = "task"
GROUPS = ("regression", "params", "ranking", "relative", "derived", "anchoring")
FINE_MARGINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2)
FIXED_MARGINS = (0.01, 0.02, 0.03, 0.05)
COEFFICIENTS = ("d_w_own", "d_w_other")
DERIVED = (*COEFFICIENTS, "d_retention", "d_interference", "d_merged_norm")


def merge_coefficients(df):
    """(own, other): the nominal weight of the target task's expert and of the other expert in
    the merged task vector -- linear 0.5 each, task arithmetic lambda each, slerp 1 - t for the
    first member and t for the second, model stock t/2 each with its 2-model ratio
    t = 2 cos / (1 + cos) (on ``cos_all``), 1 each for the sparsifying operators."""
    cos = df["cos_all"].clip(-1, 1)
    a = np.ones(len(df))
    b = np.ones(len(df))
    for op, wa, wb in (
        ("linear", 0.5, 0.5),
        ("task_arithmetic", df["hp_lambda"], df["hp_lambda"]),
        ("slerp", 1 - df["hp_t"], df["hp_t"]),
        ("model_stock", (cos / (1 + cos)).clip(0, 0.5), (cos / (1 + cos)).clip(0, 0.5)),
    ):
        on = (df[f"op_{op}"] == 1).to_numpy()
        a = np.where(on, wa, a)
        b = np.where(on, wb, b)
    own_is_a = (df["task_of_a"] == 1).to_numpy()
    return np.where(own_is_a, a, b), np.where(own_is_a, b, a)


def with_derived(df):
    """``df`` plus the :data:`DERIVED` columns (module docs)."""
    df = df.copy()
    own, other = merge_coefficients(df)
    ratio = np.where(df["task_of_a"] == 1, 1 / df["norm_ratio_all"], df["norm_ratio_all"])
    cos = df["cos_all"].clip(-1, 1).to_numpy()  # ratio: |tau_other| / |tau_own|
    df["d_w_own"], df["d_w_other"] = own, other
    df["d_retention"] = own + other * cos * ratio
    df["d_interference"] = other * ratio * np.sqrt(np.clip(1 - cos**2, 0, None))
    merged = own**2 + (other * ratio) ** 2 + 2 * own * other * cos * ratio
    df["d_merged_norm"] = np.sqrt(np.clip(merged, 0, None))
    return df


def main(argv: list[str] | None = None) -> int:
    import lightgbm as lgb
    import pandas as pd

    from simmerge.infra.files import write_json_report
    from simmerge.learn.anchoring import MARGINS, anchor, choose_margin
    from simmerge.learn.datasets import (
        extra_training_frame,
        load_training_tables,
        pair_objective,
        training_frame,
    )
    from simmerge.learn.metrics import best_fixed_candidate, per_pair, summarize
    from simmerge.learn.predictor import (
        DEFAULT_PARAMS,
        TASK_PREFIX,
        MergePredictor,
        predictor_columns,
        to_matrix,
    )
    from simmerge.learn.splits import PAIR, model_folds, task_folds, with_extra
    from simmerge.signals.similarity import FEATURE_COLUMNS, FUNCTIONAL_COLUMNS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="zoo-large", help="shipped dataset name or folder")
    parser.add_argument("--splits", default="models,tasks")
    parser.add_argument("--groups", default=",".join(GROUPS), help="variant groups to run")
    parser.add_argument(
        "--extra",
        default="",
        help="comma-separated training-only datasets from other catalogs, as for "
        "evaluate_selector.py ('' = none, the default)",
    )
    parser.add_argument("--deals", type=int, default=1, help="deals of the models, pooled")
    parser.add_argument("--seed", type=int, default=0, help="first deal's seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="LightGBM threads per fit (default: the predictor's); 1 when the cores are shared",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "scripts/results/explore_selector_variants.json")
    )
    args = parser.parse_args(argv)
    frame = training_frame(*load_training_tables(args.data))
    extra = extra_training_frame(args.extra)
    cols = list(predictor_columns())
    similarity_columns = {*FEATURE_COLUMNS, *(TASK_PREFIX + c for c in FUNCTIONAL_COLUMNS)}
    group = [*PAIR, GROUP_EXTRA]

    def folds(split):
        if split == "models":
            return model_folds(frame, 5, args.seed, args.deals)
        return task_folds(frame)

    threads = {} if args.threads is None else {"num_threads": args.threads}

    def relative(df, how):
        """Similarity columns as rank or z-score within each catalog (see the module docs)."""
        df = df.copy()
        for c in [c for c in cols if c in similarity_columns]:
            g = df.groupby("catalog")[c]
            if how == "rank":
                df[c] = g.rank(pct=True)
            else:
                df[c] = (df[c] - g.transform("mean")) / (g.transform("std") + 1e-12)
        return df

    def fold_data(split, how=None):
        if how is None:
            data, other = frame, extra
        elif how == "derived":
            data = with_derived(frame)
            other = None if extra is None else with_derived(extra)
        else:
            data = relative(frame, how)
            other = None if extra is None else relative(extra, how)
        for fold in folds(split):
            test = data[fold.test].copy()
            train = with_extra(data[fold.train], other, test)
            if not test.empty and fold.train.sum():
                yield train, test, best_fixed_candidate(pair_objective(data[fold.train], "target"))

    def score(outs):
        r = summarize(outs)
        return {"gap_closure": round(r["gap_closure"], 3), "risk": round(r["risk"], 3)}

    def regression_variants(split, params, how=None, added=()):
        """Shipped recipe with LightGBM ``params`` (on catalog-relative columns with ``how``,
        plus the derived columns ``added``); also the uncertainty rules (default only)."""
        rules = {"regression": lambda m, s, bf: m}
        if not params and how is None:
            rules |= {f"lcb {k}": (lambda m, s, bf, k=k: m - k * s) for k in (0.5, 1, 2)}
            rules |= {
                f"z-switch {k}": (lambda m, s, bf, k=k: z_switch(m, s, bf, k)) for k in (1, 2)
            }
        outs = {name: [] for name in rules}
        for train, test, bf in fold_data(split, how):
            model = MergePredictor(
                n_models=5, params={**threads, **params}, columns=(*cols, *added)
            )
            model.fit(train, train["target"].to_numpy())
            test["pred"], test["sd2"] = model.predict(test, return_std=True)
            test["sd2"] = test["sd2"] ** 2
            actual, mean = pair_objective(test, "target"), pair_objective(test, "pred")
            sd = np.sqrt(pair_objective(test, "sd2"))
            for name, rule in rules.items():
                outs[name] += per_pair(actual, rule(mean, sd, bf), bf)
        return {name: score(o) for name, o in outs.items()}

    def z_switch(mean, sd, bf, k):
        out = pd.Series(-1.0, index=mean.index)
        for _, g in mean.groupby(level=PAIR):
            cands = list(g.index.get_level_values("candidate"))
            if bf not in cands:
                continue
            ib, best = cands.index(bf), int(np.argmax(g.to_numpy()))
            s = sd.loc[g.index].to_numpy()
            z = (g.iloc[best] - g.iloc[ib]) / np.sqrt(s[best] ** 2 + s[ib] ** 2 + 1e-12)
            out.loc[g.index[best if z > k else ib]] = 1.0
        return out

    def ranking_variant(split, objective, levels):
        outs = []
        for train, test, bf in fold_data(split):
            train = train.sort_values(group, kind="stable")
            g = train.groupby(group)["target"]
            rel = (train["target"] - g.transform("min")) / (
                g.transform("max") - g.transform("min") + 1e-9
            )
            y = np.clip(np.floor(rel * levels + 1e-9), 0, levels).astype(int).to_numpy()
            sizes = train.groupby(group, sort=False).size().to_numpy()
            params = {**DEFAULT_PARAMS, **threads, "objective": objective}
            if objective == "lambdarank":
                params["label_gain"] = list(range(levels + 1))
            preds = []
            for seed in range(5):
                ds = lgb.Dataset(to_matrix(train, cols), y, group=sizes, feature_name=cols)
                booster = lgb.train({**params, "seed": seed}, ds, num_boost_round=300)
                preds.append(booster.predict(to_matrix(test, cols)))
            test["pred"] = np.mean(preds, axis=0)
            t = test.groupby(group)["pred"]
            test["pred"] = (test["pred"] - t.transform("mean")) / (t.transform("std") + 1e-9)
            outs += per_pair(pair_objective(test, "target"), pair_objective(test, "pred"), bf)
        return score(outs)

    def anchoring_variants(split):
        """The anchored rule with its margin chosen by inner cross-validation on each fold's
        training pairs -- 3 inner folds on the shipped grid (evaluate_selector.py's rule), or
        5 inner folds on a finer grid -- and with fixed margins. The fixed rows trace the
        trade-off between gap closure and risk; a margin read off them is tuned on the test
        pairs, so they are not a selection rule."""
        factory = partial(MergePredictor, n_models=5, params=threads)
        inner = {
            "inner CV 3 folds": (3, MARGINS),
            "inner CV 5 folds, finer grid": (5, FINE_MARGINS),
        }
        names = [
            *(f"anchored, {n}" for n in inner),
            *(f"anchored, fixed {m}" for m in FIXED_MARGINS),
        ]
        outs = {name: [] for name in names}
        chosen = {name: [] for name in inner}
        for fold in folds(split):
            test = frame[fold.test].copy()
            train = with_extra(frame[fold.train], extra, test)
            if test.empty or not fold.train.sum():
                continue
            bf = best_fixed_candidate(pair_objective(frame[fold.train], "target"))
            model = factory().fit(train, train["target"].to_numpy())
            test["pred"] = model.predict(test)
            actual, predicted = pair_objective(test, "target"), pair_objective(test, "pred")
            for name, (k, grid) in inner.items():
                margin = choose_margin(frame[fold.train], factory, k=k, margins=grid, extra=extra)
                chosen[name].append(margin)
                outs[f"anchored, {name}"] += per_pair(actual, anchor(predicted, bf, margin), bf)
            for m in FIXED_MARGINS:
                outs[f"anchored, fixed {m}"] += per_pair(actual, anchor(predicted, bf, m), bf)
        res = {name: score(o) for name, o in outs.items()}
        for name, margins in chosen.items():
            res[f"anchored, {name}"]["margins"] = margins
        return res

    rows: dict[str, dict[str, dict[str, float]]] = {}
    start = time.perf_counter()
    groups = set(args.groups.split(","))
    if groups - set(GROUPS):
        raise SystemExit(f"--groups takes {', '.join(GROUPS)}; got {args.groups!r}.")
    for split in args.splits.split(","):
        if "regression" in groups:
            for name, res in regression_variants(split, {}).items():
                rows.setdefault(name, {})[split] = res
        for label, params in (
            ("num_leaves 15", {"num_leaves": 15}),
            ("num_leaves 63", {"num_leaves": 63}),
            ("min_data_in_leaf 60", {"min_data_in_leaf": 60}),
            ("num_leaves 7", {"num_leaves": 7}),
            ("min_data_in_leaf 200", {"min_data_in_leaf": 200}),
            ("l1 loss", {"objective": "regression_l1"}),
        ):
            if "params" in groups:
                rows.setdefault(label, {})[split] = regression_variants(split, params)["regression"]
        for objective, levels in (("lambdarank", 4), ("lambdarank", 10), ("rank_xendcg", 10)):
            if "ranking" in groups:
                label = f"{objective} ({levels + 1} grades)"
                rows.setdefault(label, {})[split] = ranking_variant(split, objective, levels)
        for how in ("rank", "z"):
            if "relative" in groups:
                res = regression_variants(split, {}, how)["regression"]
                rows.setdefault(f"catalog-relative ({how})", {})[split] = res
        for label, added in (("coefficients", COEFFICIENTS), ("coefficients + retention", DERIVED)):
            if "derived" in groups:
                res = regression_variants(split, {}, "derived", added)["regression"]
                rows.setdefault(f"derived: {label}", {})[split] = res
        if "anchoring" in groups:
            for name, res in anchoring_variants(split).items():
                rows.setdefault(name, {})[split] = res
        print(f"{split} done ({time.perf_counter() - start:.0f} s)", flush=True)

    splits = args.splits.split(",")
    print(f"{'variant':>26} " + " ".join(f"{s + ' gap':>12} {s + ' risk':>12}" for s in splits))
    for name, res in rows.items():
        cells = " ".join(
            f"{res[s]['gap_closure']:>12.3f} {res[s]['risk']:>12.3f}" for s in splits if s in res
        )
        print(f"{name:>26} {cells}")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    same = all(
        previous.get(k, d) == v
        for k, v, d in (
            ("data", args.data, "zoo-large"),
            ("extra", args.extra, None),
            ("deals", args.deals, 1),
            ("seed", args.seed, 0),
        )
    )
    if same:  # keep the rows of groups not run this time (same data, extra and deals)
        kept = previous["variants"]
        for name, res in rows.items():
            kept.setdefault(name, {}).update(res)
        rows = kept
    write_json_report(
        out,
        {
            "data": args.data,
            "extra": args.extra,
            "deals": args.deals,
            "seed": args.seed,
            "splits": sorted({s for r in rows.values() for s in r}),
            "variants": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
