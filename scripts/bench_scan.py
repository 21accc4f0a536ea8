"""Benchmark ``simmerge scan`` (local executor) for catalogs of N = 4, 8, 16 zoo experts.

Each N is a sub-catalog of the first N experts of ``--zoo``, scanned with a cold cache into a
fresh folder, so every stage does its full work. The default is the large tiny zoo (built if
missing); any built zoo with enough experts can be given instead, e.g. the real SmolLM2 catalog
(``simmerge zoo build --recipe smol --size large --out runs/smol-large``; issue goal for a real
catalog of 16 experts: <= 20 s per expert on 2 cores, the "/expert" column):

* signatures -- one job per expert (the model loaded once) with one probe pass per distinct
  probe set: O(N) for a fixed task set (the sub-catalogs add tasks with their experts, so the
  passes per model grow too: see the "passes" column);
* sketches -- one streaming weight pass per expert: O(N);
* profiles -- the cached signatures/sketches read back: O(N);
* pair features -- every ordered pair x probe set: O(N²);
* ranking -- every unordered pair ranked by the predictor (O(N²)); then the multi-way beam
  search over the catalog's task set (its cost grows with the number of tasks and of experts
  per task, not with the pairs), reported apart as "plans";
* report -- the HTML page and its figures.

The table also divides each stage by its unit count (per model, per ordered pair, per pair) so
the O(N) / O(N²) split shows as flat per-unit costs. A second, warm run of each scan measures
the resume path (every stage skipped). Prints a table and writes JSON (default
``scripts/results/bench_scan_<device>.json``). Run on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZOO = ROOT / "runs" / "zoo-large"


def main(argv: list[str] | None = None) -> int:
    from simmerge.catalog import Catalog
    from simmerge.infra.files import write_json_report
    from simmerge.scanning.pipeline import scan
    from simmerge.signals.profiles import FeatureOptions
    from simmerge.zoo import build_zoo
    from simmerge.zoo.micro import sub_catalog

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=DEFAULT_ZOO)
    parser.add_argument("--sizes", default="4,8,16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    zoo = args.zoo
    if not (zoo / "catalog.yaml").is_file():
        if zoo.resolve() != DEFAULT_ZOO:  # only the default, tiny zoo is built here
            raise SystemExit(
                f"{zoo} holds no built zoo: build it first (simmerge zoo build --out {zoo} ...)."
            )
        zoo = build_zoo(zoo, size="large", seed=0, progress=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        for n in sizes:
            names = [e.name for e in Catalog.load(zoo / "catalog.yaml").experts][:n]
            if len(names) < n:
                raise SystemExit(f"{zoo} has {len(names)} experts; N={n} needs more.")
            catalog = sub_catalog(zoo, Path(tmp), dict.fromkeys(names), f"catalog-{n}.yaml")
            options = FeatureOptions(device=args.device, cache_dir=Path(tmp) / f"cache-{n}")
            out = Path(tmp) / f"scan-{n}"
            start = time.perf_counter()
            cold = scan(catalog, out, options=options, progress=False)
            total = time.perf_counter() - start
            start = time.perf_counter()
            warm = scan(catalog, out, options=options, progress=False)
            rows.append(
                {
                    "n": n,
                    "ordered_pairs": n * (n - 1),
                    "pairs": n * (n - 1) // 2,
                    "feature_rows": cold.counts.get("feature_rows"),
                    "signature_jobs": cold.counts.get("signature_jobs"),
                    "probe_passes": cold.counts.get("probe_passes"),
                    "seconds": {s: round(v, 3) for s, v in cold.seconds.items()},
                    "total_seconds": round(total, 2),
                    "seconds_per_expert": round(total / n, 2),
                    "resume_seconds": round(time.perf_counter() - start, 2),
                    "resume_skipped": sorted(warm.skipped),
                }
            )
            print(f"N={n}: {total:.1f} s", flush=True)
    print_table(rows)
    report = {
        "what": f"simmerge scan, local executor, cold cache; sub-catalogs of {zoo.name}",
        "zoo": str(zoo),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(args.out or ROOT / "scripts" / "results" / f"bench_scan_{args.device}.json")
    write_json_report(out, report)
    return 0


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'N':>3} {'passes':>7} {'sig s':>7} {'/model':>7} {'sketch s':>8} {'/model':>7} "
        f"{'pairs s':>8} "
        f"{'/o.pair ms':>10} {'rank s':>7} {'/pair ms':>9} {'plans s':>8} {'report s':>8} "
        f"{'total s':>8} {'/expert':>8} {'resume s':>8}"
    )
    print(head)
    for r in rows:
        s, n = r["seconds"], r["n"]
        print(
            f"{n:>3} {r['probe_passes']:>7} {s['signatures']:>7.2f} {s['signatures'] / n:>7.3f} "
            f"{s['sketches']:>8.2f} "
            f"{s['sketches'] / n:>7.3f} {s['pair_features']:>8.2f} "
            f"{1000 * s['pair_features'] / r['ordered_pairs']:>10.2f} "
            f"{s['ranking_pairs']:>7.2f} {1000 * s['ranking_pairs'] / r['pairs']:>9.1f} "
            f"{s['ranking_plans']:>8.2f} {s['report']:>8.2f} "
            f"{r['total_seconds']:>8.1f} {r['seconds_per_expert']:>8.2f} "
            f"{r['resume_seconds']:>8.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
