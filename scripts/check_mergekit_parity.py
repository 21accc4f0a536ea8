"""Check simmerge's operators against mergekit 0.1.5 on the same checkpoints.

mergekit is an optional, heavy engine, so it lives in its own virtual environment:

    python3 -m venv /tmp/mkvenv
    /tmp/mkvenv/bin/pip install torch==2.13.0 && /tmp/mkvenv/bin/pip install mergekit==0.1.5
    python scripts/check_mergekit_parity.py --mergekit /tmp/mkvenv/bin/mergekit-yaml

(``mergekit-multi`` must sit beside ``mergekit-yaml``, as it does in such a venv).

For every deterministic operator (DARE/DELLA draw their own random masks, so they are compared
at density 1 only) it exports a plan with ``to_mergekit_yaml(strict=True)``, runs mergekit's CLI
on it, merges the same plan with simmerge, and reports the largest absolute difference per
operator (fp32 tiny Llama base + 3 experts). Multi-way plans go through ``simmerge export``'s
code path (:func:`simmerge.scanning.export.mergekit_documents`): a 3-expert chain runs with
``mergekit-multi`` (found beside ``--mergekit``), a one-shot merge with ``mergekit-yaml``, and
both are compared with :func:`simmerge.multiway.search.execute_plan`. Prints a table and writes JSON
(``--out``, default scripts/results/mergekit_parity.json). Exits 1 if any difference exceeds
``--tol``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from simmerge.io.checkpoint import open_checkpoint
from simmerge.merging import MergePlan, PlanMember, merge
from simmerge.zoo.micro import save_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ("linear", {}, (1.0, 2.0, 0.5)),
    ("task_arithmetic", {"lambda": 0.7}, (1.0, 0.5, 0.3)),
    ("ties", {"density": 0.4}, (1.0, 0.6, 0.8)),
    ("ties", {"density": 0.6, "normalize": False, "lambda": 1.3}, (1.0, 1.0, 1.0)),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.05}, (1.0, 0.5, 1.0)),
    ("ties", {"density": 0.3, "rescale": True}, (1.0, 0.5, 1.0)),
    ("breadcrumbs", {"density": 0.7, "gamma": 0.1, "rescale": True}, (1.0, 1.0, 0.5)),
    ("slerp", {"t": 0.35}, (1.0, 1.0)),
    ("model_stock", {}, (1.0, 1.0, 1.0)),
    ("dare_linear", {"density": 1.0}, (1.0, 0.5, 0.5)),
    ("dare_ties", {"density": 1.0}, (1.0, 0.5, 0.5)),
    ("della", {"density": 1.0, "epsilon": 0.1}, (1.0, 1.0, 1.0)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit", required=True, help="path to mergekit-yaml (0.1.5)")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--out", default=str(ROOT / "scripts" / "results" / "mergekit_parity.json"))
    args = ap.parse_args()
    version = subprocess.run(
        [
            str(Path(args.mergekit).parent / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('mergekit'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()

    work = Path(tempfile.mkdtemp(prefix="simmerge-parity-"))
    config = tiny_config(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4
    )
    base = save_model(work / "base", seed=0, config=config)
    experts = [
        save_model(work / f"e{i}", seed=i, base=base, scale=0.02 * i, config=config)
        for i in (1, 2, 3)
    ]
    rows = []
    for k, (operator, params, weights) in enumerate(CASES):
        members = tuple(
            PlanMember(model=str(e), weight=w)
            if operator not in ("slerp", "model_stock")
            else PlanMember(model=str(e))
            for e, w in zip(experts, weights, strict=False)
        )
        plan = MergePlan(
            operator=operator,
            members=members,
            params=params,
            base=None if operator in ("linear", "slerp") else str(base),
        )
        cfg = work / f"plan{k}.yaml"
        plan.to_mergekit_yaml(cfg, strict=True)
        out_mk = work / f"mk{k}"
        proc = subprocess.run(
            [args.mergekit, str(cfg), str(out_mk), "--quiet"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            rows.append(
                {
                    "operator": operator,
                    "params": params,
                    "accepted_by_mergekit": False,
                    "error": proc.stderr.strip().splitlines()[-1:],
                }
            )
            continue
        ours = merge(plan, device="cpu")
        theirs = open_checkpoint(out_mk)
        diffs = {n: float((theirs.get(n).float() - t.float()).abs().max()) for n, t in ours.items()}
        worst = max(diffs, key=diffs.get)
        rows.append(
            {
                "operator": operator,
                "params": params,
                "accepted_by_mergekit": True,
                "max_abs_diff": diffs[worst],
                "worst_tensor": worst,
                "tensors": len(diffs),
            }
        )

    rows += multiway_rows(Path(args.mergekit), work, base, experts)

    print(f"{'operator':>16} | {'params':>40} | {'mergekit ok':>11} | max |ours - mergekit|")
    for r in rows:
        diff = f"{r['max_abs_diff']:.2e}" if r["accepted_by_mergekit"] else r["error"]
        print(
            f"{r['operator']:>16} | {json.dumps(r['params']):>40} | "
            f"{r['accepted_by_mergekit']!s:>11} | {diff}"
        )
    ok = all(r["accepted_by_mergekit"] and r["max_abs_diff"] <= args.tol for r in rows)
    report = {
        "benchmark": "mergekit_parity",
        "mergekit_version": version,
        "torch": torch.__version__,
        "tolerance": args.tol,
        "all_within_tolerance": ok,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nall within {args.tol:g}: {ok}; wrote {args.out}")
    sys.exit(0 if ok else 1)


MULTIWAY = (
    ("chain", ("e1", "e2", "e3"), ("ties[density=0.5]", "slerp[t=0.3]"), False),
    ("one-shot", ("e1", "e2", "e3"), ("task_arithmetic[lambda=0.7]",), True),
)


def multiway_rows(mergekit: Path, work: Path, base: Path, experts: list[Path]) -> list[dict]:
    """Export multi-way plans as ``simmerge export`` does, run mergekit, compare."""
    import yaml

    from simmerge.catalog import Catalog
    from simmerge.multiway.search import MultiwayPlan, execute_plan
    from simmerge.scanning.export import mergekit_documents

    catalog = Catalog.from_dict(
        {
            "name": "parity",
            "base": {"name": "base", "path": str(base)},
            "experts": [{"name": f"e{i}", "path": str(e)} for i, e in enumerate(experts, 1)],
        },
        root=work,
    )
    rows = []
    for kind, members, steps, oneshot in MULTIWAY:
        plan = MultiwayPlan(members, steps, oneshot)
        entry = {"kind": "multiway", "members": members, "steps": steps, "oneshot": oneshot}
        docs = mergekit_documents(entry, catalog)
        cfg = work / f"{kind}.yaml"
        cfg.write_text(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=len(docs) > 1))
        out_mk = work / f"mk-{kind}"
        if len(docs) > 1:
            cmd = [str(mergekit.parent / "mergekit-multi"), str(cfg), "--out-path", str(out_mk)]
            cmd += ["-I", str(work / f"inter-{kind}")]
        else:
            cmd = [str(mergekit), str(cfg), str(out_mk), "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        row = {"operator": f"{kind}: {plan.id}", "params": {}, "documents": len(docs)}
        if proc.returncode != 0:
            rows.append({**row, "accepted_by_mergekit": False,
                         "error": proc.stderr.strip().splitlines()[-1:]})  # fmt: skip
            continue
        ours = execute_plan(plan, catalog, device="cpu")
        theirs = open_checkpoint(out_mk)
        diffs = {n: float((theirs.get(n).float() - t.float()).abs().max()) for n, t in ours.items()}
        worst = max(diffs, key=diffs.get)
        rows.append({**row, "accepted_by_mergekit": True, "max_abs_diff": diffs[worst],
                     "worst_tensor": worst, "tensors": len(diffs)})  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
