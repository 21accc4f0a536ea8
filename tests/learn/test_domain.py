"""The training domain: pairs like the training data are in distribution, others are flagged,
the anchor holds out of distribution, and the CLI says what to do."""

from __future__ import annotations

import numpy as np
import pytest

from simmerge.learn.domain import DOMAIN_FILE, TrainingDomain
from simmerge.learn.predictor import MergePredictor


def _rank(trained, margin=None):
    from simmerge.pairwise.rank import rank_merges

    pair = ["reverse_a", "sort_a"]
    return rank_merges(
        trained["catalog"], pair, top=None, predictor=trained["predictor"],
        options=trained["options"], margin=margin,
    )  # fmt: skip


def test_rows_like_the_training_rows_are_in_and_a_shifted_column_is_named():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    domain = TrainingDomain.fit(x, ["a", "b", "c", "d"])
    inside = domain.check(rng.normal(size=(200, 4)))
    assert np.mean([c.in_distribution for c in inside]) >= 0.9
    far = x[:3].copy()
    far[:, 2] += 25.0
    for check in domain.check(far):
        assert not check.in_distribution and check.score > check.threshold
        assert check.unusual[0][0] == "c" and check.unusual[0][1] > 5


def test_missing_values_sit_at_the_median_and_the_domain_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 3))
    x[::7, 1] = np.nan
    domain = TrainingDomain.fit(x, ["a", "b", "c"])
    row = np.array([[0.0, np.nan, 0.0]])
    assert domain.check(row)[0].in_distribution
    domain.save(tmp_path / DOMAIN_FILE)
    again = TrainingDomain.load(tmp_path / DOMAIN_FILE)
    assert again.check(row)[0].score == pytest.approx(domain.check(row)[0].score)


def test_a_fitted_predictor_keeps_its_domain_and_flags_pairs_unlike_its_training_pairs(trained):
    from simmerge.learn.datasets import training_frame

    model = MergePredictor.load(trained["predictor"])
    assert model.card_["domain"]["file"] == DOMAIN_FILE
    frame = training_frame(trained["features"], trained["outcomes"])
    assert all(c.in_distribution for c in model.check_domain(frame.head(50)))
    shifted = frame.head(20).copy()
    feature = "cka_mean" if "cka_mean" in shifted else model.domain_columns()[0]
    shifted[feature] = shifted[feature] * 1000 + 1000
    flags = model.check_domain(shifted)
    assert not any(c.in_distribution for c in flags)
    assert flags[0].unusual[0][0] == feature


def test_out_of_distribution_keeps_the_anchor_first_and_the_cli_says_what_to_do(
    trained, monkeypatch
):
    from simmerge.cli.formatting import format_ranking
    from simmerge.learn.domain import DomainCheck

    def rank(margin=None):
        return _rank(trained, margin)

    inside = rank()
    assert all(c.in_distribution for c in inside)
    assert "unlike" not in format_ranking(inside)
    far = DomainCheck(False, 9.0, 2.0, (("cka_mean", 7.5),))
    monkeypatch.setattr(MergePredictor, "check_domain", lambda self, rows: [far] * len(rows))
    outside = rank()
    assert outside[0].best_fixed and outside[0].in_distribution is False
    assert outside[0].domain_score == 9.0 and outside[0].unusual == (("cka_mean", 7.5),)
    text = format_ranking(outside)
    assert "unlike the pairs the predictor was trained on" in text and "simmerge verify" in text
    plain = rank(margin=0.0)  # an explicit margin is the user's choice
    assert plain[0].predicted == max(c.predicted for c in plain)


def test_verify_reports_the_pairs_verdict_and_says_what_to_do(trained, monkeypatch):
    from simmerge.cli.formatting import format_verify
    from simmerge.learn.domain import DomainCheck
    from simmerge.pairwise.verify import verify

    far = DomainCheck(False, 9.0, 2.0, ())
    monkeypatch.setattr(MergePredictor, "check_domain", lambda self, rows: [far] * len(rows))
    ranked = _rank(trained)
    report = verify(trained["catalog"], ranked, k=1)
    assert report.in_distribution is False and report.to_dict()["in_distribution"] is False
    assert "unlike the predictor's training pairs" in format_verify(report)


def _models_with_offsets(rng, n=12):
    """Rows of every ordered pair of ``n`` models, each model with its own offset; a pair's
    three rows (its tasks) sit near each other."""
    names = [f"m{i}" for i in range(n)]
    offset = {m: rng.normal(size=4) for m in names}
    rows, pairs = [], []
    for a in names:
        for b in names:
            if a != b:
                centre = offset[a] + offset[b]
                for _ in range(3):
                    rows.append(centre + rng.normal(scale=0.05, size=4))
                    pairs.append((a, b))
    return np.array(rows), pairs


def test_the_threshold_admits_new_models_like_the_training_models_not_only_training_rows():
    # the rows' own leave-one-out distances are small (a pair's rows are close) and would
    # flag every new pair
    rng = np.random.default_rng(2)
    x, pairs = _models_with_offsets(rng)
    strict = TrainingDomain.fit(x, list("abcd"))
    domain = TrainingDomain.fit(x, list("abcd"), pairs=pairs)
    assert domain.threshold > strict.threshold
    fresh = {m: rng.normal(size=4) for m in ("n0", "n1", "n2", "n3")}
    new = np.array([fresh[a] + fresh[b] + rng.normal(scale=0.05, size=4)
                    for a in fresh for b in fresh if a != b])  # fmt: skip
    admitted = np.mean([c.in_distribution for c in domain.check(new)])
    assert admitted >= 0.75 > np.mean([c.in_distribution for c in strict.check(new)])
    assert not any(c.in_distribution for c in domain.check(new + 30.0))


def test_the_threshold_pools_the_held_out_scores_of_several_partitions_of_the_models():
    from simmerge.learn.domain import COVERAGE, HELD_OUT_PARTITIONS, _standardize, held_out_scores

    x, pairs = _models_with_offsets(np.random.default_rng(3))
    one = held_out_scores(x, pairs, 5, seed=0, partitions=1)
    pooled = held_out_scores(x, pairs, 5, seed=0, partitions=4)
    # one partition tests only the pairs inside a group; four test several times as many rows,
    # the first partition's among them
    assert len(pooled) > 2 * len(one)
    np.testing.assert_array_equal(pooled[: len(one)], one)
    domain = TrainingDomain.fit(x, list("abcd"), pairs=pairs)
    z = _standardize(x, domain.median, domain.scale)
    scores = held_out_scores(z, pairs, domain.k, seed=0, partitions=HELD_OUT_PARTITIONS)
    assert HELD_OUT_PARTITIONS > 1 and domain.threshold == float(np.quantile(scores, COVERAGE))
