"""The main job on the embedded default: build the tiny zoo, then merge and evaluate.

For a few expert pairs (experts of different tasks) every operator of :data:`DEMO_GRID` merges
the pair in memory and the merge is scored on both experts' tasks. Scores are reported raw and
normalized (score of the merge / score of that task's expert), the quantity the predictor will
learn to rank. This is the exhaustive merge-and-evaluate loop that later issues replace with
ranking; it is also an end-to-end check that zoo, engine and evaluation fit together.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from simmerge.catalog import Catalog, CatalogModel
from simmerge.errors import CatalogError
from simmerge.evaluate import EvalTask, evaluate
from simmerge.io_utils import atomic_write_text
from simmerge.merge import MergePlan, PlanMember, merge

DEMO_GRID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("linear", {}),
    ("task_arithmetic", {"lambda": 1.0}),
    ("ties", {"density": 0.5}),
    ("dare_linear", {"density": 0.5}),
    ("dare_ties", {"density": 0.5}),
    ("slerp", {"t": 0.5}),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.05}),
    ("della", {"density": 0.5, "epsilon": 0.1}),
    ("model_stock", {}),
)


@dataclass(frozen=True)
class DemoRow:
    """One merge of one pair, scored on both experts' tasks."""

    expert_a: str
    expert_b: str
    task_a: str
    task_b: str
    operator: str
    params: dict[str, Any]
    plan_id: str
    score_a: float
    score_b: float
    normalized_a: float
    normalized_b: float


def pair_plan(
    catalog: Catalog, a: CatalogModel, b: CatalogModel, operator: str, params
) -> MergePlan:
    base_free = operator in ("linear", "slerp")
    return MergePlan(
        operator=operator,
        base=None if base_free else str(catalog.base.path),
        members=(PlanMember(model=str(a.path)), PlanMember(model=str(b.path))),
        params=params,
    )


def demo_pairs(catalog: Catalog, n_pairs: int) -> list[tuple[CatalogModel, CatalogModel]]:
    """The first ``n_pairs`` pairs of single-task experts with different tasks with eval data."""
    usable = [e for e in catalog.experts if len(e.tasks) == 1 and _eval_path(catalog, e.tasks[0])]
    pairs = [(a, b) for a, b in itertools.combinations(usable, 2) if a.tasks != b.tasks]
    if not pairs:
        raise CatalogError(
            f"Catalog {catalog.name!r} has no pair of single-task experts with eval data.",
            "add `tasks: {NAME: {eval: FILE}}` entries for the experts' tasks.",
        )
    step = max(1, len(pairs) // max(n_pairs, 1))  # spread the pairs over the catalog
    return pairs[::step][:n_pairs]


def _eval_path(catalog: Catalog, task: str) -> Path | None:
    spec = catalog.tasks.get(task)
    return spec.eval if spec else None


def run_demo(
    catalog: Catalog,
    n_pairs: int = 3,
    *,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Merge-and-evaluate ``n_pairs`` pairs x every operator of :data:`DEMO_GRID`."""
    pairs = demo_pairs(catalog, n_pairs)
    tasks = {t: EvalTask.load(spec.eval, name=t) for t, spec in catalog.tasks.items() if spec.eval}
    expert_scores = {
        (e.name, t): evaluate(str(e.path), tasks[t], device).score
        for e in catalog.experts
        for t in e.tasks
        if t in tasks
    }
    base_scores = {t: evaluate(str(catalog.base.path), tk, device).score for t, tk in tasks.items()}
    rows: list[DemoRow] = []
    jobs = [(a, b, op, params) for a, b in pairs for op, params in DEMO_GRID]
    for a, b, op, params in tqdm(jobs, desc="merge+eval", disable=not progress):
        plan = pair_plan(catalog, a, b, op, params)
        state = merge(plan, device=device)
        ref = str(catalog.base.path)
        ta, tb = a.tasks[0], b.tasks[0]
        sa = evaluate(state, tasks[ta], device, reference_dir=ref).score
        sb = evaluate(state, tasks[tb], device, reference_dir=ref).score
        ea, eb = expert_scores[(a.name, ta)], expert_scores[(b.name, tb)]
        rows.append(
            DemoRow(
                a.name,
                b.name,
                ta,
                tb,
                op,
                dict(plan.params),
                plan.plan_id,
                sa,
                sb,
                sa / ea if ea > 0 else 0.0,
                sb / eb if eb > 0 else 0.0,
            )
        )
    return {
        "catalog": catalog.name,
        "experts": [
            {"name": n, "task": t, "expert_score": s, "base_score": base_scores[t]}
            for (n, t), s in expert_scores.items()
        ],
        "rows": [asdict(r) for r in rows],
    }


def format_report(report: dict[str, Any]) -> str:
    lines = ["experts (own task):", f"{'expert':>14} {'task':>12} {'expert':>7} {'base':>6}"]
    for e in report["experts"]:
        lines.append(
            f"{e['name']:>14} {e['task']:>12} {e['expert_score']:>7.2f} {e['base_score']:>6.2f}"
        )
    lines += ["", "merges (normalized score = merge score / expert score on that task):"]
    lines.append(f"{'pair':>26} {'operator':>16} {'norm A':>7} {'norm B':>7} {'min':>5}")
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for r in report["rows"]:
        pair = (r["expert_a"], r["expert_b"])
        low = min(r["normalized_a"], r["normalized_b"])
        lines.append(
            f"{r['expert_a'] + ' + ' + r['expert_b']:>26} {r['operator']:>16} "
            f"{r['normalized_a']:>7.2f} {r['normalized_b']:>7.2f} {low:>5.2f}"
        )
        if low > best.get(pair, (-1.0, ""))[0]:
            best[pair] = (low, r["operator"])
    lines += ["", "best operator per pair (by the lower of the two normalized scores):"]
    for (a, b), (low, op) in best.items():
        lines.append(f"{a + ' + ' + b:>26} {op:>16} {low:>5.2f}")
    return "\n".join(lines)


def run_demo_cli(args: Any) -> int:
    """Handler of ``simmerge demo`` (arguments declared in simmerge.cli)."""
    from simmerge.zoo import build_zoo

    zoo = build_zoo(args.zoo, device=args.device)
    report = run_demo(Catalog.load(Path(zoo) / "catalog.yaml"), args.pairs, device=args.device)
    print(format_report(report))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0
