"""Candidates that are the same merge: the grid knows them, verification passes over them,
and the equivalence holds on tensors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from simmerge.merging import operators as ops
from simmerge.merging.grid import MEAN, OperatorConfig, distinct_merges, merge_key


def _cfg(cid: str) -> OperatorConfig:
    return OperatorConfig.from_id(cid)


def test_the_average_of_two_experts_is_one_merge_under_three_names():
    assert merge_key(_cfg("linear")) == MEAN
    assert merge_key(_cfg("task_arithmetic[lambda=0.5]")) == MEAN
    assert merge_key(_cfg("task_arithmetic[lambda=1.0,normalize=true]")) == MEAN
    assert merge_key(_cfg("task_arithmetic[lambda=1.0]")) != MEAN  # the sum of task vectors
    assert merge_key(_cfg("task_arithmetic[lambda=0.5]"), n_members=3) != MEAN
    assert merge_key(_cfg("slerp[t=0.5]")) == "slerp[t=0.5]"  # close to the mean, not equal
    assert merge_key(_cfg("linear[normalize=false]")) != MEAN


def test_the_equivalence_holds_on_tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=g)
    a, b = base + torch.randn(5, 7, generator=g), base + torch.randn(5, 7, generator=g)

    def fresh():  # the operators work in place on their inputs
        return base.clone(), [a.clone(), b.clone()]

    mean = ops.linear(fresh()[1], [1.0, 1.0], normalize=True)
    half = ops.task_arithmetic(*fresh(), [1.0, 1.0], lam=0.5, normalize=False)
    normed = ops.task_arithmetic(*fresh(), [1.0, 1.0], lam=1.0, normalize=True)
    torch.testing.assert_close(half, mean)
    torch.testing.assert_close(normed, mean)


def test_distinct_merges_names_each_repeat_after_the_first_of_its_kind():
    order = ["slerp[t=0.5]", "linear", "task_arithmetic[lambda=0.5]", "ties[density=0.5]"]
    assert distinct_merges(order) == {"task_arithmetic[lambda=0.5]": "linear"}


def test_selection_metrics_can_verify_distinct_merges_only():
    from simmerge.learn.metrics import per_pair

    idx = pd.MultiIndex.from_tuples(
        [("c", "a", "b", cand) for cand in
         ("linear", "task_arithmetic[lambda=0.5]", "ties[density=0.5]", "slerp[t=0.3]")],
        names=["catalog", "a", "b", "candidate"],
    )  # fmt: skip
    actual = pd.Series([0.5, 0.5, 0.9, 0.6], index=idx)
    predicted = pd.Series([0.9, 0.8, 0.7, 0.1], index=idx)
    plain = per_pair(actual, predicted, "slerp[t=0.3]", k_verify=2)[0]
    distinct = per_pair(actual, predicted, "slerp[t=0.3]", k_verify=2, distinct=True)[0]
    assert plain.top_k == pytest.approx(0.5)  # linear and its twin: one measurement
    assert distinct.top_k == pytest.approx(0.9)  # the twin is passed over, ties is verified


def test_verification_passes_over_a_candidate_that_repeats_a_better_ranked_merge():
    from simmerge.pairwise.rank import RankedCandidate
    from simmerge.pairwise.verify import distinct_top

    def cand(rank, cid):
        return RankedCandidate(rank, ("a", "b"), cid, "p", ("t",), 0.5, 0.0, {}, ())

    ranked = [cand(1, "linear"), cand(2, "task_arithmetic[lambda=0.5]"),
              cand(3, "ties[density=0.5]"), cand(4, "slerp[t=0.5]")]  # fmt: skip
    picked, skipped = distinct_top(ranked, 3)
    assert [c.candidate for c in picked] == ["linear", "ties[density=0.5]", "slerp[t=0.5]"]
    assert skipped == [("task_arithmetic[lambda=0.5]", "linear")]
