"""Budgeted verification: successive halving over the predictor's ranking.

Top-k verification spends every evaluated example on k candidates. Multi-fidelity search
spends a budget of evaluated examples better: many candidates are scored on a few examples,
the better half go on to more, and so on, so the examples go where the decision is close
(successive halving, the low-fidelity search of "Fine, I'll Merge It Myself"). simmerge starts
it from the predictor's ranking: the first rung holds the best-ranked candidates (as many as
the budget can score on ``min_examples`` per task), and ties between equal measured scores go
to the better-ranked one. Started from a random order instead, it is search without a
predictor, the comparison ``scripts/compare_budgeted_verification.py`` makes.

Budget unit: one example of one task scored for one candidate. A candidate's score at a rung
is its mean normalized score over the pair's tasks on the first ``examples`` examples of each
task; examples scored at an earlier rung are not scored again (the score function gets the
new slice only). Each rung gets an equal share of the budget, plus what earlier rungs could not
spend (their candidates ran out of examples); a rung's increment is capped by the examples the
task has.

Guided by a predictor, the rungs also compare candidates by their measured score *shrunk toward
the prediction* (:func:`successive_halving`'s ``prior``): a first rung of a few examples per task
is noisy, and without the prediction a lucky low-ranked candidate there can knock out the
predictor's better pick. The prediction counts as ``PRIOR_EXAMPLES`` examples per task, so a full
eval set outweighs it (``scripts/compare_budgeted_verification.py`` compares with and without).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from simmerge.errors import ConfigError

ETA = 2  # survivors: 1 / ETA of a rung
MIN_EXAMPLES = 4  # examples per task a candidate is first scored on
PRIOR_EXAMPLES = 8  # examples per task a guided prediction is worth (module docs)


@dataclass(frozen=True)
class Rung:
    candidates: int  # how many candidates are scored at this rung
    examples: int  # examples per task each has then been scored on (cumulative)


def halving_schedule(
    n_candidates: int,
    budget: int,
    n_tasks: int,
    max_examples: int,
    *,
    eta: int = ETA,
    min_examples: int = MIN_EXAMPLES,
) -> list[Rung]:
    """The rungs of successive halving within ``budget`` example evaluations (module docs):
    as many starting candidates (at most ``n_candidates``) as leave every rung's share enough
    for ``min_examples`` new examples per task, halving down to 2 (or 1 when only one fits)."""
    if n_candidates < 1 or n_tasks < 1 or max_examples < 1:
        raise ConfigError(
            f"Successive halving needs candidates, tasks and examples (got {n_candidates}, "
            f"{n_tasks}, {max_examples}).",
            "rank a pair whose tasks have eval data.",
        )
    if eta < 2:
        raise ConfigError(f"eta must be >= 2, got {eta}.", "use the default of 2.")
    floor = min(min_examples, max_examples)
    if budget < floor * n_tasks:
        raise ConfigError(
            f"A budget of {budget} example evaluations cannot score one candidate on "
            f"{floor} examples of each of {n_tasks} task(s).",
            f"pass --budget {floor * n_tasks} or more.",
        )
    for n0 in range(n_candidates, 0, -1):
        sizes = _sizes(n0, eta)
        rungs = _allocate(sizes, budget, n_tasks, max_examples)
        if rungs[0].examples >= floor:
            return rungs
    raise AssertionError("unreachable: one candidate on `floor` examples fits the budget")


def _sizes(n0: int, eta: int) -> list[int]:
    sizes = [n0]
    while sizes[-1] > 2:
        sizes.append(max(2, math.ceil(sizes[-1] / eta)))
    return sizes


def _allocate(sizes: list[int], budget: int, n_tasks: int, max_examples: int) -> list[Rung]:
    rungs, done, left = [], 0, budget
    for i, n in enumerate(sizes):
        share = left // (len(sizes) - i)
        add = min(share // (n * n_tasks), max_examples - done)
        done += add
        left -= add * n * n_tasks
        rungs.append(Rung(n, done))
    return rungs


# score(candidate, start, stop) -> per task (sum of example scores, number of examples) on the
# examples [start, stop) of each of the pair's tasks, normalized by the task's reference
SliceScore = Callable[[str, int, int], dict[str, tuple[float, int]]]


@dataclass
class HalvingResult:
    rungs: list[Rung]
    winner: str
    spent: int  # example evaluations used
    # candidate -> (examples per task it was scored on, its mean normalized score there)
    scores: dict[str, tuple[int, float]] = field(default_factory=dict)
    survivors: list[list[str]] = field(default_factory=list)  # candidates of each rung


def successive_halving(
    order: Sequence[str],
    budget: int,
    n_tasks: int,
    max_examples: int,
    score: SliceScore,
    *,
    eta: int = ETA,
    min_examples: int = MIN_EXAMPLES,
    prior: Mapping[str, float] | None = None,
    prior_examples: float = 0.0,
) -> HalvingResult:
    """Successive halving over candidates in ``order`` (best-ranked first) with ``score``
    (:data:`SliceScore`), within ``budget`` (module docs). The winner is the best-scored
    candidate of the last rung (ties: the better-ranked).

    With ``prior`` (candidate -> predicted score) and ``prior_examples`` = k > 0, candidates are
    compared by an estimate of their full-eval-set score: after n of the N = ``max_examples``
    examples per task, the n measured count as they are and the N - n unseen ones are estimated
    by the measured mean shrunk toward the prediction, (n x measured + k x predicted) / (n + k).
    A few noisy examples do not overturn the prediction; a full eval set is its own score."""
    rungs = halving_schedule(
        len(order), budget, n_tasks, max_examples, eta=eta, min_examples=min_examples
    )
    alive = list(order[: rungs[0].candidates])
    rank = {c: i for i, c in enumerate(order)}
    sums: dict[str, dict[str, list[float]]] = {c: {} for c in alive}
    seen = dict.fromkeys(alive, 0)
    spent = 0
    survivors = []
    for i, rung in enumerate(rungs):
        alive = alive[: rung.candidates]
        survivors.append(list(alive))
        for c in alive:
            if rung.examples > seen[c]:
                for t, (s, n) in score(c, seen[c], rung.examples).items():
                    acc = sums[c].setdefault(t, [0.0, 0])
                    acc[0] += s
                    acc[1] += n
                    spent += n
                seen[c] = rung.examples
        means = {
            c: _estimate(_mean(sums[c]), seen[c], max_examples, prior, prior_examples, c)
            for c in alive
        }
        alive.sort(key=lambda c: (-means[c], rank[c]))
        if i + 1 < len(rungs):
            alive = alive[: rungs[i + 1].candidates]
    scores = {c: (seen[c], _mean(sums[c])) for c in sums if seen[c]}
    return HalvingResult(rungs, alive[0], spent, scores, survivors)


def _estimate(
    mean: float, n: int, total: int, prior: Mapping[str, float] | None, k: float, cand: str
) -> float:
    """The full-eval-set score of ``cand`` after ``n`` of ``total`` examples per task with a
    measured ``mean`` (:func:`successive_halving`)."""
    if prior is None or k <= 0 or cand not in prior or n <= 0 or n >= total:
        return mean
    unseen = (n * mean + k * prior[cand]) / (n + k)
    return (n * mean + (total - n) * unseen) / total


def _mean(per_task: dict[str, list[float]]) -> float:
    vals = [s / n for s, n in per_task.values() if n]
    return sum(vals) / len(vals) if vals else float("-inf")
