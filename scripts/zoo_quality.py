"""Measure a zoo's quality floor: collect every pair x candidate, then report.

    python scripts/zoo_quality.py --zoo runs/zoo [--store runs/zoo/outcomes.sqlite]
    python scripts/zoo_quality.py --recipe smol-small --zoo runs/smol-small \
        --candidates linear "task_arithmetic[lambda=1.0]" "ties[density=0.5]" ...

Prints each expert's gain over the base on its own tasks (and, on a real-LLM zoo, what each
kept of the base's general ability), how many pairs have a candidate that keeps half of both
experts' skills, and how many pairs the operators disagree on; writes JSON (default
``scripts/results/zoo_quality_<size or recipe>.json``). Resumable (the outcome store).
``--candidates`` measures a subset of the grid (the whole grid costs 20 merges per pair:
minutes on the tiny zoo, hours on real LLMs on CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from simmerge.catalog import Catalog
    from simmerge.evaluation.scorer import MergeScorer
    from simmerge.infra.files import write_json_report
    from simmerge.merging.grid import DEFAULT_GRID
    from simmerge.outcomes.collection import collect_outcomes
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.zoo import build_zoo
    from simmerge.zoo.quality import quality_report
    from simmerge.zoo.real import build_real_zoo

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default="runs/zoo")
    p.add_argument("--size", default="default", help="tiny zoo size")
    p.add_argument("--recipe", default=None, help="a real-LLM recipe (e.g. smol-small) instead")
    p.add_argument("--candidates", nargs="+", default=None, help="grid ids (default: all)")
    p.add_argument(
        "--experts-only",
        action="store_true",
        help="only each expert against the base (no merges; for a large catalog on CPU)",
    )
    p.add_argument("--store", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.recipe:
        zoo = build_real_zoo(args.zoo, args.recipe)
    else:
        zoo = build_zoo(args.zoo, size=args.size)
    grid = DEFAULT_GRID
    if args.candidates:
        wanted = args.candidates
        known = {c.id: c for c in DEFAULT_GRID}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            p.error(f"unknown candidate(s) {unknown}; the grid has {sorted(known)}")
        grid = [known[w] for w in wanted]
    catalog = Catalog.load(zoo / "catalog.yaml")
    if args.experts_only:
        report = {"candidates": []}
    else:
        with OutcomeStore(args.store or zoo / "outcomes.sqlite") as store:
            collect_outcomes(catalog, store, grid)
            report = quality_report(catalog, store)
        report["candidates"] = [c.id for c in grid]
    scorer = MergeScorer(catalog)
    base = scorer.score_state(
        dict(catalog.checkpoint(catalog.base.name).iter_tensors()), scorer.tasks
    )
    general = catalog.general_tasks
    report["experts"] = {}
    print(f"{'expert':>14} {'task':>8} {'expert':>7} {'base':>6} {'gain':>6}")
    for e in catalog.experts:
        own = scorer.score_folder(e, e.tasks)
        for t in e.tasks:
            report["experts"][f"{e.name}/{t}"] = {"expert": own[t], "base": base[t]}
            print(f"{e.name:>14} {t:>8} {own[t]:>7.2f} {base[t]:>6.2f} {own[t] - base[t]:>6.2f}")
        if general:  # what the fine-tune kept of the base's own ability
            kept = scorer.score_folder(e, general)
            for t in general:
                report["experts"][f"{e.name}/{t}"] = {"expert": kept[t], "base": base[t]}
                print(
                    f"{e.name:>14} {t:>8} {kept[t]:>7.2f} {base[t]:>6.2f} {kept[t] - base[t]:>6.2f}"
                )
    if args.experts_only:
        beats = [e for e, v in report["experts"].items() if v["expert"] > v["base"]]
        own = [e for e in report["experts"] if not e.endswith(tuple(f"/{t}" for t in general))]
        print(
            f"\n{len([e for e in beats if e in own])} of {len(own)} (expert, own task) pairs "
            "beat the base"
        )
    else:
        print(
            f"\n{report['best_keeps_half_of_both']} of {report['pairs']} pairs: the best candidate "
            f"keeps >= 0.5 of both experts (floor: half); operators disagree (spread >= 0.1) on "
            f"{report['operators_disagree']}; best operator per pair: "
            f"{report['best_operator_counts']}"
        )
    name = args.recipe or args.size
    out = Path(args.json or ROOT / "scripts" / "results" / f"zoo_quality_{name}.json")
    write_json_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
