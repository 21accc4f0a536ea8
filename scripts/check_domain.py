"""Which pairs of a catalog lie outside a predictor's training data (its training domain).

    python scripts/check_domain.py --catalog runs/smol-small/catalog.yaml [--predictor DIR]

Ranks every expert pair (features cached; no merge is run) and prints, per pair, the distance
to the nearest training pairs, the threshold, the flag and the most unusual columns; writes
JSON (``--out``, default scripts/results/domain_<catalog name>.json). The goal of the issue
"Knowing when it does not know": the tiny-zoo predictor flags every pair of a real catalog.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from simmerge.catalog import Catalog
    from simmerge.pairwise.rank import rank_merges

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--predictor", default=None, help="predictor folder (default: shipped)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    catalog = Catalog.load(args.catalog)
    rows = []
    for a, b in combinations([e.name for e in catalog.experts], 2):
        top = rank_merges(catalog, [a, b], top=1, predictor=args.predictor, explain=0)[0]
        rows.append(
            {
                "pair": f"{a}+{b}",
                "in_distribution": top.in_distribution,
                "score": top.domain_score,
                "threshold": top.domain_threshold,
                "unusual": [f for f, _ in top.unusual],
            }
        )
        flag = "in" if top.in_distribution else "OUT"
        unusual = ", ".join(f for f, _ in top.unusual)
        print(
            f"{a + '+' + b:>28}  {top.domain_score:7.2f} / {top.domain_threshold:.2f}  "
            f"{flag:>3}  {unusual}"
        )
    flagged = sum(not r["in_distribution"] for r in rows)
    print(f"\n{flagged} of {len(rows)} pairs outside the training domain")
    out = Path(args.out or ROOT / "scripts" / "results" / f"domain_{catalog.name}.json")
    report = {"catalog": catalog.name, "predictor": args.predictor or "default",
              "flagged": flagged, "pairs": rows}  # fmt: skip
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
