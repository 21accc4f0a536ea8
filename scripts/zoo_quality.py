"""Measure the tiny zoo's quality floor: collect every pair x candidate, then report.

    python scripts/zoo_quality.py --zoo runs/zoo [--store runs/zoo/outcomes.sqlite]

Prints each expert's gain over the base on its own tasks, how many pairs have a candidate that
keeps half of both experts' skills, and how many pairs the operators disagree on; writes JSON
(default ``scripts/results/zoo_quality_<size>.json``). Resumable (the outcome store).
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
    from simmerge.outcomes.collection import collect_outcomes
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.zoo import build_zoo
    from simmerge.zoo.quality import quality_report

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default="runs/zoo")
    p.add_argument("--size", default="default")
    p.add_argument("--store", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    zoo = build_zoo(args.zoo, size=args.size)
    catalog = Catalog.load(zoo / "catalog.yaml")
    with OutcomeStore(args.store or zoo / "outcomes.sqlite") as store:
        collect_outcomes(catalog, store)
        report = quality_report(catalog, store)
    scorer = MergeScorer(catalog)
    base = scorer.score_state(
        dict(catalog.checkpoint(catalog.base.name).iter_tensors()), scorer.tasks
    )
    report["experts"] = {}
    print(f"{'expert':>14} {'task':>8} {'expert':>7} {'base':>6} {'gain':>6}")
    for e in catalog.experts:
        own = scorer.score_folder(e, e.tasks)
        for t in e.tasks:
            report["experts"][f"{e.name}/{t}"] = {"expert": own[t], "base": base[t]}
            print(f"{e.name:>14} {t:>8} {own[t]:>7.2f} {base[t]:>6.2f} {own[t] - base[t]:>6.2f}")
    print(
        f"\n{report['best_keeps_half_of_both']} of {report['pairs']} pairs: the best candidate "
        f"keeps >= 0.5 of both experts (floor: half); operators disagree (spread >= 0.1) on "
        f"{report['operators_disagree']}; best operator per pair: {report['best_operator_counts']}"
    )
    out = Path(args.json or ROOT / "scripts" / "results" / f"zoo_quality_{args.size}.json")
    write_json_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
