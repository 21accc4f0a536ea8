"""Do features of how far each expert moved from the base help the predictor pick merges?

    python scripts/explore_drift_features.py runs/smol-large/catalog.yaml \
        [--outcomes features/smol-large] [--features TABLE] \
        [--seeds 0,1,2] [--model-seeds 0] [--deals 4] [--members 5]

Every shipped feature compares the two experts with each other. Which way a merge should
lean (slerp t = 0.3 or 0.7) depends on the experts one at a time: the one whose skill is
more fragile should weigh more. *Drift* features describe each expert against the base, on
each probe set: KL(expert || base), KL(base || expert), top-1 agreement, CKA and activation
cosine, i.e. the functional features of the pair (expert, base). They cost one more model
pass (the base's signature on each probe set), so a scan stays O(N).

This script measures them the way ``evaluate_selector.py`` measures the predictor: held-out
models, ``--deals`` deals pooled, for each fold seed in ``--seeds`` (seed s deals the models
with seeds s to s + deals - 1, as there, so consecutive seeds share deals) and predictor seed
in ``--model-seeds``; all variants are fitted on the same folds:

* ``plain``: the shipped columns;
* ``drift_task``: plus the drift of a and of b on the row's task probes;
* ``drift_all``: plus their drift on the general probes too.

Selection depends only on the deviation model (the level model predicts one value per pair
and task, the same for every candidate), so the drift columns are given to the deviation
model. ``--members`` sets the seed ensemble's size (the shipped 5 by default; 1 is five
times faster and noisier, so pool more seeds with it).

Outcomes come from ``--outcomes`` (a dataset folder; outcomes only is enough); the pair
features are computed from the catalog (cached signatures and sketches) unless ``--features``
gives a table of the same build. Prints a table and writes JSON (default
``scripts/results/explore_drift_features_<outcomes>.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STATS = ("kl_mean", "kl_from_base", "top1_agreement", "cka_mean", "act_cos_mean")
COLUMNS = ("gap_closure", "risk", "pct_of_oracle", "pct_of_oracle_top_k", "mean_abs_error")
VARIANTS = ("plain", "drift_task", "drift_all")


def drift_row(expert_sig, base_sig) -> dict[str, float]:
    """The drift of one expert on one probe set: functional features of (expert, base)."""
    from simmerge.signals.similarity import functional_features_both

    to_base, from_base = functional_features_both(expert_sig, base_sig)
    out = {s: to_base[s] for s in STATS if s != "kl_from_base"}
    out["kl_from_base"] = from_base["kl_mean"]
    return out


def drift_table(catalog, options=None):
    """One row per (expert, probe set key) with :data:`STATS`; the general set's key is
    ``"general"``. Signatures come from the cache when present."""
    import pandas as pd

    from simmerge.signals.profiles import FeatureOptions, catalog_probe_sets
    from simmerge.signals.signatures import compute_signatures

    options = options or FeatureOptions()
    sets = catalog_probe_sets(catalog, options)
    distinct = list({p.hash: p for p in sets.values()}.values())

    def signatures(path):
        got = compute_signatures(
            path,
            distinct,
            config=options.signature,
            device=options.device,
            cache_dir=options.cache_dir,
            progress=False,
        )
        by_hash = {p.hash: s for p, s in zip(distinct, got, strict=True)}
        return {key: by_hash[p.hash] for key, p in sets.items()}

    base = signatures(catalog.base.path)
    rows = []
    for expert in catalog.experts:
        sigs = signatures(expert.path)
        for key in sets:
            rows.append({"expert": expert.name, "set": key, **drift_row(sigs[key], base[key])})
    return pd.DataFrame(rows)


def with_drift(frame, drift):
    """``frame`` (training rows) plus ``drift_<side>_<stat>`` (general probes) and
    ``task_drift_<side>_<stat>`` (the row's task probes) for side a and b; NaN where the
    drift table lacks the expert or the task."""
    from simmerge.signals.similarity import GENERAL

    stats = [c for c in drift.columns if c not in ("expert", "set")]
    general = drift[drift["set"] == GENERAL].set_index("expert")[stats]
    per_task = drift[drift["set"] != GENERAL].set_index(["expert", "set"])[stats]
    out = frame.copy()
    for side in ("a", "b"):
        out = out.join(general.add_prefix(f"drift_{side}_"), on=side)
        out = out.join(per_task.add_prefix(f"task_drift_{side}_"), on=[side, "task"])
    return out


def variant_columns(frame) -> dict[str, tuple[str, ...]]:
    from simmerge.learn.predictor import predictor_columns

    base = predictor_columns()
    task = tuple(c for c in frame.columns if c.startswith("task_drift_"))
    general = tuple(c for c in frame.columns if c.startswith("drift_"))
    return {"plain": base, "drift_task": (*base, *task), "drift_all": (*base, *general, *task)}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from simmerge.catalog import Catalog
    from simmerge.infra.files import write_json_report
    from simmerge.learn.datasets import feature_frame, load_training_tables, training_frame
    from simmerge.learn.metrics import summarize
    from simmerge.learn.predictor import DEFAULT_ENSEMBLE, MergePredictor
    from simmerge.learn.splits import model_folds
    from simmerge.learn.validation import cross_validate

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("catalog", help="the catalog whose models the outcomes were measured on")
    p.add_argument("--outcomes", default="features/smol-large")
    p.add_argument("--features", default=None, help="pair feature table of the same build")
    p.add_argument("--seeds", default="0,1,2", help="fold-dealing seeds")
    p.add_argument("--model-seeds", default="0", help="predictor (bagging) seeds")
    p.add_argument("--deals", type=int, default=4)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--members", type=int, default=DEFAULT_ENSEMBLE)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="LightGBM threads per fit (default: the predictor's); 1 when the cores are shared",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    catalog = Catalog.load(args.catalog)
    folder = Path(args.outcomes)
    outcomes = pd.read_parquet(folder / "outcomes.parquet")
    if args.features:
        features = pd.read_parquet(args.features)
    elif (folder / "pair_features.parquet").is_file():
        features = load_training_tables(folder)[0]
    else:
        features = feature_frame(catalog)
    drift = drift_table(catalog)
    frame = with_drift(training_frame(features, outcomes), drift)
    columns = variant_columns(frame)
    params = {} if args.threads is None else {"num_threads": args.threads}
    print(f"features ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    report: dict[str, object] = {
        "catalog": catalog.name,
        "outcomes": str(args.outcomes),
        "ordered_pairs": int(frame.groupby(["a", "b"]).ngroups),
        "deals": args.deals,
        "members": args.members,
        "threads": args.threads,
        "drift_stats": list(STATS),
        "runs": {},
    }
    head = f"{'seeds':>7} {'selector':>11} " + " ".join(f"{c:>20}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for seed in (int(s) for s in args.seeds.split(",")):
        for model_seed in (int(s) for s in args.model_seeds.split(",")):
            models = {
                name: lambda cols=cols, ms=model_seed: MergePredictor(
                    n_models=args.members, seed=ms, columns=cols, params=params
                )
                for name, cols in columns.items()
            }
            cv = cross_validate(frame, model_folds(frame, args.folds, seed, args.deals), models, 3)
            results = {m: summarize(cv.pooled[m]) for m in (*VARIANTS, "best_fixed", "oracle")}
            key = f"{seed}/{model_seed}"
            report["runs"][key] = results
            for m in VARIANTS:
                cells = " ".join(f"{results[m][c]:>20.3f}" for c in COLUMNS)
                lines.append(f"{key:>7} {m:>11} {cells}")
                print(lines[-1], file=sys.stderr, flush=True)  # progress: a run takes minutes
    runs = report["runs"].values()
    report["mean"] = {
        m: {c: float(np.mean([r[m][c] for r in runs])) for c in COLUMNS} for m in VARIANTS
    }
    report["paired_gain_over_plain"] = {
        m: [r[m]["gap_closure"] - r["plain"]["gap_closure"] for r in runs] for m in VARIANTS[1:]
    }
    for m, r in report["mean"].items():
        lines.append(f"{'mean':>7} {m:>11} " + " ".join(f"{r[c]:>20.3f}" for c in COLUMNS))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print("\n".join(lines))
    out = Path(
        args.json or ROOT / "scripts" / "results" / f"explore_drift_features_{folder.name}.json"
    )
    write_json_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
