"""Turn a catalog + its outcome store into the predictor's training tables.

    python scripts/build_training_data.py CATALOG --store outcomes.sqlite --out features/NAME

Writes ``pair_features.parquet`` (features of every ordered pair x probe set, computed from
cached signatures and sketches) and ``outcomes.parquet`` (the store's rows for the catalog),
plus ``meta.json`` (row counts, git commit, and when the catalog is a zoo its recipe hash, build
time and the library versions that built it: a rebuild is bit-exact only with those). The whole
regeneration of the shipped data is described in ``features/DATASHEET.md``.

``--outcomes-only`` writes ``outcomes.parquet`` and ``meta.json`` alone, without computing any
feature: a checkpoint of a collection that outlasts its machine (the zoo and its store are
rebuilt, not committed), which ``scripts/seed_store.py`` turns back into a store.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    from simmerge.catalog import Catalog
    from simmerge.infra.files import atomic_write_text
    from simmerge.learn.datasets import (
        OUTCOMES_FILE,
        describe,
        feature_frame,
        outcome_frame,
        write_table,
        write_training_tables,
    )
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.signals.profiles import FeatureOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("catalog")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="output folder (e.g. features/zoo-large)")
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--outcomes-only",
        action="store_true",
        help="write the outcome table and meta.json only (a collection checkpoint)",
    )
    args = p.parse_args(argv)

    catalog = Catalog.load(args.catalog)
    with OutcomeStore(args.store) as store:
        outcomes = outcome_frame(store, catalog)
    out = Path(args.out)
    if args.outcomes_only:
        write_table(outcomes, out / OUTCOMES_FILE)
        meta = {"commit": git_commit(), "outcomes_only": True, **describe(None, outcomes)}
    else:
        features = feature_frame(
            catalog,
            FeatureOptions(device=args.device, cache_dir=args.cache_dir),
            progress=not args.quiet,
        )
        write_training_tables(features, outcomes, out)
        meta = {"commit": git_commit(), **describe(features, outcomes)}
    manifest = Path(args.catalog).parent / "zoo_manifest.json"
    if manifest.is_file():
        zoo = json.loads(manifest.read_text())
        keys = ("size", "seed", "hash", "build_seconds", "versions", "machine", "weights")
        meta["zoo"] = {k: zoo[k] for k in keys if k in zoo}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
