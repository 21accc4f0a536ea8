"""Is a zoo build reproducible? Retrain some experts of a real recipe and compare their weights.

    python scripts/check_rebuild.py --zoo runs/smol-large --recipe smol-large --experts sort_json

Why: a rebuilt smol-large reproduces most experts' eval scores but not all
(features/DATASHEET.md), and the answer decides what to do with rows measured on another build:
if retraining on the same machine gives bit-identical weights, builds differ by machine (CPU
kind), not by chance. Each named expert is trained again from the recipe into a temporary zoo
(same base, data, seed), and its weight digest (``simmerge.zoo.real.weights_digest``) is compared
with the expert of ``--zoo``. Run it with the thread count the zoo was built with
(``OMP_NUM_THREADS=1`` for the shipped builds). Prints a table and writes JSON (default
``scripts/results/check_rebuild_<zoo folder>.json``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from simmerge.errors import ConfigError
    from simmerge.infra.files import write_json_report
    from simmerge.zoo.real import REAL_RECIPES, build_real_zoo, machine_facts, weights_digest

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", required=True, help="a built real zoo (its experts/ folder)")
    p.add_argument("--recipe", required=True, choices=sorted(REAL_RECIPES))
    p.add_argument("--experts", required=True, help="experts to retrain, comma-separated")
    p.add_argument("--bases-dir", default="runs/bases")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    spec = REAL_RECIPES[args.recipe]
    names = [n for n in args.experts.split(",") if n]
    unknown = sorted(set(names) - {e.name for e in spec.experts})
    if unknown:
        raise ConfigError(
            f"Recipe {args.recipe!r} has no expert(s) {unknown}.",
            f"use names of: {', '.join(e.name for e in spec.experts)}.",
        )
    zoo = Path(args.zoo)
    rows = []
    with tempfile.TemporaryDirectory(prefix="check-rebuild-") as tmp:
        subset = replace(spec, experts=tuple(e for e in spec.experts if e.name in names))
        again = build_real_zoo(Path(tmp) / "zoo", subset, bases_dir=args.bases_dir, progress=True)
        for name in names:
            old = weights_digest(zoo / "experts" / name)
            new = weights_digest(again / "experts" / name)
            rows.append({"expert": name, "zoo": old, "retrained": new, "identical": old == new})
    print(f"{'expert':<16} {'identical':>9}  zoo / retrained digest")
    for r in rows:
        print(f"{r['expert']:<16} {str(r['identical']):>9}  {r['zoo']} / {r['retrained']}")
    out = Path(args.json or ROOT / "scripts" / "results" / f"check_rebuild_{zoo.name}.json")
    report = {"zoo": str(zoo), "recipe": args.recipe, "machine": machine_facts("cpu"), "rows": rows}
    write_json_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
