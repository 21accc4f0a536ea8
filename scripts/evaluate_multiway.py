"""Evaluate multi-way planning against exhaustive search on a zoo.

    python scripts/evaluate_multiway.py CATALOG [--sizes 3] [--max-models 3] [--sample 20]

For each target task set (every set of ``--sizes`` tasks among the catalog's tasks with eval
data, or a seeded sample of ``--sample`` of them; ``--max-space`` first keeps only the sets
whose bounded space is at most that large, which on a big catalog means the tasks with few
experts) the *bounded space* is: every subset of 2 to ``--max-models`` experts having a target
task, every merge order, every sequence of 2-way operators from ``--grid``, plus one-shot
N-way merges with the grid's N-way operators. Every
plan in it is merged and evaluated on the target tasks (the exhaustive oracle; scores cached
in ``--cache``, a JSON-lines file, so an interrupted run resumes). A plan's score is the mean
over the target tasks of its normalized score (score / the best expert of that task).

simmerge's pick is the top plan of :func:`simmerge.multiway.search.plan_merge` restricted to the
same space, in ``fast`` and ``exact`` mode, each ranked by the analytic score alone and by the
learned plan model (``--plan-model``, default the shipped ``models/multiway``; rows named
``fast+model``, ``exact+model``), and each of those followed by verification (rows
``...+verify<k>``, ``--verify``, default 3): of its top k plans, the one that measures best --
what ``simmerge verify --tasks`` does, at k merges and k x |tasks| evaluations; **best-fixed**
is the one-shot merge of all relevant experts (capped at ``--max-models``, the members with the
most target tasks first) with the N-way operator whose mean score on the *other* task sets is
best; **random** is the mean plan. Metrics as in docs/design.md (gap closure vs best-fixed, % of
oracle), plus the merges and evaluations each method spends (a plan model that reads
single-model skills costs one evaluation per candidate expert and target task, shared by every
task set of the catalog). Prints a table, writes JSON
(``scripts/results/evaluate_multiway_<catalog>.json``). With ``--shard K/N`` several processes
share the work and the cache (appends of one short line are atomic); the final run without
``--shard`` merges nothing new and writes the report.

``--task-sets 'a,b,c;d,e,f'`` names the task sets instead. ``--cached-only`` reports the task
sets whose plans are all in the cache and merges nothing (a look at partial results while
shards run; the report lists the sets it left out).

``--data-out FILE.parquet`` also writes the plan model's training table: one row per measured
(plan, target task a member has) with the columns of :func:`simmerge.learn.plan_model.plan_columns`,
``target`` (the normalized score), and ``catalog``, ``plan``, ``task``, ``steps`` (the plan's
operator ids, ``;``-separated). ``--rankers analytic``
evaluates without a plan model (e.g. before one is trained).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations, permutations, product
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GRID = ("task_arithmetic[lambda=0.7]", "ties[density=0.5]")


def relevant(catalog, tasks) -> list[str]:
    return [e.name for e in catalog.experts if set(e.tasks) & set(tasks)]


def bounded_space(catalog, tasks, max_models: int, grid, oneshot_grid):
    """Every distinct plan of the bounded space (see the module docs)."""
    from simmerge.multiway.search import MultiwayPlan, canonical_plan

    names = relevant(catalog, tasks)
    rank = {name: i for i, name in enumerate(catalog.expert_names)}
    plans: dict[str, MultiwayPlan] = {}
    for size in range(2, max_models + 1):
        for subset in combinations(names, size):
            for order in permutations(subset):
                for steps in product(grid, repeat=size - 1):
                    # equal merges (the first step's two orders) collapse to one plan
                    plan = canonical_plan(MultiwayPlan(order, steps), rank)
                    plans[plan.id] = plan
            if size >= 3:
                for op in oneshot_grid:
                    plan = MultiwayPlan(subset, (op,), oneshot=True)
                    plans[plan.id] = plan
    return list(plans.values())


def fixed_plans(catalog, tasks, max_models: int, nway) -> dict:
    """Best-fixed's plans, one per N-way operator: the one-shot merge of the relevant experts
    (capped at ``max_models``, the members with the most target tasks first); none below 3."""
    from simmerge.multiway.search import MultiwayPlan

    names = relevant(catalog, tasks)  # catalog order, as in the space's one-shot ids
    by_cover = sorted(names, key=lambda n: -len(set(catalog.model(n).tasks) & set(tasks)))
    members = tuple(n for n in names if n in by_cover[:max_models])
    if len(members) < 3:
        return {}
    return {op: MultiwayPlan(members, (op,), oneshot=True) for op in nway}


def best_fixed_ops(records: list[dict]) -> list[str | None]:
    """Each task set's best-fixed operator: the one whose mean score on the *other* task sets
    is best (leave one out); None where the set has no fixed plan or no other set has one."""
    out = []
    for i, rec in enumerate(records):
        others = [r for j, r in enumerate(records) if j != i and r["fixed"]]
        if not rec["fixed"] or not others:
            out.append(None)
            continue
        out.append(max(rec["fixed"], key=lambda o: np.mean([r["fixed"][o] for r in others])))
    return out


class ScoreCache:
    """(plan id, task, eval hash) -> raw score, appended as JSON lines (a torn last line from
    a killed run is ignored)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scores: dict[tuple[str, str, str], float] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                self.scores[(row["plan"], row["task"], row["eval_hash"])] = row["score"]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a")  # noqa: SIM115 -- closed in close()

    def missing(self, plan: str, tasks, hashes: dict[str, str]) -> list[str]:
        """The tasks whose score of ``plan`` (on eval data ``hashes[task]``) is not cached."""
        return [t for t in tasks if (plan, t, hashes[t]) not in self.scores]

    def add(self, plan: str, task: str, eval_hash: str, score: float) -> None:
        self.scores[(plan, task, eval_hash)] = score
        self._file.write(
            json.dumps({"plan": plan, "task": task, "eval_hash": eval_hash, "score": score}) + "\n"
        )
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def measure(plans, tasks, catalog, scorer, cache, progress: bool) -> dict[str, dict[str, float]]:
    """Raw score of every plan on every task, merging only what the cache lacks."""
    from tqdm.auto import tqdm

    from simmerge.multiway.search import execute_plan

    hashes = {t: scorer.eval_hash(t) for t in tasks}
    out = {}
    for plan in tqdm(plans, desc="plans", disable=not progress):
        missing = cache.missing(plan.id, tasks, hashes)
        if missing:
            raw = scorer.score_state(
                execute_plan(plan, catalog, device=str(scorer.device)), missing
            )
            for t in missing:
                cache.add(plan.id, t, hashes[t], float(raw[t]))
        out[plan.id] = {t: cache.scores[(plan.id, t, hashes[t])] for t in tasks}
    return out


def method_name(mode: str, ranker: str) -> str:
    return mode if ranker == "analytic" else f"{mode}+model"


def verified_name(mode: str, ranker: str, k: int) -> str:
    return f"{method_name(mode, ranker)}+verify{k}"


def write_training_table(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    from simmerge.infra.files import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows).sort_values(["plan", "task"], kind="stable")
    atomic_write_bytes(path, frame.to_parquet(index=False))
    print(f"wrote {len(frame)} plan model training rows to {path}")


def main(argv: list[str] | None = None) -> int:
    from simmerge.catalog import Catalog
    from simmerge.evaluation.scorer import MergeScorer
    from simmerge.evaluation.skills import measure_skills
    from simmerge.infra.files import write_json_report
    from simmerge.learn.loading import load_predictor
    from simmerge.learn.plan_model import load_plan_model
    from simmerge.merging.grid import OperatorConfig
    from simmerge.merging.registry import get_operator
    from simmerge.multiway.search import canonical_plan, plan_feature_rows, plan_merge
    from simmerge.signals.profiles import FeatureOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("catalog")
    p.add_argument("--sizes", default="3", help="comma-separated target task set sizes")
    p.add_argument("--sample", type=int, default=20, help="task sets per size (0: all)")
    p.add_argument("--max-models", type=int, default=3)
    p.add_argument(
        "--max-space",
        type=int,
        default=0,
        help="only task sets whose bounded space has at most this many plans (0: any); applied "
        "before --sample, and the report says so (it favours tasks with few experts)",
    )
    p.add_argument("--grid", default=";".join(DEFAULT_GRID), help="operator ids, ';'-separated")
    p.add_argument(
        "--beam",
        type=int,
        default=None,
        help="beam width (default: plan_merge's -- every chain in fast mode where feasible, 4)",
    )
    p.add_argument("--predictor", default=None)
    p.add_argument("--cache", default=None, help="score cache (JSON lines)")
    p.add_argument("--cache-dir", default=None, help="signature/sketch cache")
    p.add_argument("--modes", default="fast,exact")
    p.add_argument("--rankers", default="analytic,model", help="analytic and/or model")
    p.add_argument("--plan-model", default=None, help="plan model folder or shipped name")
    p.add_argument("--data-out", default=None, help="write the plan model's training table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--verify",
        type=int,
        default=3,
        help="k of the verified rows: each method's best measured plan among its top k",
    )
    p.add_argument("--json", default=None)
    p.add_argument(
        "--shard",
        default=None,
        help="K/N: only measure task sets i with i %% N == K (parallel processes on one cache; "
        "a final run without --shard then reads everything from the cache)",
    )
    p.add_argument(
        "--task-sets",
        default=None,
        help="explicit task sets, e.g. 'add,sub,upper;add,units,upper' (instead of --sizes, "
        "--max-space and --sample)",
    )
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="report only the task sets whose every plan is already in --cache (merge nothing; "
        "the report lists the sets left out), e.g. while shards are still running",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.verify < 1:
        p.error(f"--verify takes k >= 1 (got {args.verify}): the number of top plans to verify.")
    t0 = time.perf_counter()

    catalog = Catalog.load(args.catalog)
    rank = {name: i for i, name in enumerate(catalog.expert_names)}
    grid = tuple(g for g in args.grid.split(";") if g)
    nway = tuple(g for g in grid if get_operator(g.partition("[")[0]).max_members is None)
    scorer = MergeScorer(catalog)
    eval_tasks = [t for t in catalog.task_names if t in scorer.tasks and catalog.experts_for(t)]
    rng = np.random.default_rng(args.seed)
    task_sets = []
    for size in [] if args.task_sets else map(int, args.sizes.split(",")):
        sets = list(combinations(eval_tasks, size))
        if args.max_space:
            sets = [
                s
                for s in sets
                if len(bounded_space(catalog, s, args.max_models, grid, nway)) <= args.max_space
            ]
        if args.sample and len(sets) > args.sample:
            sets = [sets[i] for i in sorted(rng.choice(len(sets), args.sample, replace=False))]
        task_sets += sets
    for text in filter(None, (args.task_sets or "").split(";")):
        tasks = tuple(t.strip() for t in text.split(","))
        unknown = sorted(set(tasks) - set(eval_tasks))
        if unknown:
            raise SystemExit(
                f"--task-sets names {unknown}, not tasks of {catalog.name} with eval data and "
                f"an expert: use some of {eval_tasks}."
            )
        task_sets.append(tasks)
    if args.shard:
        k, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= k < n:
            raise SystemExit(f"--shard K/N needs 0 <= K < N (got {args.shard}): use 0/2 and 1/2.")
        task_sets = task_sets[k::n]
    cache = ScoreCache(Path(args.cache or ROOT / "runs" / "multiway" / f"{catalog.name}.jsonl"))
    left_out = []
    if args.cached_only:  # decided first, so that no skill or reference is measured for them
        hashes = {t: scorer.eval_hash(t) for s in task_sets for t in s}
        cached = [
            not any(
                cache.missing(plan.id, s, hashes)
                for plan in bounded_space(catalog, s, args.max_models, grid, nway)
            )
            for s in task_sets
        ]
        left_out = [list(s) for s, ok in zip(task_sets, cached, strict=True) if not ok]
        task_sets = [s for s, ok in zip(task_sets, cached, strict=True) if ok]
    refs = {
        t: max(scorer.score_folder(e, [t])[t] for e in catalog.experts_for(t))
        for t in {t for s in task_sets for t in s}
    }
    predictor = load_predictor(args.predictor)
    options = FeatureOptions(cache_dir=args.cache_dir)
    modes = [m for m in args.modes.split(",") if m]
    rankers = [s for s in args.rankers.split(",") if s]
    if set(rankers) - {"analytic", "model"}:
        raise SystemExit(f"--rankers takes analytic and/or model, got {args.rankers!r}.")
    methods = [(m, s) for m in modes for s in rankers]
    plan_model = load_plan_model(args.plan_model) if "model" in rankers else None
    if "model" in rankers and plan_model is None:
        raise SystemExit("--plan-model none leaves nothing to rank with: use --rankers analytic.")
    # the members' single-model skills, which the plan model reads (evaluation.skills): measured
    # once per catalog, shared by every task set
    skills = None
    if args.data_out or "model" in rankers:
        skills = measure_skills(
            catalog,
            # only the experts some task set can use: the others' skills are never read
            sorted({n for s in task_sets for n in relevant(catalog, s)}, key=rank.__getitem__),
            sorted({t for s in task_sets for t in s}),
            cache_dir=args.cache_dir,
            scorer=scorer,
        )
    data_rows: dict[tuple[str, str], dict] = {}

    records = []
    try:
        for tasks in task_sets:
            space = bounded_space(catalog, tasks, args.max_models, grid, nway)
            raw = measure(space, tasks, catalog, scorer, cache, not args.quiet)
            value = {
                pid: float(np.mean([s[t] / refs[t] if refs[t] > 0 else 0.0 for t in tasks]))
                for pid, s in raw.items()
            }
            fixed = {
                op: plan.id
                for op, plan in fixed_plans(catalog, tasks, args.max_models, nway).items()
            }
            rec = {
                "tasks": list(tasks),
                "space": len(space),
                "oracle": max(value.values()),
                "random": float(np.mean(list(value.values()))),
                "fixed": {op: value.get(pid, float("nan")) for op, pid in fixed.items()},
                # what a plan model reading skills evaluates: every candidate on every task
                "skill_evaluations": len(relevant(catalog, tasks)) * len(tasks),
            }
            if args.data_out:
                fresh = [p for p in space if any((p.id, t) not in data_rows for t in tasks)]
                for plan, t, row in plan_feature_rows(
                    catalog, tasks, fresh, predictor=predictor, options=options, skills=skills
                ):
                    target = raw[plan.id][t] / refs[t] if refs[t] > 0 else 0.0
                    data_rows[(plan.id, t)] = {
                        "catalog": catalog.name,
                        "plan": plan.id,
                        "task": t,
                        "steps": ";".join(plan.steps),
                        # the 2-way predictor behind `analytic` and the step predictions
                        "predictor_hash": predictor.card_.get("training_data_hash"),
                        **row,
                        "target": target,
                    }
            for mode, ranker in methods:
                t1 = time.perf_counter()
                plans = plan_merge(
                    catalog,
                    tasks,
                    max_models=args.max_models,
                    beam=args.beam,
                    mode=mode,
                    top=args.verify,
                    predictor=predictor,
                    options=options,
                    grid=[OperatorConfig.from_id(g) for g in grid],
                    oneshot_grid=[OperatorConfig.from_id(g) for g in nway],
                    plan_model=plan_model if ranker == "model" else False,
                    skills=skills,
                )
                top = [canonical_plan(p.plan, rank).id for p in plans]  # as the space lists it
                rec[method_name(mode, ranker)] = {
                    "plan": top[0],
                    "value": value[top[0]],
                    "predicted": plans[0].predicted,
                    "seconds": round(time.perf_counter() - t1, 2),
                }
                # verification (simmerge verify --tasks): the best measured of the top k
                best = max(top, key=value.__getitem__)
                rec[verified_name(mode, ranker, args.verify)] = {
                    "plan": best,
                    "value": value[best],
                    "verified": top,
                }
            records.append(rec)
    finally:
        cache.close()
    if args.shard:
        print(
            f"shard {args.shard}: {len(records)} task sets measured into {cache.path}; run "
            "again without --shard for the report"
        )
        return 0

    if left_out:
        print(
            f"{len(left_out)} of {len(left_out) + len(task_sets)} task sets left out (not all "
            "cached yet)"
        )
    # best-fixed: the N-way operator best on the *other* task sets (leave one out)
    for rec, op in zip(records, best_fixed_ops(records), strict=True):
        if op is not None:
            rec["best_fixed"] = rec["fixed"][op]
        else:
            rec["best_fixed"] = max(rec["fixed"].values()) if rec["fixed"] else rec["random"]

    def summary(values):
        ora = np.array([r["oracle"] for r in records])
        bf = np.array([r["best_fixed"] for r in records])
        sel = np.array(values)
        gap = (ora - bf).sum()
        return {
            "mean": float(sel.mean()),
            "pct_of_oracle": float(sel.sum() / ora.sum()) if ora.sum() > 0 else float("nan"),
            "gap_closure": float((sel - bf).sum() / gap) if gap > 1e-9 else float("nan"),
        }

    if args.data_out:
        write_training_table(Path(args.data_out), list(data_rows.values()))
    names = [method_name(m, s) for m, s in methods]
    names += [verified_name(m, s, args.verify) for m, s in methods]
    results = {m: summary([r[m]["value"] for r in records]) for m in names}
    results["best_fixed"] = summary([r["best_fixed"] for r in records])
    results["random"] = summary([r["random"] for r in records])
    results["oracle"] = summary([r["oracle"] for r in records])
    space_sizes = [r["space"] for r in records]
    print(
        f"\nmulti-way selection on {catalog.name}: {len(records)} task sets of size "
        f"{args.sizes}, plans of <= {args.max_models} experts, grid {list(grid)}"
    )
    print(f"{'method':>19} {'gap clos.':>10} {'% oracle':>9} {'mean':>7}")
    for name, r in results.items():
        print(f"{name:>19} {r['gap_closure']:>10.3f} {r['pct_of_oracle']:>9.3f} {r['mean']:>7.3f}")
    print(
        f"exhaustive: {np.mean(space_sizes):.0f} merges + evaluations per task set on average;"
        f" simmerge fast: 0 merges; exact: one merge + probe pass per expanded intermediate;"
        " with a plan model, one single-model evaluation per candidate expert and target task"
        f" ({np.mean([r['skill_evaluations'] for r in records]):.0f} per task set on average,"
        " shared by all task sets of the catalog)"
    )
    report = {
        "catalog": catalog.name,
        "plan_model": plan_model.card_.get("training_sources") if plan_model else None,
        "task_sets": records,
        "left_out_uncached": left_out,
        "results": results,
        "grid": list(grid),
        "max_models": args.max_models,
        "max_space": args.max_space or None,
        "task_sets_given": bool(args.task_sets),
        "beam": args.beam,
        "mean_space": float(np.mean(space_sizes)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.json or ROOT / "scripts" / "results" / f"evaluate_multiway_{catalog.name}.json")
    write_json_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
