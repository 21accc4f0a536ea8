"""Benchmark ``collect --executor ray`` on local Ray clusters of 1, then 2 nodes (one CPU each).

Each cluster is a real multi-node cluster on this machine (tests/_ray_cluster.py: a
``ray start --head`` and ``ray start --address`` nodes, each with its own raylet and one CPU, so
one block of merges at a time per node). The same job list -- the ordered pairs of ``--models``
x ``--candidates`` of the default tiny zoo (built if missing) or of ``--catalog`` -- is collected
into a fresh store on each cluster, after one untimed warm-up job per node, so the table times
the merges and not the workers' first imports, once per ``--block-sizes`` entry (merges per Ray
task: fewer, larger tasks pay Ray's per-task cost less often). An in-process collection of the
same jobs (the default executor) is the baseline whose rows every cluster run must reproduce.
Prints a table (block size, nodes, jobs, merges, wall s, jobs/s, speed-up over 1 node at that
block size) and writes JSON (default ``scripts/results/bench_collect_ray.json``, or
``bench_collect_ray_<catalog folder>.json`` with ``--catalog``).

``--catalog`` collects from an existing catalog instead (e.g. ``runs/smol-large/catalog.yaml``:
real 135 M-parameter merges of several seconds each, where Ray's per-task cost is small next to
the work; pass ``--models`` from it). The experts' reference scores then come from the default
score cache that ``simmerge collect`` fills, computed there once if missing (untimed).

The cluster runs share this machine's cores, so a node count above the free cores measures
contention, not scaling: run it on an idle machine with at least as many cores as nodes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the local cluster helper is the tests'

DEFAULT_MODELS = "reverse_a,sort_a,rotate_a,caesar_a"
DEFAULT_CANDIDATES = "linear,task_arithmetic[lambda=0.7],ties[density=0.5],slerp[t=0.3]"


def store_rows(path: Path) -> list[tuple]:
    from simmerge.outcomes.store import OutcomeStore

    with OutcomeStore(path) as store:
        return sorted(tuple(v for k, v in asdict(o).items() if k != "created") for o in store)


def warm_up(nodes: int) -> None:
    """One job per node in this driver's Ray job (whose workers the collection then reuses),
    so that every node has a worker with torch and simmerge imported before the clock starts."""
    import ray

    remote = ray.remote(num_cpus=1)(_import_simmerge)
    ray.get([remote.options(resources={f"node{i}": 0.01}).remote() for i in range(nodes)])


def _import_simmerge() -> int:
    import simmerge.outcomes.collection  # noqa: F401  (what a block's worker imports)

    return os.getpid()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(ROOT / "runs" / "zoo"), help="default tiny zoo")
    parser.add_argument(
        "--catalog", default=None, help="collect from this catalog instead of the tiny zoo"
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help="experts, comma-separated")
    parser.add_argument("--candidates", default=DEFAULT_CANDIDATES, help="candidate ids")
    parser.add_argument("--nodes", default="1,2", help="cluster sizes, comma-separated")
    parser.add_argument(
        "--block-sizes",
        default="2,4",
        help="merges per Ray task, comma-separated: each is run on every cluster size "
        "(4 is collect's default; with 4 candidates it is one task per pair)",
    )
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)

    import ray
    import torch
    from _ray_cluster import LocalRayCluster

    from simmerge.catalog import Catalog
    from simmerge.evaluation.scorer import MergeScorer
    from simmerge.infra.files import write_json_report
    from simmerge.merging.grid import grid_from_ids
    from simmerge.outcomes.collection import collect_outcomes, expert_pairs
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.zoo import build_zoo

    torch.set_num_threads(1)  # as one Ray task gets: the baseline is one worker's speed
    if args.catalog:
        catalog_path = Path(args.catalog)
    else:
        catalog_path = build_zoo(args.zoo, size="default", seed=0, progress=True) / "catalog.yaml"
    catalog = Catalog.load(catalog_path)
    grid = grid_from_ids(args.candidates.split(","))
    block_sizes = [int(b) for b in args.block_sizes.split(",")]
    pairs = expert_pairs(catalog, args.models.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-collect-ray-") as tmp:
        # a catalog of real models shares collect's score cache (its references are costly)
        cache = None if args.catalog else Path(tmp) / "cache"
        MergeScorer(catalog).expert_scores(cache_dir=cache)  # untimed: every run reads them
        start = time.perf_counter()
        with OutcomeStore(Path(tmp) / "local.sqlite") as store:
            local = collect_outcomes(
                catalog, store, grid, pairs=pairs, cache_dir=cache, progress=False
            )
        rows.append(_row("in-process", 0, local, time.perf_counter() - start, None))
        want = store_rows(Path(tmp) / "local.sqlite")
        print(f"in-process: {rows[-1]['wall_s']:.1f} s", flush=True)
        runs = [(b, int(n)) for b in block_sizes for n in args.nodes.split(",")]
        for block_size, n in runs:
            with LocalRayCluster(nodes=n, cpus=1) as cluster:
                # one driver connection for the warm-up and the collection (its executor
                # finds Ray connected and uses this connection)
                ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
                try:
                    warm_up(n)
                    path = Path(tmp) / f"ray-{block_size}-{n}.sqlite"
                    start = time.perf_counter()
                    with OutcomeStore(path) as store:
                        summary = collect_outcomes(
                            catalog,
                            store,
                            grid,
                            pairs=pairs,
                            cache_dir=cache,
                            progress=False,
                            executor="ray",
                            address=cluster.address,
                            block_size=block_size,
                        )
                    wall = time.perf_counter() - start
                finally:
                    ray.shutdown()
            if store_rows(path) != want:
                raise SystemExit(f"{n} node(s): the store's rows differ from the in-process run")
            rows.append(_row("ray", n, summary, wall, block_size))
            print(f"ray, block {block_size}, {n} node(s): {wall:.1f} s", flush=True)
    for r in rows:
        one = next(
            (o["wall_s"] for o in rows if o["nodes"] == 1 and o["block_size"] == r["block_size"]),
            None,
        )
        r["speedup_vs_1_node"] = round(one / r["wall_s"], 2) if one and r["nodes"] else None
    print_table(rows)
    report = {
        "what": "simmerge collect --executor ray on local clusters of one-CPU nodes; wall time "
        "of the collection on a connected driver with warm workers",
        "catalog": str(catalog_path) if args.catalog else "default tiny zoo",
        "models": args.models.split(","),
        "candidates": args.candidates.split(","),
        "block_sizes": block_sizes,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "ray": ray.__version__,
        "torch": torch.__version__,
        "rows": rows,
    }
    name = f"bench_collect_ray_{catalog_path.parent.name}" if args.catalog else "bench_collect_ray"
    out = Path(args.out or ROOT / "scripts" / "results" / f"{name}.json")
    write_json_report(out, report)
    return 0


def _row(executor: str, nodes: int, summary, wall: float, block_size: int | None) -> dict:
    jobs = summary.jobs - summary.skipped
    return {
        "executor": executor,
        "block_size": block_size,
        "nodes": nodes,
        "jobs": jobs,
        "merges": summary.merged,
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall, 3),
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'executor':>10} {'block':>5} {'nodes':>5} {'jobs':>5} {'merges':>6} {'wall s':>7} "
          f"{'jobs/s':>7} {'x 1 node':>8}")  # fmt: skip
    for r in rows:
        speedup = f"{r['speedup_vs_1_node']:.2f}" if r["speedup_vs_1_node"] else "-"
        print(
            f"{r['executor']:>10} {r['block_size'] or '-':>5} {r['nodes'] or '-':>5} "
            f"{r['jobs']:>5} {r['merges']:>6} "
            f"{r['wall_s']:>7.1f} {r['jobs_per_s']:>7.2f} {speedup:>8}"
        )


if __name__ == "__main__":
    sys.exit(main())
