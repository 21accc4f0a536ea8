"""Budgeted verification vs top-k verification vs halving without a predictor, on held-out models.

    python scripts/compare_budgeted_verification.py --data features/smol-large \
        [--catalog runs/smol-large/catalog.yaml | --eval-size 64] [--folds 5] [--runs 20]

For every held-out-model fold (group k-fold by model, as ``evaluate_selector.py``) the predictor
is fitted on the training pairs and ranks the test pairs' candidates; then, at each budget
(in *full evaluations of one candidate*: a budget of f is f x the pair's tasks x the examples
per task, counted in evaluated examples as ``simmerge verify --budget`` counts them):

* ``guided``: successive halving (:func:`simmerge.pairwise.halving.successive_halving`) over the
  distinct merges in the predictor's order, its rungs comparing measured scores shrunk toward
  the predictions, ``simmerge verify --budget``'s algorithm for a pair in the predictor's domain;
* ``guided_no_prior``: the same halving comparing measured scores alone (``verify --budget`` out
  of the domain);
* ``unguided``: the same halving over the distinct merges in a random order (search without a
  predictor, the multi-fidelity search of "Fine, I'll Merge It Myself");
* ``top_k``: full verification of the k = floor(f) best-ranked distinct merges (``simmerge
  verify --k``);

and a pick's value is the recorded full-eval-set objective of the candidate it picks.
The rungs' partial scores are *simulated* from the recorded outcomes: a candidate answered
round(score x n) of a task's n binary examples; its prefix of m examples is the first m of a
seeded random order of them (a hypergeometric draw, exact for one candidate). Candidates are
drawn independently, whereas the real rungs score every candidate on the same examples, which
makes their differences less noisy: the simulation is pessimistic for halving. Each
(pair, budget, method) is averaged over ``--runs`` simulated orders. Metrics as
:mod:`simmerge.learn.metrics` (% of oracle, gap closure vs the fold's best-fixed). The budget
to reach ``--target`` of the oracle is the smallest budget of the grid where a method reaches it.
``--min-examples`` and ``--eta`` change every halving's schedule (default: ``verify --budget``'s);
a schedule chosen on this table is chosen on its test pairs, so confirm it on another
``--seed`` (other folds) before adopting it. Prints a table and writes JSON (default
``scripts/results/compare_budgeted_verification_<data>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from functools import partial
from pathlib import Path

from simmerge.pairwise.halving import ETA, MIN_EXAMPLES, PRIOR_EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16)
METHODS = ("guided", "guided_no_prior", "unguided", "top_k")


def eval_sizes(args) -> dict[str, int] | int:
    if args.catalog:
        from simmerge.catalog import Catalog
        from simmerge.evaluation.harness import EvalTask

        catalog = Catalog.load(args.catalog)
        return {
            name: len(EvalTask.load(spec.eval, name=name).examples)
            for name, spec in catalog.tasks.items()
            if spec.eval is not None
        }
    if args.eval_size is None:
        raise SystemExit("pass --catalog (to read each task's eval size) or --eval-size N")
    return args.eval_size


def test_pairs(frame, outcomes, folds, factory):
    """Per held-out pair: candidates with prediction, objective and per-task (raw, reference),
    and the fold's best-fixed candidate."""
    from simmerge.learn.datasets import pair_objective
    from simmerge.learn.metrics import best_fixed_candidate

    per_task = outcomes.set_index(["catalog", "a", "b", "candidate", "task"])
    pairs = []
    for fold in folds:
        test = frame[fold.test].copy()
        train = frame[fold.train]
        if train.empty or test.empty:
            continue
        model = factory().fit(train, train["target"].to_numpy())
        test["pred"] = model.predict(test)
        best_fixed = best_fixed_candidate(pair_objective(train, "target"))
        target = pair_objective(test, "target")
        pred = pair_objective(test, "pred")
        for key, g in target.groupby(level=["catalog", "a", "b"]):
            cands = list(g.index.get_level_values("candidate"))
            if best_fixed not in cands:
                continue
            tasks = sorted(test.loc[(test["a"] == key[1]) & (test["b"] == key[2]), "task"].unique())
            raw = {
                c: {
                    t: (
                        float(per_task.loc[(*key, c, t), "score"]),
                        float(per_task.loc[(*key, c, t), "expert_score"]),
                    )
                    for t in tasks
                }
                for c in cands
            }
            pairs.append(
                {
                    "pair": key,
                    "fold": fold.name,
                    "tasks": tasks,
                    "target": {c: float(g.loc[(*key, c)]) for c in cands},
                    "pred": {c: float(pred.loc[(*key, c)]) for c in cands},
                    "raw": raw,
                    "best_fixed": best_fixed,
                }
            )
    return pairs


def simulated_scorer(pair, sizes, rng):
    """SliceScore of :mod:`simmerge.pairwise.halving` from the recorded outcomes (module docs)."""
    import numpy as np

    orders: dict[tuple[str, str], np.ndarray] = {}

    def size(t):
        return sizes if isinstance(sizes, int) else sizes[t]

    def score(cand, start, stop):
        out = {}
        for t in pair["tasks"]:
            n = size(t)
            if (cand, t) not in orders:
                raw, _ = pair["raw"][cand][t]
                hits = np.zeros(n)
                hits[: int(round(raw * n))] = 1.0
                orders[(cand, t)] = rng.permutation(hits)
            part = orders[(cand, t)][start:stop]
            ref = pair["raw"][cand][t][1]
            out[t] = (float(part.sum()) / ref if ref > 0 else 0.0, len(part))
        return out

    return score


def distinct_order(cands: list[str]) -> list[str]:
    from simmerge.merging.grid import distinct_merges

    same = distinct_merges(cands)
    return [c for c in cands if c not in same]


def pick_values(
    pair,
    sizes,
    budget_f: float,
    runs: int,
    seed: int,
    prior_examples: float,
    schedule: dict,
) -> dict[str, float]:
    """Mean objective of each method's pick on ``pair`` at a budget of ``budget_f`` full
    evaluations (module docs); ``schedule`` (``eta``, ``min_examples``) goes to every halving."""
    import numpy as np

    from simmerge.errors import ConfigError
    from simmerge.pairwise.halving import successive_halving

    tasks = pair["tasks"]
    n_max = max(sizes if isinstance(sizes, int) else sizes[t] for t in tasks)
    full = sum(sizes if isinstance(sizes, int) else sizes[t] for t in tasks)
    budget = int(budget_f * full)
    ranked = sorted(pair["pred"], key=lambda c: -pair["pred"][c])
    guided_order = distinct_order(ranked)
    target = pair["target"]
    out = {}
    k = int(math.floor(budget_f))
    if k >= 1:
        top = guided_order[:k]
        out["top_k"] = target[max(top, key=lambda c: target[c])]
    rng = np.random.default_rng(seed)
    sums = {"guided": 0.0, "guided_no_prior": 0.0, "unguided": 0.0}
    try:
        for _ in range(runs):
            won = successive_halving(
                guided_order,
                budget,
                len(tasks),
                n_max,
                simulated_scorer(pair, sizes, rng),
                prior=pair["pred"],
                prior_examples=prior_examples,
                **schedule,
            ).winner
            sums["guided"] += target[won]
            won = successive_halving(
                guided_order,
                budget,
                len(tasks),
                n_max,
                simulated_scorer(pair, sizes, rng),
                **schedule,
            ).winner
            sums["guided_no_prior"] += target[won]
            shuffled = distinct_order(list(rng.permutation(ranked)))
            won = successive_halving(
                shuffled, budget, len(tasks), n_max, simulated_scorer(pair, sizes, rng), **schedule
            ).winner
            sums["unguided"] += target[won]
    except ConfigError:  # the budget cannot score one candidate on the first rung
        return out
    out.update({m: s / runs for m, s in sums.items()})
    return out


def summarize(pairs, values, method) -> dict[str, float]:
    import numpy as np

    rows = [(p, v[method]) for p, v in zip(pairs, values, strict=True) if method in v]
    if len(rows) < len(pairs):
        return {"pairs": len(rows)}
    sel = np.array([v for _, v in rows])
    ora = np.array([max(p["target"].values()) for p, _ in rows])
    bf = np.array([p["target"][p["best_fixed"]] for p, _ in rows])
    gap = float((ora - bf).sum())
    return {
        "pairs": len(rows),
        "pct_of_oracle": float(sel.sum() / ora.sum()),
        "gap_closure": float((sel - bf).sum() / gap) if gap > 1e-9 else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    from simmerge.infra.files import atomic_write_text
    from simmerge.learn.datasets import load_training_tables, training_frame
    from simmerge.learn.predictor import DEFAULT_ENSEMBLE, MergePredictor
    from simmerge.learn.splits import model_folds

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="shipped dataset name or folder")
    p.add_argument("--catalog", default=None, help="the dataset's catalog (for eval sizes)")
    p.add_argument("--eval-size", type=int, default=None, help="examples per task, if equal")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--runs", type=int, default=20, help="simulated example orders per pair")
    p.add_argument("--target", type=float, default=0.97, help="share of the oracle to reach")
    p.add_argument("--n-models", type=int, default=DEFAULT_ENSEMBLE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prior-examples",
        type=float,
        default=PRIOR_EXAMPLES,
        help="what a prediction is worth in examples per task in the guided halving "
        "(default: verify --budget's)",
    )
    p.add_argument(
        "--min-examples",
        type=int,
        default=MIN_EXAMPLES,
        help="examples per task a candidate is first scored on (default: verify --budget's)",
    )
    p.add_argument("--eta", type=int, default=ETA, help="1 / the share kept at each rung")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    schedule = {"eta": args.eta, "min_examples": args.min_examples}

    sizes = eval_sizes(args)
    features, outcomes = load_training_tables(args.data)
    frame = training_frame(features, outcomes)
    factory = partial(MergePredictor, n_models=args.n_models, seed=args.seed)
    pairs = test_pairs(frame, outcomes, model_folds(frame, args.folds, args.seed), factory)
    table = {}
    for f in BUDGETS:
        values = [
            pick_values(pair, sizes, f, args.runs, args.seed + i, args.prior_examples, schedule)
            for i, pair in enumerate(pairs)
        ]
        table[f] = {m: summarize(pairs, values, m) for m in METHODS}
    to_reach = {}
    for m in ("guided", "guided_no_prior", "unguided"):
        hit = [f for f in BUDGETS if table[f][m].get("pct_of_oracle", 0.0) >= args.target]
        to_reach[m] = hit[0] if hit else None
    report = {
        "data": str(args.data),
        "pairs": len(pairs),
        "folds": args.folds,
        "runs": args.runs,
        "seed": args.seed,
        "prior_examples": args.prior_examples,
        **schedule,
        "budget_unit": "full evaluations of one candidate (the pair's tasks x examples each)",
        "table": {str(f): table[f] for f in BUDGETS},
        "target": args.target,
        "budget_to_reach_target": to_reach,
        "fewer_examples_than_unguided": (
            to_reach["unguided"] / to_reach["guided"]
            if to_reach["guided"] and to_reach["unguided"]
            else None
        ),
    }
    head = f"{'budget':>6} " + " ".join(f"{m + ' %or.':>14} {m + ' gap':>12}" for m in METHODS)
    print(f"held-out models, {len(pairs)} pairs, budget in full evaluations of one candidate")
    print(head)
    for f in BUDGETS:
        cells = []
        for m in METHODS:
            r = table[f][m]
            if "pct_of_oracle" in r:
                cells.append(f"{r['pct_of_oracle']:>14.3f} {r['gap_closure']:>12.3f}")
            else:
                cells.append(f"{'–':>14} {'–':>12}")
        print(f"{f:>6} " + " ".join(cells))
    print(
        f"budget to reach {args.target:.2f} of oracle: guided {to_reach['guided']}, "
        f"without the prior {to_reach['guided_no_prior']}, unguided {to_reach['unguided']}"
    )
    name = Path(str(args.data)).name
    out = Path(
        args.json or ROOT / "scripts" / "results" / f"compare_budgeted_verification_{name}.json"
    )
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
