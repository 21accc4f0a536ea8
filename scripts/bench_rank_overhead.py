"""What the out-of-distribution flag and the calibrated interval add to ranking a pair.

    python scripts/bench_rank_overhead.py --catalog runs/smol-large/catalog.yaml
        [--predictor models/default] [--pairs 6] [--repeats 5] [--out FILE]

For the first ``--pairs`` expert pairs of the catalog, the pair's inputs (signatures and
sketches from the cache, pair features) are computed once, then ``rank_merges`` is timed with
the predictor as shipped (domain check + interval) and with its domain and interval removed
(the ranking without them), median of ``--repeats`` runs each, explanations of the top 5
included as ``simmerge rank`` does. The overhead is the difference over the plain ranking's
time; the goal (issue "Knowing when it does not know") is at most 10 %. A second column adds
the cached feature computation to the ranking time, what a user's ``rank`` call costs. Prints a
table and writes JSON (default scripts/results/bench_rank_overhead.json). Run on an idle
machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from copy import copy
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from simmerge.catalog import Catalog
    from simmerge.learn.loading import load_predictor
    from simmerge.pairwise.rank import pair_inputs, rank_merges

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--catalog", required=True)
    p.add_argument("--predictor", default=None)
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_rank_overhead.json"))
    args = p.parse_args(argv)

    catalog = Catalog.load(args.catalog)
    full = load_predictor(args.predictor)
    if full.domain_ is None or full.interval_ is None:
        raise SystemExit("the predictor needs a training domain and an interval calibration")
    plain = copy(full)
    plain.domain_, plain.interval_ = None, None
    rows = []
    pairs = list(combinations(catalog.expert_names, 2))[: args.pairs]
    for a, b in pairs:
        t0 = time.perf_counter()
        inputs = pair_inputs(catalog, [a, b])
        features = time.perf_counter() - t0
        times = {}
        for name, model in (("plain", plain), ("flag+interval", full)):
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                rank_merges(catalog, [a, b], top=5, predictor=model, inputs=inputs)
                runs.append(time.perf_counter() - t0)
            times[name] = statistics.median(runs)
        extra = times["flag+interval"] - times["plain"]
        rows.append({"pair": f"{a}+{b}", "features_s": features, **{f"{k}_s": v for k, v in
                     times.items()}, "overhead": extra / times["plain"],
                     "overhead_with_features": extra / (times["plain"] + features)})  # fmt: skip
    print(f"{'pair':<32} {'features s':>10} {'rank s':>8} {'+flag s':>8} {'overhead':>9} "
          f"{'of rank call':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['pair'][:32]:<32} {r['features_s']:>10.3f} {r['plain_s']:>8.3f} "
              f"{r['flag+interval_s']:>8.3f} {r['overhead']:>9.1%} "
              f"{r['overhead_with_features']:>12.1%}")  # fmt: skip
    median = statistics.median(r["overhead"] for r in rows)
    print(f"median overhead over the ranking alone: {median:.1%} (goal: <= 10 %)")
    doc = {"catalog": catalog.name, "predictor": args.predictor or "default",
           "repeats": args.repeats, "rows": rows, "median_overhead": median}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
