"""Does writing output tensors from a helper thread pay off on a real checkpoint's tensor sizes?

Merges SmolLM2-135M-Instruct (the base ``scripts/setup.sh`` fetches, fp32) with two experts of
a built smol zoo, in process, with three writer settings interleaved round by round:

* ``every tensor in the thread``: ``BACKGROUND_MIN_BYTES = 0``;
* ``default``: the engine as shipped (tensors under ``BACKGROUND_MIN_BYTES`` written inline);
* ``inline``: no helper thread at all.

The synthetic 64 MB tensors of ``bench_merge.py`` show the large-tensor side. Prints a table of
median and best seconds and writes JSON (``--out``, default
scripts/results/bench_background_writes.json). Run it on an idle machine.

    python scripts/bench_background_writes.py --zoo runs/smol-small [--operator ties]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=str(ROOT / "runs" / "smol-small"))
    ap.add_argument("--experts", default="add,units")
    ap.add_argument("--bases-dir", default=str(ROOT / "runs" / "bases"))
    ap.add_argument("--operator", default="ties")
    ap.add_argument("--rounds", type=int, default=5)
    default_out = ROOT / "scripts" / "results" / "bench_background_writes.json"
    ap.add_argument("--out", default=str(default_out))
    args = ap.parse_args()

    import simmerge.io.safetensors_format as writer_module
    import simmerge.merging.engine as engine
    from simmerge.infra.files import write_json_report
    from simmerge.io.gguf import materialize_gguf
    from simmerge.merging import MergePlan, PlanMember, merge
    from simmerge.zoo.bases import BASES

    base = materialize_gguf(Path(args.bases_dir).resolve() / BASES["smollm2"].filename)
    members = tuple(
        PlanMember(model=str(Path(args.zoo).resolve() / "experts" / n))
        for n in args.experts.split(",")
    )
    params = {"density": 0.5} if args.operator in ("ties", "dare_ties", "breadcrumbs") else {}
    plan = MergePlan(operator=args.operator, base=str(base), members=members, params=params)
    shipped_writer, shipped_min = engine.SafetensorsStreamWriter, writer_module.BACKGROUND_MIN_BYTES

    def inline_writer(path, layout, background=False):
        return shipped_writer(path, layout, background=False)

    settings = {
        "every tensor in the thread": (shipped_writer, 0),
        "default": (shipped_writer, shipped_min),
        "inline": (inline_writer, shipped_min),
    }
    times: dict[str, list[float]] = {k: [] for k in settings}
    work = Path(tempfile.mkdtemp(prefix="simmerge-bg-writes-"))
    try:
        for r in range(args.rounds + 1):  # round 0 warms the page cache and is discarded
            for label, (writer, min_bytes) in settings.items():
                engine.SafetensorsStreamWriter = writer
                writer_module.BACKGROUND_MIN_BYTES = min_bytes
                out = work / f"out-{r}"
                start = time.perf_counter()
                merge(plan, out)
                if r:
                    times[label].append(round(time.perf_counter() - start, 3))
                shutil.rmtree(out)
    finally:
        engine.SafetensorsStreamWriter = shipped_writer
        writer_module.BACKGROUND_MIN_BYTES = shipped_min
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        {
            "writer": label,
            "median_s": round(statistics.median(ts), 3),
            "best_s": min(ts),
            "rounds_s": ts,
        }
        for label, ts in times.items()
    ]
    print(f"{'writer':>28} | {'median s':>8} | {'best s':>7} | rounds")
    for row in rows:
        cells = f"{row['writer']:>28} | {row['median_s']:>8} | {row['best_s']:>7}"
        print(f"{cells} | {row['rounds_s']}")
    write_json_report(
        Path(args.out),
        {
            "benchmark": "bench_background_writes",
            "operator": args.operator,
            "model": "SmolLM2-135M-Instruct fp32 + 2 experts",
            "background_min_bytes": shipped_min,
            "rounds": args.rounds,
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
