"""Calibrated intervals: the conformal quantile rule, coverage on exchangeable data, widening
out of distribution, the cross-conformal check, and intervals in rankings and the card."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from simmerge.errors import PredictorError
from simmerge.learn.conformal import (
    IntervalCalibration,
    combined_spread,
    conformal_quantile,
    widening,
)
from simmerge.learn.validation import conformal_coverage


def test_conformal_quantile_takes_the_ceil_n_plus_one_level_order_statistic():
    scores = np.array([5.0, 1, 9, 3, 7, 2, 8, 4, 6])  # 1..9 shuffled
    assert conformal_quantile(scores, 0.9) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(scores, 0.5) == 5.0  # ceil(10 * 0.5) = 5th
    assert conformal_quantile(scores[:3], 0.9) == math.inf  # ceil(4 * 0.9) = 4 > 3 scores


def test_calibration_normalizes_by_spread_plus_median_spread():
    residuals = [0.1, -0.2, 0.3, 0.4]
    spreads = [0.1, 0.1, 0.1, 0.3]
    cal = IntervalCalibration.fit(residuals, spreads, level=0.5)
    assert cal.floor == pytest.approx(0.1)
    # scores |r| / (s + 0.1) = 0.5, 1.0, 1.5, 1.0; ceil(5 * 0.5) = 3rd smallest = 1.0
    assert cal.quantile == pytest.approx(1.0)
    assert cal.interval(0.7, 0.05) == pytest.approx((0.7 - 0.15, 0.7 + 0.15))


def test_intervals_cover_about_their_level_on_exchangeable_held_out_rows():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.01, 0.1, 4000)
    residual = rng.normal(size=4000) * (2 * spread + 0.02)  # errors grow with the spread
    cal = IntervalCalibration.fit(residual[:2000], spread[:2000], level=0.9)
    half = cal.half_width(spread[2000:])
    coverage = float(np.mean(np.abs(residual[2000:]) <= half))
    assert 0.87 <= coverage <= 0.93


def test_out_of_distribution_intervals_widen_by_the_domain_score_over_its_threshold():
    assert widening(True, 5.0, 2.0) == 1.0
    assert widening(None, None, None) == 1.0
    assert widening(False, 5.0, 2.0) == pytest.approx(2.5)
    assert widening(False, 1.0, 2.0) == 1.0  # never narrower
    cal = IntervalCalibration(0.9, 2.0, 0.05, 100, "held-out models")
    lo, hi = cal.interval(0.5, 0.05, widening(False, 6.0, 2.0))
    assert hi - lo == pytest.approx(3 * 2 * 2.0 * 0.1)


def test_a_calibration_needs_held_out_residuals_and_a_valid_level():
    with pytest.raises(PredictorError, match="held-out residuals"):
        IntervalCalibration.fit([0.1], [0.1])
    with pytest.raises(PredictorError, match="not in"):
        IntervalCalibration.fit([0.1, 0.2], [0.1, 0.1], level=1.0)


def test_the_card_entry_round_trips_and_a_garbled_one_is_a_typed_error():
    cal = IntervalCalibration(0.9, 2.5, 0.03, 400, "held-out models")
    assert IntervalCalibration.from_card({**cal.to_card(), "measured": {}}) == cal
    assert IntervalCalibration.from_card(None) is None
    with pytest.raises(PredictorError, match="garbled"):
        IntervalCalibration.from_card({"level": 0.9})


def test_the_spread_of_a_mean_over_tasks_is_the_root_mean_square():
    assert combined_spread([0.3, 0.4]) == pytest.approx(math.sqrt((0.09 + 0.16) / 2))


def _oof(folds: dict[str, list[str]], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for fold, pairs in folds.items():
        for pair in pairs:
            for cand in range(10):
                spread = rng.uniform(0.02, 0.08)
                rows.append(
                    {"catalog": "c", "a": pair, "b": "x", "candidate": f"k{cand}", "fold": fold,
                     "pred": 0.5, "target": 0.5 + rng.normal() * spread, "spread": spread}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_cross_conformal_coverage_is_near_nominal_per_fold_on_exchangeable_folds():
    oof = _oof({f"f{i}": [f"p{i}_{j}" for j in range(40)] for i in range(5)})
    out = conformal_coverage(oof, 0.9)
    assert out["rows"] == len(oof) and len(out["folds"]) == 5
    assert 0.86 <= out["coverage"] <= 0.94
    assert all(f["mean_width"] > 0 for f in out["folds"])


def test_a_pair_tested_in_two_folds_never_calibrates_its_own_interval():
    # both folds test the same pairs (as leave-one-task-out does with two-task pairs): no
    # fold has calibration rows of other pairs, so nothing is scored
    oof = _oof({"task-a": ["p0", "p1"], "task-b": ["p0", "p1"]})
    assert conformal_coverage(oof, 0.9)["rows"] == 0


def test_rankings_carry_the_interval_and_widen_it_out_of_distribution(trained, monkeypatch):
    from simmerge.learn import domain as domain_module
    from simmerge.learn.predictor import MergePredictor
    from simmerge.pairwise.rank import rank_merges

    model = MergePredictor.load(trained["predictor"])
    model.set_interval(IntervalCalibration(0.9, 2.0, 0.02, 100, "held-out models"), {})

    def ranked():
        return rank_merges(
            trained["catalog"], ["reverse_a", "sort_a"], top=None, predictor=model,
            options=trained["options"],
        )  # fmt: skip

    inside = ranked()
    assert all(c.in_distribution for c in inside)
    for c in inside:
        assert c.interval_level == 0.9
        half = 2.0 * (c.uncertainty + 0.02)
        assert c.interval == pytest.approx((c.predicted - half, c.predicted + half))
    # shrink the threshold: the same pair is now out of distribution, at 4x the threshold
    score = inside[0].domain_score
    monkeypatch.setattr(model, "domain_", domain_module.TrainingDomain(
        **{**model.domain_.__dict__, "threshold": score / 4}))  # fmt: skip
    outside = {c.candidate: c for c in ranked()}
    for c in inside:
        o = outside[c.candidate]
        assert o.in_distribution is False
        width = o.interval[1] - o.interval[0]
        assert width == pytest.approx(4 * (c.interval[1] - c.interval[0]), rel=1e-6)


def test_a_predictor_fitted_with_cross_validation_records_its_interval_and_coverage(tmp_path):
    from simmerge.learn.fitting import calibrate_interval
    from simmerge.learn.predictor import MergePredictor

    oof = _oof({f"f{i}": [f"p{i}_{j}" for j in range(10)] for i in range(5)})
    cal, measured = calibrate_interval(oof)
    assert cal.level == 0.9 and cal.calibration_rows == len(oof)
    assert measured["split"] == "held-out models" and 0 < measured["coverage"] <= 1

    from test_predictor import synthetic_rows

    rows, y = synthetic_rows(200)
    model = MergePredictor(n_models=2, num_boost_round=20).fit(rows, y)
    model.set_interval(cal, measured)
    model.save(tmp_path / "p")
    again = MergePredictor.load(tmp_path / "p")
    assert again.interval_ == cal
    assert again.card_["interval"]["measured"]["coverage"] == measured["coverage"]
