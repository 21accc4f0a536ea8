"""Successive halving within a budget: the schedule's arithmetic, that it never overspends,
and that it finds a better candidate the ranking put low."""

from __future__ import annotations

import pytest

from simmerge.errors import ConfigError
from simmerge.pairwise.halving import Rung, halving_schedule, successive_halving


def test_the_schedule_halves_down_to_two_and_spends_equal_shares():
    # budget of top-3 verification on 2 tasks x 64 examples: 384 example evaluations
    rungs = halving_schedule(20, 384, 2, 64)
    assert [r.candidates for r in rungs] == [12, 6, 3, 2]
    assert rungs == [Rung(12, 4), Rung(6, 12), Rung(3, 28), Rung(2, 52)]
    cost = sum(r.candidates * (r.examples - p) * 2
               for r, p in zip(rungs, [0] + [r.examples for r in rungs], strict=False))  # fmt: skip
    assert cost <= 384


def test_a_tiny_budget_scores_one_candidate_and_too_small_a_budget_is_refused():
    assert halving_schedule(20, 8, 2, 64) == [Rung(1, 4)]
    with pytest.raises(ConfigError, match="--budget 8"):
        halving_schedule(20, 7, 2, 64)


def test_halving_promotes_the_best_scores_and_never_exceeds_the_budget():
    order = [f"c{i}" for i in range(8)]  # the ranking puts the true best (c6) near the end
    truth = {c: 0.5 for c in order} | {"c6": 0.9}

    def score(cand, start, stop):
        n = stop - start
        return {"t": (truth[cand] * n, n)}

    result = successive_halving(order, 200, 1, 64, score)
    assert result.winner == "c6"
    assert result.spent <= 200
    assert result.survivors[0] == order[: result.rungs[0].candidates]
    # examples already scored are not scored again: c6's examples equal the last rung's
    assert result.scores["c6"][0] == result.rungs[-1].examples


def test_ties_go_to_the_better_ranked_candidate():
    order = ["a", "b", "c", "d"]
    result = successive_halving(order, 64, 1, 16, lambda c, s, e: {"t": (0.5 * (e - s), e - s)})
    assert result.winner == "a"


def test_a_prior_keeps_the_predicted_best_against_a_few_unlucky_examples():
    # "a" is predicted (and truly) better; its first 4 examples are unlucky, b's are not
    def score(cand, start, stop):
        hits = [0, 0, 1, 1] + [1] * 60 if cand == "a" else [1] * 4 + [0] * 60
        part = hits[start:stop]
        return {"t": (float(sum(part)), len(part))}

    prior = {"a": 0.8, "b": 0.4}
    alone = successive_halving(["a", "b"], 8, 1, 64, score)
    assert alone.rungs == [Rung(2, 4)] and alone.winner == "b"  # 0.5 vs 1.0 measured
    shrunk = successive_halving(["a", "b"], 8, 1, 64, score, prior=prior, prior_examples=8)
    # unseen 60 examples estimated as (4 x 0.5 + 8 x 0.8) / 12 = 0.70 for a and
    # (4 x 1.0 + 8 x 0.4) / 12 = 0.60 for b: (4 x 0.5 + 60 x 0.7) / 64 = 0.6875 > 0.625
    assert shrunk.winner == "a"
    # the reported scores stay measurements, not the shrunk comparison values
    assert shrunk.scores == {"a": (4, 0.5), "b": (4, 1.0)}


def test_a_fully_measured_candidate_is_compared_by_its_measurement_alone():
    def score(cand, start, stop):
        rate = 0.5 if cand == "a" else 0.52
        n = stop - start
        return {"t": (rate * n, n)}

    # every example scored: the prior (strongly for a) no longer counts, b's 0.52 wins
    result = successive_halving(
        ["a", "b"], 128, 1, 64, score, prior={"a": 0.9, "b": 0.1}, prior_examples=64
    )
    assert result.rungs == [Rung(2, 64)] and result.winner == "b"
