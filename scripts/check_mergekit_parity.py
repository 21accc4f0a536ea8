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
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=LAYERS,
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
    rows += config_rows(Path(args.mergekit), work, base, experts)

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


LAYERS = 6
_ATTN_MLP_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]


def _src(model: str, start: int = 0, end: int = LAYERS, **params) -> dict:
    out = {"model": model, "layer_range": [start, end]}
    if params:
        out["parameters"] = params
    return out


# Configs in the shapes people publish (placeholders: BASE, E1, E2, E3), beyond one uniform
# merge: gradients, filters, per-model gamma/epsilon, slices, the operators outside the grid.
CONFIGS: tuple[tuple[str, dict], ...] = (
    (
        "slerp slices, filtered t gradients",
        {
            "merge_method": "slerp",
            "base_model": "E1",
            "slices": [{"sources": [_src("E1"), _src("E2")]}],
            "parameters": {"t": _ATTN_MLP_T},
            "dtype": "float32",
        },
    ),
    (
        "breadcrumbs, per-model gamma, density gradient",
        {
            "merge_method": "breadcrumbs",
            "base_model": "BASE",
            "models": [
                {"model": "E1", "parameters": {"weight": 0.6, "gamma": 0.05}},
                {"model": "E2", "parameters": {"weight": 0.4, "density": [0.5, 0.9]}},
            ],
            "parameters": {"density": 0.7, "gamma": 0.01},
        },
    ),
    (
        "breadcrumbs_ties, per-model gamma",
        {
            "merge_method": "breadcrumbs_ties",
            "base_model": "BASE",
            "models": [
                {"model": "E1", "parameters": {"weight": 1.0, "density": 0.6, "gamma": 0.02}},
                {"model": "E2", "parameters": {"weight": 0.5, "density": 0.8, "gamma": 0.1}},
                {"model": "E3", "parameters": {"weight": 0.7}},
            ],
            "parameters": {"density": 0.5, "normalize": True},
        },
    ),
    (
        "ties, filter-keyed weights",
        {
            "merge_method": "ties",
            "base_model": "BASE",
            "models": [
                {
                    "model": "E1",
                    "parameters": {
                        "weight": [{"filter": "mlp", "value": [0.2, 1.0]}, {"value": 0.5}],
                        "density": 0.5,
                    },
                },
                {"model": "E2", "parameters": {"weight": 0.5, "density": [0.3, 0.8]}},
            ],
            "parameters": {"lambda": 0.9},
        },
    ),
    (
        "task_arithmetic, global weight, lambda gradient",
        {
            "merge_method": "task_arithmetic",
            "base_model": "BASE",
            "models": [{"model": "E1"}, {"model": "E2", "parameters": {"weight": 0.3}}],
            "parameters": {"weight": 0.8, "lambda": [0.5, 1.2]},
        },
    ),
    (
        "della_linear, per-model epsilon (density 1)",
        {
            "merge_method": "della_linear",
            "base_model": "BASE",
            "models": [
                {"model": "E1", "parameters": {"weight": 0.5, "epsilon": 0.05}},
                {"model": "E2", "parameters": {"weight": 0.5, "epsilon": 0.1}},
            ],
            "parameters": {"density": 1.0},
        },
    ),
    (
        "nuslerp with a base",
        {
            "merge_method": "nuslerp",
            "base_model": "BASE",
            "models": [
                {"model": "E1", "parameters": {"weight": 0.3}},
                {"model": "E2", "parameters": {"weight": 0.7}},
            ],
        },
    ),
    (
        "nuslerp row-wise, no base",
        {
            "merge_method": "nuslerp",
            "models": [
                {"model": "E1", "parameters": {"weight": [1.0, 0.2]}},
                {"model": "E2", "parameters": {"weight": 1.0}},
            ],
            "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        },
    ),
    (
        "sce select_topk 0.5",
        {
            "merge_method": "sce",
            "base_model": "BASE",
            "models": [{"model": "E1"}, {"model": "E2"}, {"model": "E3"}],
            "parameters": {"select_topk": 0.5},
        },
    ),
    (
        "karcher of three",
        {
            "merge_method": "karcher",
            "models": [{"model": "E1"}, {"model": "E2"}, {"model": "E3"}],
        },
    ),
    (
        "passthrough frankenmerge, filtered scale",
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [_src("E1", 0, 4)]},
                {
                    "sources": [
                        _src(
                            "E2",
                            2,
                            6,
                            scale=[{"filter": "o_proj", "value": 0.0}, {"value": 1.0}],
                        )
                    ]
                },
            ],
        },
    ),
    (
        "linear slices with per-slice weights, out_dtype",
        {
            "merge_method": "linear",
            "slices": [
                {
                    "sources": [_src("E1", 0, 3, weight=0.7), _src("E2", 0, 3, weight=0.3)],
                },
                {
                    "sources": [_src("E1", 3, 6), _src("E2", 3, 6)],
                    "parameters": {"weight": [0.2, 0.8]},
                },
            ],
            "out_dtype": "bfloat16",
        },
    ),
)


def _fill(value, paths: dict[str, str]):
    if isinstance(value, dict):
        return {k: _fill(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, paths) for v in value]
    return paths.get(value, value) if isinstance(value, str) else value


def config_rows(mergekit: Path, work: Path, base: Path, experts: list[Path]) -> list[dict]:
    """Run each of :data:`CONFIGS` through mergekit-yaml and :class:`MergeConfig`; compare."""
    import yaml

    from simmerge.merging import MergeConfig

    paths = {"BASE": str(base), **{f"E{i}": str(e) for i, e in enumerate(experts, 1)}}
    rows = []
    for k, (label, doc) in enumerate(CONFIGS):
        doc = _fill(doc, paths)
        cfg = work / f"config{k}.yaml"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        out_mk = work / f"mk-config{k}"
        proc = subprocess.run(
            [str(mergekit), str(cfg), str(out_mk), "--quiet"], capture_output=True, text=True
        )
        row = {"operator": label, "params": {}, "config": doc["merge_method"]}
        if proc.returncode != 0:
            rows.append({**row, "accepted_by_mergekit": False,
                         "error": proc.stderr.strip().splitlines()[-1:]})  # fmt: skip
            continue
        ours = merge(MergeConfig.from_yaml(cfg), device="cpu")
        theirs = open_checkpoint(out_mk)
        names_match = set(ours) == set(theirs.names)
        diffs = {
            n: float((theirs.get(n).float() - t.float()).abs().max())
            for n, t in ours.items()
            if n in theirs.tensors
        }
        worst = max(diffs, key=diffs.get)
        dtypes_match = all(theirs.info(n).torch_dtype == t.dtype for n, t in ours.items()
                           if n in theirs.tensors)  # fmt: skip
        rows.append({**row, "accepted_by_mergekit": True,
                     "max_abs_diff": diffs[worst] if names_match and dtypes_match else float("inf"),
                     "same_tensor_names": names_match, "same_dtypes": dtypes_match,
                     "worst_tensor": worst, "tensors": len(diffs)})  # fmt: skip
    return rows


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
