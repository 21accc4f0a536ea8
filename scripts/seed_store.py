"""Seed an outcome store with a shipped outcome table, so a collection resumes from it.

    python scripts/seed_store.py features/smol-large [CHECKPOINT] \
        --catalog runs/smol-large/catalog.yaml --store runs/smol-large/outcomes.sqlite

Why: the SQLite store a collection writes lives beside the zoo, which is rebuilt, not
committed; only the exported table (``features/<name>/outcomes.parquet``) is shipped. To
extend a table that is not exhaustive, or to rebuild a zoo without measuring it again, rebuild
the zoo with the recipe and library versions of its ``meta.json`` (the build is deterministic
on one machine kind), seed a store with the shipped rows, and run ``simmerge collect`` on it:
the collector skips every (pair, candidate) the store holds and reuses its measurements for the
equal merges of the other order, so only the missing merges run.

Several tables may be given: a collection too long for one session is checkpointed between
sessions as an outcomes-only table (``scripts/build_training_data.py --outcomes-only``, as
``features/smol-large`` was while it was collected), and the next session seeds its store with
the shipped table and that checkpoint.

``--drop-models a,b`` leaves out every row of a pair with one of those experts, so that
``simmerge collect`` on the seeded store measures exactly their pairs again: for experts whose
rebuild is not bit-identical to the build the table was measured on (features/DATASHEET.md).
A table whose ``meta.json`` records the experts' weight digests (``zoo.weights``, written since
the third smol-large build) is checked against the rebuilt zoo's: rows of an expert whose
weights differ are refused unless that expert is dropped, so that a rebuild on another kind
of machine cannot silently mix two builds in one table; ``--drop-differing`` drops them
instead (the JSON lists them under ``dropped_models``). (A table records the digests of the
build that exported it. smol-large's checkpoint satisfies that only from the export after
its 17-expert one: that export still held other builds' rows of the two drifting experts, and
every later one comes from a store seeded without them.)

The rows are only valid for the same models and eval files: the script refuses a table whose
catalog name differs from the catalog's, whose models the catalog lacks, or whose rows carry an
``eval_hash`` that differs from the catalog's eval file of that task, and, where the catalog is
a zoo with a manifest, a table whose ``meta.json`` names another zoo hash. Rows already in the
store are kept (the store skips repeated keys). Prints what it added as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from simmerge.catalog import Catalog
    from simmerge.evaluation.scorer import MergeScorer
    from simmerge.learn.datasets import OUTCOMES_FILE, dataset_folder
    from simmerge.outcomes.store import Outcome, OutcomeStore

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "tables", nargs="+", help="shipped dataset names or folders (each holds outcomes.parquet)"
    )
    p.add_argument("--catalog", required=True, help="the rebuilt catalog YAML")
    p.add_argument("--store", required=True, help="outcome store to seed (created if absent)")
    p.add_argument(
        "--drop-models",
        default="",
        help="experts, comma-separated, whose pairs are not seeded (to be measured again)",
    )
    p.add_argument(
        "--drop-differing",
        action="store_true",
        help="drop the pairs of experts whose recorded weight digest differs from this build's "
        "(default: refuse such a table)",
    )
    args = p.parse_args(argv)

    catalog = Catalog.load(args.catalog)
    scorer = MergeScorer(catalog, "cpu")
    tables = []
    drop = [m for m in args.drop_models.split(",") if m]
    unknown = sorted(set(drop) - set(catalog.expert_names))
    if unknown:
        from simmerge.errors import ConfigError

        raise ConfigError(
            f"--drop-models names experts the catalog lacks: {unknown}.",
            f"use expert names of {args.catalog}.",
        )
    for table in args.tables:
        folder = dataset_folder(table)
        tables.append(pd.read_parquet(folder / OUTCOMES_FILE))
        _check_zoo(folder, Path(args.catalog).parent)
        _check_rows(tables[-1], catalog, scorer)
        zoo = Path(args.catalog).parent
        if args.drop_differing:
            drop += differing_weights(folder, zoo, tables[-1], drop)
        _check_weights(folder, zoo, tables[-1], drop)
    rows = pd.concat(tables, ignore_index=True)
    dropped = rows["a"].isin(drop) | rows["b"].isin(drop)
    rows = rows[~dropped]
    records = rows.rename(columns={"a": "model_a", "b": "model_b"})
    fields = Outcome.__dataclass_fields__
    outcomes = [Outcome(**{k: r[k] for k in fields}) for r in records.to_dict("records")]
    with OutcomeStore(args.store) as store:
        added = store.add(outcomes)
        total = len(store)
    report = {"table_rows": len(rows), "added": added, "store_rows": total}
    print(json.dumps({**report, "dropped_rows": int(dropped.sum()), "dropped_models": drop}))
    return 0


def _check_rows(rows, catalog, scorer) -> None:
    """Refuse rows measured on another catalog, other models or other eval files."""
    from simmerge.errors import ConfigError

    wrong_catalog = sorted(set(rows["catalog"]) - {catalog.name})
    if wrong_catalog:
        raise ConfigError(
            f"The table holds rows of catalog(s) {wrong_catalog}, not of {catalog.name!r}.",
            "seed a store of the catalog the table was collected on.",
        )
    unknown = sorted((set(rows["a"]) | set(rows["b"])) - set(catalog.expert_names))
    if unknown:
        raise ConfigError(
            f"The table names experts the catalog lacks: {unknown[:5]}.",
            "rebuild the zoo with the table's recipe (features/DATASHEET.md).",
        )
    hashes = {t: scorer.eval_hash(t) for t in rows["task"].unique() if t in scorer.tasks}
    stale = sorted(
        t
        for t in rows["task"].unique()
        if t not in hashes or set(rows[rows.task == t].eval_hash) != {hashes[t]}
    )
    if stale:
        raise ConfigError(
            f"The table's eval hashes differ from the catalog's eval files for task(s) {stale}.",
            "rebuild the zoo with the table's recipe and library versions (its meta.json).",
        )


def differing_weights(folder: Path, zoo: Path, rows, drop: list[str]) -> list[str]:
    """Experts with rows in the table, not in ``drop``, whose weight digest in the table's
    ``meta.json`` differs from the rebuilt zoo's manifest (either may lack digests: older
    tables and zoos do, and then nothing can be told)."""
    meta, manifest = folder / "meta.json", zoo / "zoo_manifest.json"
    if not (meta.is_file() and manifest.is_file()):
        return []
    recorded = json.loads(meta.read_text()).get("zoo", {}).get("weights") or {}
    current = json.loads(manifest.read_text()).get("weights") or {}
    present = set(rows["a"]) | set(rows["b"])
    return sorted(
        e
        for e, digest in recorded.items()
        if e in present and e not in drop and e in current and current[e] != digest
    )


def _check_weights(folder: Path, zoo: Path, rows, drop: list[str]) -> None:
    """Refuse the rows of experts that :func:`differing_weights` names."""
    from simmerge.errors import ConfigError

    differ = differing_weights(folder, zoo, rows, drop)
    if differ:
        raise ConfigError(
            f"{folder}: the rows of {differ} were measured on other weights than this build's "
            "(their weight digests differ: the rebuild on this machine is not bit-identical).",
            f"pass --drop-models {','.join(differ)} (or --drop-differing) so that collect "
            "measures their pairs again on this build.",
        )


def _check_zoo(folder: Path, zoo: Path) -> None:
    from simmerge.errors import ConfigError

    meta, manifest = folder / "meta.json", zoo / "zoo_manifest.json"
    if not (meta.is_file() and manifest.is_file()):
        return
    want = json.loads(meta.read_text()).get("zoo", {}).get("hash")
    got = json.loads(manifest.read_text()).get("hash")
    if want and got and want != got:
        raise ConfigError(
            f"The table was collected on zoo {want}, the catalog is zoo {got}.",
            "rebuild the zoo with the table's recipe and library versions (its meta.json).",
        )


if __name__ == "__main__":
    sys.exit(main())
