"""simmerge's merge engine side by side with mergekit, whole process, on a real checkpoint.

The base is SmolLM2-135M-Instruct dequantized from the GGUF ``scripts/setup.sh`` fetches (fp32,
538 MB); the two experts are two of the smol-small zoo's (``--zoo``, built by
``simmerge zoo build --recipe smol``). For every operator both engines have, one mergekit
YAML is written and run ``--repeats`` times by each engine as a fresh process
(``simmerge merge CONFIG --out DIR`` and ``mergekit-yaml CONFIG DIR``); reported: the median
wall time, the median peak RSS of the process (``ru_maxrss`` of the child), the speed-up and
the memory ratio. Goals (issue "Merge engine..."): every operator >= 3x faster and <= 0.5x the
peak memory of mergekit on CPU.

mergekit is an optional, heavy engine: install it in its own virtual environment and pass its
``mergekit-yaml`` (see scripts/check_mergekit_parity.py):

    python scripts/bench_merge_vs_mergekit.py --mergekit /tmp/mkvenv/bin/mergekit-yaml \
        --zoo runs/smol-small [--bases-dir runs/bases] [--repeats 3] [--operators ties,slerp]

Run it on an idle machine: both engines use every core. Prints a table and writes JSON
(``--out``, default scripts/results/bench_merge_vs_mergekit.json).
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

import yaml

ROOT = Path(__file__).resolve().parents[1]

# operator -> (global parameters, per-model parameters), as a model card would write them
CASES: dict[str, tuple[dict, dict]] = {
    "linear": ({}, {"weight": 0.5}),
    "task_arithmetic": ({"lambda": 1.0}, {"weight": 1.0}),
    "ties": ({"density": 0.5}, {"weight": 1.0}),
    "dare_linear": ({"density": 0.5}, {"weight": 1.0}),
    "dare_ties": ({"density": 0.5}, {"weight": 1.0}),
    "breadcrumbs": ({"density": 0.9, "gamma": 0.01}, {"weight": 1.0}),
    "breadcrumbs_ties": ({"density": 0.9, "gamma": 0.01}, {"weight": 1.0}),
    "della": ({"density": 0.5, "epsilon": 0.1}, {"weight": 1.0}),
    "della_linear": ({"density": 0.5, "epsilon": 0.1}, {"weight": 1.0}),
    "slerp": ({"t": 0.5}, {}),
    "nuslerp": ({}, {"weight": 0.5}),
    "model_stock": ({}, {}),
    "sce": ({"select_topk": 0.5}, {}),
    "karcher": ({}, {}),
}
_NO_BASE = ("linear", "karcher", "nuslerp")


def config_for(operator: str, base: str, a: str, b: str) -> dict:
    shared, per_model = CASES[operator]
    doc: dict = {"merge_method": operator}
    if operator == "slerp":
        doc["base_model"] = a
    elif operator not in _NO_BASE:
        doc["base_model"] = base
    doc["models"] = [
        {"model": m, **({"parameters": per_model} if per_model else {})} for m in (a, b)
    ]
    if shared:
        doc["parameters"] = shared
    doc["dtype"] = "float32"
    return doc


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of ``cmd`` run as a fresh child of a fresh process."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
        "dt = time.perf_counter() - t\n"
        "if r.returncode: sys.stderr.write(r.stderr.decode()[-2000:]); sys.exit(r.returncode)\n"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {out.stderr.strip()[-800:]}")
    seconds, kb = out.stdout.split()
    return float(seconds), int(kb) / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit", required=True, help="path to mergekit-yaml (0.1.5)")
    ap.add_argument("--zoo", default="runs/smol-small", help="a built smol zoo (its experts)")
    ap.add_argument("--experts", default="add,units", help="the two experts to merge")
    ap.add_argument("--bases-dir", default="runs/bases", help="where the SmolLM2 GGUF is")
    ap.add_argument("--operators", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out", default=str(ROOT / "scripts" / "results" / "bench_merge_vs_mergekit.json")
    )
    args = ap.parse_args()

    from simmerge.io.gguf import materialize_gguf
    from simmerge.zoo.bases import BASES

    gguf = Path(args.bases_dir).resolve() / BASES["smollm2"].filename
    base = materialize_gguf(gguf)
    a, b = (Path(args.zoo).resolve() / "experts" / n for n in args.experts.split(","))
    simmerge_cli = str(Path(sys.executable).with_name("simmerge"))
    work = Path(tempfile.mkdtemp(prefix="simmerge-vs-mergekit-"))
    rows = []
    try:
        for operator in args.operators.split(","):
            cfg = work / f"{operator}.yaml"
            cfg.write_text(yaml.safe_dump(config_for(operator, str(base), str(a), str(b))))
            runs: dict[str, list[tuple[float, float]]] = {"simmerge": [], "mergekit": []}
            for _ in range(args.repeats):
                for engine in ("simmerge", "mergekit"):
                    out = work / f"out-{engine}"
                    shutil.rmtree(out, ignore_errors=True)
                    if engine == "simmerge":
                        cmd = [simmerge_cli, "merge", str(cfg), "--out", str(out), "--quiet"]
                        cmd += ["--device", "cpu"]
                    else:
                        cmd = [args.mergekit, str(cfg), str(out), "--quiet"]
                    runs[engine].append(timed(cmd))
            s_t = statistics.median(t for t, _ in runs["simmerge"])
            m_t = statistics.median(t for t, _ in runs["mergekit"])
            s_m = statistics.median(m for _, m in runs["simmerge"])
            m_m = statistics.median(m for _, m in runs["mergekit"])
            row = {
                "operator": operator,
                "simmerge_s": s_t,
                "mergekit_s": m_t,
                "speedup": m_t / s_t,
                "simmerge_peak_gb": s_m,
                "mergekit_peak_gb": m_m,
                "memory_ratio": s_m / m_m,
                "runs": runs,
            }
            rows.append(row)
            print(
                f"{operator:>17}  simmerge {s_t:6.2f} s {s_m:5.2f} GB   mergekit {m_t:6.2f} s "
                f"{m_m:5.2f} GB   {row['speedup']:4.1f}x faster, {row['memory_ratio']:.2f}x memory",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run(
        [str(Path(args.mergekit).with_name("python")), "-c",
         "import importlib.metadata as m; print(m.version('mergekit'))"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    goals = {
        "every_operator_3x_faster": all(r["speedup"] >= 3 for r in rows),
        "every_operator_half_the_memory": all(r["memory_ratio"] <= 0.5 for r in rows),
    }
    report = {
        "benchmark": "merge_vs_mergekit",
        "model": "SmolLM2-135M-Instruct (fp32) + 2 fine-tuned experts",
        "zoo": Path(args.zoo).name,
        "experts": args.experts.split(","),
        "mergekit_version": version,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "repeats": args.repeats,
        "goals": goals,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ngoals: {goals}; wrote {args.out}")


if __name__ == "__main__":
    main()
