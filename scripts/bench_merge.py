"""Benchmark the streaming merge engine on a synthetic, sharded checkpoint of >= 1 GB.

Makes a base and N experts on the fly (sharded safetensors, written tensor by tensor), then
measures, each in a fresh subprocess so peak RSS is its own:

* ``floor``: the same I/O with no math -- read the tensor from the base and every expert, write
  one output tensor into the output shards (the engine's own reader and writer, background
  writes included, so the floor overlaps reads and writes just as the merge does);
* the merge itself for each operator (default task_arithmetic and ties).

Rounds interleave the modes (floor, operator, operator, floor, ...) and each mode keeps its
best round. Reported: GB/s of output weights, wall time, the ratio floor_time / merge_time
(1.0 = as fast as pure I/O), peak RSS above the process's RSS after imports, that peak in units
of the largest tensor (fp32 work copies) plus one output shard, the process's user and system
CPU seconds, and every round's time (the spread shows how steady the machine's I/O was). Goals
(issues "Foundation" and "Merge engine"): peak RSS <= 4x the largest tensor + one output shard;
throughput >= 0.8x the floor for task arithmetic and >= 0.5x for TIES on CPU.

    python scripts/bench_merge.py                      # 1 GiB per model, CPU
    python scripts/bench_merge.py --device cuda        # on a GPU machine
    python scripts/bench_merge.py --size-gb 0.1 --quick  # smoke run

Prints a table and writes JSON (``--out``, default scripts/results/bench_merge_<device>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]


def make_model(folder: Path, names, shape, shard_bytes: int, base: Path | None, seed: int):
    """Write a sharded checkpoint; an expert is base + 1% Gaussian noise per tensor."""
    from simmerge.io.checkpoint import open_checkpoint
    from simmerge.io.safetensors_format import SafetensorsStreamWriter

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "synthetic"}))
    per_tensor = shape[0] * shape[1] * 4
    per_shard = max(1, shard_bytes // per_tensor)
    shards = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    ref = open_checkpoint(base) if base else None
    g = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        layout = [(n, torch.float32, shape) for n in shard]
        with SafetensorsStreamWriter(folder / fname, layout) as w:
            for n in shard:
                t = torch.randn(shape, generator=g) * 0.02
                if ref is not None:
                    t = ref.get(n).add_(t, alpha=0.5)
                w.write(n, t)
                weight_map[n] = fname
    index = {"metadata": {"total_size": per_tensor * len(names)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


WORKER = r"""
import json, resource, sys, time
import psutil, torch
torch.set_num_threads(int(sys.argv[5]))
from simmerge.io.checkpoint import open_checkpoint
from simmerge.merging import MergePlan, PlanMember, merge
from simmerge.io.safetensors_format import SafetensorsStreamWriter
mode, base, members, out = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
device, shard_bytes = sys.argv[6], int(sys.argv[7])
params = json.loads(sys.argv[8])
rss0 = psutil.Process().memory_info().rss
t0 = time.perf_counter()
if mode == "floor":
    import os
    os.makedirs(out)
    ckpts = [open_checkpoint(p) for p in [base] + members]
    ref = ckpts[0]
    names = ref.names
    per = max(1, shard_bytes // ref.largest_tensor_bytes)
    for i in range(0, len(names), per):
        shard = names[i:i + per]
        layout = [(n, ref.info(n).torch_dtype, ref.info(n).shape) for n in shard]
        with SafetensorsStreamWriter(f"{out}/shard{i}.safetensors", layout, background=True) as w:
            for n in shard:
                ts = [c.get(n, device=device) for c in ckpts]
                w.write(n, ts[-1].cpu())
                del ts
else:
    plan = MergePlan(operator=mode, base=base, members=tuple(PlanMember(model=m) for m in members),
                     params=params)
    merge(plan, out, device=device, shard_bytes=shard_bytes)
if device == "cuda":
    torch.cuda.synchronize()
elapsed = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
peak = usage.ru_maxrss * 1024
gpu_peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
print(json.dumps({"seconds": elapsed, "rss_after_imports": rss0, "peak_rss": peak,
                  "gpu_peak": gpu_peak, "user_s": usage.ru_utime, "sys_s": usage.ru_stime}))
"""


def run_worker(mode, base, members, out, threads, device, shard_bytes, params) -> dict:
    cmd = [
        sys.executable,
        "-c",
        WORKER,
        mode,
        str(base),
        ",".join(map(str, members)),
        str(out),
        str(threads),
        device,
        str(shard_bytes),
        json.dumps(params),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each model in GiB")
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--tensor-mb", type=float, default=64.0, help="size of each tensor (fp32)")
    ap.add_argument("--shard-mb", type=float, default=256.0, help="input and output shard size")
    ap.add_argument("--operators", default="task_arithmetic,ties")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (best kept per mode)")
    ap.add_argument(
        "--workdir", default=None, help="a folder for the synthetic models (a fresh subfolder)"
    )
    ap.add_argument("--out", default=None, help="JSON results path")
    ap.add_argument("--quick", action="store_true", help="one repeat (smoke runs)")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats

    cols = 1024
    rows = int(args.tensor_mb * 1024 * 1024 / 4 / cols)
    shape = (rows, cols)
    tensor_bytes = rows * cols * 4
    n_tensors = max(1, round(args.size_gb * 1024**3 / tensor_bytes))
    names = [f"layers.{i}.weight" for i in range(n_tensors)]
    shard_bytes = int(args.shard_mb * 1024 * 1024)
    work = Path(tempfile.mkdtemp(prefix="simmerge-bench-", dir=args.workdir))
    params = {"ties": {"density": 0.5}}

    print(
        f"making {args.experts + 1} models of {n_tensors} x {shape} fp32 "
        f"({n_tensors * tensor_bytes / 1024**3:.2f} GiB each) in {work} ...",
        flush=True,
    )
    make_model(work / "base", names, shape, shard_bytes, None, 0)
    members = []
    for i in range(args.experts):
        make_model(work / f"e{i}", names, shape, shard_bytes, work / "base", i + 1)
        members.append(work / f"e{i}")

    results = []
    model_bytes = n_tensors * tensor_bytes
    modes = ["floor", *args.operators.split(",")]
    # Rounds interleave the modes, so a slow spell of the machine's disk or memory (large on a
    # virtual machine) hits every mode alike instead of biasing one; round 0 warms the page cache
    # and is discarded, and each mode keeps its best round.
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(repeats + 1):
        for mode in modes:
            out = work / f"out-{mode}-{r}"
            res = run_worker(
                mode,
                work / "base",
                members,
                out,
                args.threads,
                args.device,
                shard_bytes,
                params.get(mode, {}),
            )
            shutil.rmtree(out)
            if r > 0:
                runs[mode].append(res)
    for mode in modes:
        best = min(runs[mode], key=lambda res: res["seconds"])
        rounds = [round(res["seconds"], 3) for res in runs[mode]]
        peak_over = best["peak_rss"] - best["rss_after_imports"]
        results.append(
            {
                "mode": mode,
                "seconds": round(best["seconds"], 3),
                "gb_per_s": round(model_bytes / 1024**3 / best["seconds"], 3),
                "peak_rss_over_baseline_mb": round(peak_over / 1024**2, 1),
                "peak_in_largest_tensors": round(peak_over / tensor_bytes, 2),
                "peak_over_bound": round(peak_over / (4 * tensor_bytes + shard_bytes), 3),
                "gpu_peak_mb": round(best["gpu_peak"] / 1024**2, 1),
                "user_cpu_s": round(best["user_s"], 2),
                "sys_cpu_s": round(best["sys_s"], 2),
                "rounds_seconds": rounds,
            }
        )
    floor_s = results[0]["seconds"]
    floor_median = statistics.median(results[0]["rounds_seconds"])
    for row in results:
        row["floor_ratio"] = round(floor_s / row["seconds"], 3)
        row["median_seconds"] = round(statistics.median(row["rounds_seconds"]), 3)
        row["median_floor_ratio"] = round(floor_median / row["median_seconds"], 3)

    header = [
        "mode",
        "seconds",
        "gb_per_s",
        "floor_ratio",
        "median_floor_ratio",
        "peak_rss_over_baseline_mb",
        "peak_in_largest_tensors",
        "peak_over_bound",
        "sys_cpu_s",
        "rounds_seconds",
    ]
    print()
    print(" | ".join(f"{h:>14}" for h in header))
    for row in results:
        print(" | ".join(f"{row[h]!s:>14}" for h in header))
    report = {
        "benchmark": "bench_merge",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": {
            "model_gib": round(model_bytes / 1024**3, 3),
            "experts": args.experts,
            "tensor_shape": list(shape),
            "tensor_mb": round(tensor_bytes / 1024**2, 1),
            "n_tensors": n_tensors,
            "shard_mb": args.shard_mb,
            "device": args.device,
            "threads": args.threads,
            "repeats": repeats,
        },
        "bound": "peak RSS <= 4 x largest tensor + one output shard; floor_ratio >= 0.5",
        "machine": {
            "cpu_count": os.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "results": results,
    }
    out_path = Path(args.out or ROOT / "scripts" / "results" / f"bench_merge_{args.device}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out_path}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
