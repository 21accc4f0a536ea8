"""Measure the held-out-model test pairs of a dataset twice: on the zoo's eval set and on fresh
eval examples.

    python scripts/remeasure_outcomes.py runs/zoo-large [--data zoo-large] [--examples 1000]
        [--folds 5 --seed 0 --deals 1] [--shard K/N] [--quiet]
    python scripts/remeasure_outcomes.py runs/smol-large --data smol-large --examples 256 \
        --deals 4

Why: every outcome in ``features/`` is an exact-match rate on the zoo's 200 eval examples per
task. A pair's oracle is the best of 20 such noisy measurements, so it is biased upwards (the
winner's curse), and a selector is marked down for noise that no feature could predict. This
script builds a second eval set per task (``--examples`` prompts of the same distribution from
another random stream, disjoint from the first) and, for every held-out-model test pair of
``scripts/evaluate_selector.py`` (same ``--folds`` and ``--seed``), merges and scores every
candidate on both sets. ``evaluate_selector.py`` then scores the held-out-model picks on the
second measurement.

The test pairs' features and both measurements come from the zoo folder given, not from the
shipped tables: the zoo build is deterministic only for one set of library versions (recorded
in the dataset's ``meta.json``), so a zoo rebuilt with other versions holds other models.
Test models are never in a fold's training pairs, so training on the shipped rows of the
other models stays a held-out-model evaluation either way. ``meta.json`` records how many of
the experts' scores equal the shipped data's (all of them when the zoo is the shipped data's
own build, as for the shipped ``zoo-large``).

A real catalog (``simmerge zoo build --recipe smol|gemma``) gets fresh prompts that no split of
its build used (:func:`simmerge.zoo.real.remeasure_real_catalog`); the tiny zoo gets prompts of
the same input lengths. The first measurement of a real catalog is the collection's: seed the
store with it (``scripts/seed_store.py features/smol-large --catalog
runs/smol-large/catalog.yaml --store runs/smol-large/remeasure.sqlite``) and only the second
is merged and evaluated.

Resumable like ``simmerge collect`` (store ``<zoo>/remeasure.sqlite``); ``--shard K/N`` runs N
processes on one store, then one run without ``--shard`` finishes and writes
``features/<data>/remeasured/`` (``pair_features.parquet`` and ``outcomes.parquet`` as in the
dataset, ``second.parquet`` the fresh measurement, ``meta.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

STREAM = "remeasure"


def eval_hashes(catalog) -> dict[str, str]:
    """Task -> content hash of its eval set (rows of the two measurements share a store)."""
    from simmerge.evaluation.harness import EvalTask

    return {
        name: EvalTask.load(spec.eval, name=name).config_hash()
        for name, spec in catalog.tasks.items()
        if spec.eval is not None
    }


def test_groups(features, outcomes, folds: int, seed: int, deals: int = 1) -> list[list[str]]:
    """The experts of each held-out-model fold of ``evaluate_selector.py`` (on the dataset's
    tables), over ``deals`` deals as its ``--deals``."""
    from simmerge.learn.datasets import training_frame
    from simmerge.learn.splits import model_folds

    frame = training_frame(features, outcomes)
    groups = []
    for fold in model_folds(frame, folds, seed, deals=deals):
        test = frame[fold.test]
        if not test.empty:  # a fold of one model has no test pair
            groups.append(sorted(set(test["a"]) | set(test["b"])))
    return groups


def second_catalog(zoo: Path, examples: int, skip: tuple[str, ...] = ()) -> Path:
    """The catalog of fresh eval sets: the tiny zoo's rule (same input lengths) or a real
    catalog's (prompts no split of the build used; ``skip``: tasks left without one), by the
    zoo's manifest."""
    from simmerge.zoo.build import MANIFEST, remeasure_catalog
    from simmerge.zoo.real import remeasure_real_catalog

    recipe = json.loads((zoo / MANIFEST).read_text())["recipe"]
    if "eval_lengths" in recipe:
        if skip:
            raise SystemExit("--skip-tasks is for real catalogs: the tiny zoo's tasks have room")
        return remeasure_catalog(zoo, examples, STREAM)
    return remeasure_real_catalog(zoo, examples, STREAM, skip=skip)


def shipped_expert_scores(outcomes) -> dict[tuple[str, str], float]:
    """(expert, task) -> the expert's score in a dataset (rows where only ``a`` has the task)."""
    solo = outcomes[outcomes["task_of_a"] & ~outcomes["task_of_b"]]
    return {k: float(v) for k, v in solo.groupby(["a", "task"])["expert_score"].first().items()}


def main(argv: list[str] | None = None) -> int:
    from build_training_data import git_commit

    from simmerge.catalog import Catalog
    from simmerge.errors import ConfigError
    from simmerge.infra.files import write_json_report
    from simmerge.learn.datasets import (
        REMEASURED_FOLDER,
        SECOND_MEASUREMENT_FILE,
        dataset_folder,
        feature_frame,
        load_training_tables,
        outcome_frame,
        write_table,
        write_training_tables,
    )
    from simmerge.outcomes.collection import (
        collect_outcomes,
        expert_pairs,
        parse_shard,
        shard_pairs,
    )
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.signals.profiles import FeatureOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("zoo", help="zoo folder of the dataset's recipe (e.g. runs/zoo-large)")
    p.add_argument("--data", default="zoo-large", help="shipped dataset (features/<data>)")
    p.add_argument("--examples", type=int, default=1000, help="fresh eval examples per task")
    p.add_argument("--folds", type=int, default=5, help="as in evaluate_selector.py")
    p.add_argument("--seed", type=int, default=0, help="as in evaluate_selector.py")
    p.add_argument("--deals", type=int, default=1, help="as in evaluate_selector.py")
    p.add_argument(
        "--skip-tasks",
        default="",
        help="comma-separated tasks without enough fresh prompts (a real catalog's "
        "days_in_month); the experts holding them are left out of the test pairs",
    )
    p.add_argument("--shard", default=None, help="K/N: this process's share of the pairs")
    p.add_argument("--cache-dir", default=None, help="signature/sketch cache")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    zoo = Path(args.zoo)
    first_catalog = Catalog.load(zoo / "catalog.yaml")
    skip = tuple(t for t in args.skip_tasks.split(",") if t)
    second = Catalog.load(second_catalog(zoo, args.examples, skip))
    shipped_features, shipped = load_training_tables(args.data)
    if not (shipped["catalog"] == first_catalog.name).any():
        raise ConfigError(
            f"features/{args.data} has no rows of catalog {first_catalog.name!r}.",
            "pass a zoo folder built with the dataset's recipe and seed.",
        )
    groups = test_groups(shipped_features, shipped, args.folds, args.seed, args.deals)
    left_out = {e.name for e in first_catalog.experts if set(e.tasks) & set(skip)}
    groups = [[m for m in group if m not in left_out] for group in groups]
    shard = parse_shard(args.shard) if args.shard else None
    catalogs = {"first": first_catalog, "second": second}
    hashes = {key: eval_hashes(catalog) for key, catalog in catalogs.items()}
    measured = {}
    with OutcomeStore(zoo / f"{STREAM}.sqlite") as store:
        for key, catalog in catalogs.items():
            pairs = [pair for group in groups for pair in expert_pairs(catalog, group)]
            if shard:
                pairs = shard_pairs(pairs, *shard)
            summary = collect_outcomes(catalog, store, pairs=pairs, progress=not args.quiet)
            print(f"{key}: {summary.merged} merged+evaluated, {summary.skipped} already stored")
            if not shard:
                rows = outcome_frame(store, catalog)
                own = [
                    hashes[key][t] == h
                    for t, h in zip(rows["task"], rows["eval_hash"], strict=True)
                ]
                measured[key] = rows[own]
    if shard:
        print("run once more without --shard to write the tables")
        return 0
    test_pairs = set(zip(measured["first"]["a"], measured["first"]["b"], strict=True))
    features = feature_frame(
        first_catalog, FeatureOptions(cache_dir=args.cache_dir), progress=not args.quiet
    )
    features = features[[k in test_pairs for k in zip(features["a"], features["b"], strict=True)]]
    out = dataset_folder(args.data) / REMEASURED_FOLDER
    write_training_tables(features.reset_index(drop=True), measured["first"], out)
    write_table(measured["second"], out / SECOND_MEASUREMENT_FILE)
    first = measured["first"]
    ours, theirs = shipped_expert_scores(first), shipped_expert_scores(shipped)
    equal = sum(ours[k] == theirs.get(k) for k in ours)
    moved = [abs(ours[k] - theirs[k]) for k in ours if k in theirs and ours[k] != theirs[k]]
    write_json_report(
        out / "meta.json",
        {
            "catalog": first_catalog.name,
            "commit": git_commit(),
            "examples_per_task": {"first": "the zoo's eval set", "second": args.examples},
            "stream": STREAM,
            "eval_hashes": {
                key: {t: h for t, h in task_hashes.items() if t in set(first["task"])}
                for key, task_hashes in hashes.items()
            },
            "folds": args.folds,
            "seed": args.seed,
            "deals": args.deals,
            "skipped_tasks": list(skip),
            "left_out_experts": sorted(left_out),
            "test_groups": groups,
            "ordered_pairs": len(test_pairs),
            "outcome_rows": {k: len(v) for k, v in measured.items()},
            "expert_scores_equal_to_shipped": f"{equal} of {len(ours)}",
            "expert_score_differences": [round(min(moved), 4), round(max(moved), 4)]
            if moved
            else [],
            "zoo_versions": json.loads((zoo / "zoo_manifest.json").read_text())["versions"],
        },
    )
    print(f"wrote {out}: {len(test_pairs)} pairs; {equal} of {len(ours)} expert scores as shipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
