"""MergePredictor (fit/predict/save/load, card checks), selection metrics and splits, and the
rank -> verify path on a micro zoo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simmerge.errors import ConfigError, InputNotFoundError, PredictorError
from simmerge.learn.metrics import (
    PairOutcome,
    best_fixed_candidate,
    per_pair,
    random_outcomes,
    summarize,
)
from simmerge.learn.predictor import MergePredictor, predictor_columns
from simmerge.learn.splits import model_folds, task_folds, with_extra
from simmerge.learn.validation import cross_validate
from simmerge.merging.grid import OperatorConfig


def synthetic_rows(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose target depends on one pair feature and the operator."""
    rng = np.random.default_rng(seed)
    cols = predictor_columns()
    x = pd.DataFrame(rng.normal(size=(n, len(cols))), columns=list(cols))
    x["task_of_a"] = rng.integers(0, 2, n).astype(float)
    ops = [c for c in cols if c.startswith("op_")]
    x[ops] = 0.0
    pick = rng.integers(0, len(ops), n)
    for i, op in enumerate(ops):
        x.loc[pick == i, op] = 1.0
    y = 0.5 + 0.3 * np.tanh(x["js_mean"].to_numpy()) + 0.1 * (pick % 3)
    # (pair, task) groups of 10 rows, as in a training frame
    x["catalog"], x["a"], x["b"], x["task"] = "syn", [f"m{i // 10}" for i in range(n)], "x", "t"
    return x, y


def grouped_rows(pairs: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A training-frame-like table: each pair has fixed features and a large level of its
    own; the candidate adds a small effect that depends on a pair feature."""
    rng = np.random.default_rng(seed)
    cols = predictor_columns()
    ops = [c for c in cols if c.startswith("op_")]
    rows, y = [], []
    for p in range(pairs):
        feats = dict(zip(cols, rng.normal(size=len(cols)), strict=True))
        level = 0.5 * np.tanh(feats["js_mean"]) + rng.normal(scale=0.3)
        for i, op in enumerate(ops):
            row = {**feats, **{o: float(o == op) for o in ops}}
            row.update(catalog="syn", a=f"m{p}", b="x", task="t")
            rows.append(row)
            y.append(level + 0.05 * i * np.sign(feats["cos_all"]))
    return pd.DataFrame(rows), np.array(y)


# --- predictor ---------------------------------------------------------------------------------


def test_predictor_learns_a_signal_and_reports_uncertainty():
    x, y = synthetic_rows(600)
    xt, yt = synthetic_rows(200, seed=1)
    model = MergePredictor(n_models=3, num_boost_round=80).fit(x, y)
    mean, std = model.predict(xt, return_std=True)
    assert mean.shape == std.shape == (200,)
    assert np.corrcoef(mean, yt)[0, 1] > 0.8
    assert (std >= 0).all() and std.max() > 0  # bagging seeds disagree somewhere


def test_contributions_sum_to_the_prediction_and_name_the_driving_feature():
    x, y = synthetic_rows(600)
    model = MergePredictor(n_models=2, num_boost_round=60).fit(x, y)
    contrib = model.contributions(x.iloc[:20])
    mean, _ = model.predict(x.iloc[:20], return_std=True)
    np.testing.assert_allclose(contrib.sum(axis=1), mean, atol=1e-6)
    names = [n for n, _ in model.top_contributions(x.iloc[0].to_dict(), k=3)]
    assert "js_mean" in names


def test_save_load_round_trip_predicts_identically(tmp_path):
    x, y = synthetic_rows(300)
    model = MergePredictor(n_models=2, num_boost_round=40, seed=7).fit(x, y)
    model.save(tmp_path / "p", extra_card={"note": "test"})
    card = json.loads((tmp_path / "p" / "card.json").read_text())
    assert card["features"] == list(predictor_columns())
    assert card["training_rows"] == 300 and len(card["training_data_hash"]) == 16
    assert {"lightgbm", "simmerge", "numpy"} <= set(card["versions"]) and card["note"] == "test"
    loaded = MergePredictor.load(tmp_path / "p")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.seed == 7 and loaded.n_models == 2


def test_load_refuses_a_card_with_other_features(tmp_path):
    x, y = synthetic_rows(100)
    MergePredictor(n_models=1, num_boost_round=5).fit(x, y).save(tmp_path / "p")
    card_path = tmp_path / "p" / "card.json"
    card = json.loads(card_path.read_text())
    card["features"] = card["features"][::-1]
    card_path.write_text(json.dumps(card))
    with pytest.raises(PredictorError, match="other features"):
        MergePredictor.load(tmp_path / "p")


def test_load_reports_missing_card_and_missing_model_files(tmp_path):
    with pytest.raises(InputNotFoundError, match="No predictor card"):
        MergePredictor.load(tmp_path)
    x, y = synthetic_rows(100)
    MergePredictor(n_models=2, num_boost_round=5).fit(x, y).save(tmp_path / "p")
    (tmp_path / "p" / "model_1.txt").unlink()
    with pytest.raises(PredictorError, match="lacks model_1.txt"):
        MergePredictor.load(tmp_path / "p")


def test_unfitted_predictor_and_bad_parameters_are_typed_errors():
    """scikit-learn's contract: the constructor stores parameters (even bad ones) and nothing
    else; fit checks them and is what creates the ``_`` attributes."""
    x, y = synthetic_rows(40)
    with pytest.raises(PredictorError, match="not been fitted"):
        MergePredictor().predict([])
    bad = MergePredictor(params={"num_leaf": 3})
    assert bad.params == {"num_leaf": 3} and not hasattr(bad, "boosters_")
    with pytest.raises(ConfigError, match="Unknown LightGBM parameter"):
        bad.fit(x, y)
    with pytest.raises(ConfigError, match="n_models"):
        MergePredictor(n_models=0, decompose=False).fit(x, y)
    fitted = MergePredictor(n_models=1, num_boost_round=5, decompose=False).fit(x, y)
    assert fitted.boosters_ and fitted.card_["n_models"] == 1
    mean = fitted.predict(x)
    both = fitted.predict(x, return_std=True)
    assert mean.shape == (len(x),) and np.array_equal(both[0], mean) and both[1].shape == mean.shape


def test_decomposed_prediction_is_level_plus_deviation_and_round_trips(tmp_path):
    x, y = grouped_rows(80)
    model = MergePredictor(n_models=2, num_boost_round=60).fit(x, y)
    assert model.decompose and len(model.level_boosters_) == 2
    # the deviation model alone predicts around zero per group: the level carries the mean
    dev = np.mean([b.predict(x[list(predictor_columns())].to_numpy()) for b in model.boosters_], 0)
    assert abs(dev.mean()) < 0.02
    model.save(tmp_path / "p")
    assert (tmp_path / "p" / "level_1.txt").is_file()
    loaded = MergePredictor.load(tmp_path / "p")
    assert loaded.decompose and loaded.card_["decompose"] is True
    np.testing.assert_allclose(loaded.predict(x), model.predict(x))


def test_decomposition_ranks_candidates_within_a_pair_better_than_one_regressor():
    x, y = grouped_rows(120)
    xt, yt = grouped_rows(40, seed=1)
    yt_dev = yt - pd.Series(yt).groupby(xt["a"].to_numpy()).transform("mean").to_numpy()
    corr = {}
    for decompose in (True, False):
        model = MergePredictor(n_models=1, num_boost_round=150, decompose=decompose).fit(x, y)
        pred = model.predict(xt)
        pred_dev = pred - pd.Series(pred).groupby(xt["a"].to_numpy()).transform("mean").to_numpy()
        corr[decompose] = np.corrcoef(pred_dev, yt_dev)[0, 1]
    assert corr[True] > corr[False]


def test_decomposed_fit_needs_groups_and_accepts_them_explicitly():
    x, y = synthetic_rows(60)
    bare = x.drop(columns=["catalog", "a", "b", "task"])
    with pytest.raises(ConfigError, match="group"):
        MergePredictor(n_models=1, num_boost_round=5).fit(bare, y)
    model = MergePredictor(n_models=1, num_boost_round=5).fit(bare, y, groups=x["a"].tolist())
    assert model.level_boosters_
    with pytest.raises(ConfigError, match="group ids"):
        MergePredictor(n_models=1, num_boost_round=5).fit(bare, y, groups=["g"])
    assert (
        not MergePredictor(n_models=1, num_boost_round=5, decompose=False)
        .fit(bare, y)
        .level_boosters_
    )


def test_missing_input_columns_are_named():
    x, y = synthetic_rows(50)
    model = MergePredictor(n_models=1, num_boost_round=5).fit(x, y)
    with pytest.raises(ConfigError, match="lacks 1 column"):
        model.predict(x.drop(columns=["hp_t"]))


# --- metrics and splits ------------------------------------------------------------------------


def _series(values: dict[tuple[str, str], float]) -> pd.Series:
    idx = pd.MultiIndex.from_tuples(
        [("c", a, "x", cand) for (a, cand) in values], names=["catalog", "a", "b", "candidate"]
    )
    return pd.Series(list(values.values()), index=idx)


def test_selection_metrics_match_hand_computed_values():
    # two pairs, candidates f (the fixed one), g, h
    actual = _series(
        {
            ("p1", "f"): 0.5,
            ("p1", "g"): 0.9,
            ("p1", "h"): 0.7,
            ("p2", "f"): 0.6,
            ("p2", "g"): 0.2,
            ("p2", "h"): 0.8,
        }
    )
    pred = _series(
        {
            ("p1", "f"): 0.1,
            ("p1", "g"): 0.3,
            ("p1", "h"): 0.2,  # picks g: oracle
            ("p2", "f"): 0.1,
            ("p2", "g"): 0.9,
            ("p2", "h"): 0.5,  # picks g: worse than fixed; top-2 holds h
        }
    )
    pairs = per_pair(actual, pred, "f", k_verify=2)
    assert [p.selected for p in pairs] == [0.9, 0.2]
    assert [p.top_k for p in pairs] == [0.9, 0.8]
    m = summarize(pairs)
    # gap closure = ((0.9-0.5) + (0.2-0.6)) / ((0.9-0.5) + (0.8-0.6)) = 0 / 0.6
    assert m["gap_closure"] == pytest.approx(0.0)
    assert m["pct_of_oracle"] == pytest.approx(1.1 / 1.7)
    assert m["pct_of_oracle_top_k"] == pytest.approx(1.7 / 1.7)
    assert m["top1_accuracy"] == 0.5 and m["risk"] == 0.5
    assert m["spearman"] == pytest.approx((1.0 + -0.5) / 2)
    assert best_fixed_candidate(actual) == "h"  # mean 0.75 beats g 0.55 and f 0.55


def test_oracle_selection_closes_the_whole_gap():
    actual = _series({("p1", "f"): 0.5, ("p1", "g"): 0.9, ("p2", "f"): 0.6, ("p2", "g"): 0.1})
    m = summarize(per_pair(actual, actual, "f"))
    assert m["gap_closure"] == pytest.approx(1.0) and m["risk"] == 0.0
    assert summarize([])["pairs"] == 0
    assert isinstance(per_pair(actual, actual, "f")[0], PairOutcome)


def test_gap_closure_interval_brackets_the_figure_and_collapses_without_spread():
    from simmerge.learn.metrics import gap_closure_interval

    def pair(sel):
        return PairOutcome(oracle=1.0, best_fixed=0.5, selected=sel, top_k=1, top1=0, spearman=0)

    same = [pair(0.75)] * 10  # every pair closes half its gap
    assert gap_closure_interval(same) == pytest.approx((0.5, 0.5))
    mixed = [pair(v) for v in (0.5, 1.0, 0.6, 0.9, 0.75, 0.55, 0.95, 0.7)]
    lo, hi = gap_closure_interval(mixed)
    assert lo < summarize(mixed)["gap_closure"] < hi and 0 <= lo and hi <= 1
    assert summarize(mixed)["gap_closure_90"] == [lo, hi]


def test_a_second_measurement_scores_the_pick_and_the_first_one_picks_among_the_verified():
    first = _series({("p1", "f"): 0.5, ("p1", "g"): 0.9, ("p1", "h"): 0.7})
    second = _series({("p1", "f"): 0.6, ("p1", "g"): 0.65, ("p1", "h"): 0.8})
    pred = _series({("p1", "f"): 0.1, ("p1", "g"): 0.3, ("p1", "h"): 0.2})
    [out] = per_pair(second, pred, "f", k_verify=2, verified=first)
    # the pick g and best-fixed f get their second-measurement scores; the oracle is the best
    # of the second measurement; verifying g and h picks g (0.9 > 0.7 on the first) -> 0.65
    assert (out.selected, out.best_fixed, out.oracle, out.top_k) == (0.65, 0.6, 0.8, 0.65)
    [same] = per_pair(second, pred, "f", k_verify=2)  # without: the best verified of the second
    assert same.top_k == 0.8
    [rand] = random_outcomes(second, "f", k_verify=3, verified=first)
    assert rand.top_k == 0.65  # all three verified: the first measurement's best, g


def test_cross_validation_on_a_remeasurement_tests_only_its_pairs_and_adds_exhaustive():
    frame = _frame()
    frame = pd.concat([frame.assign(candidate=c) for c in ("f", "g")], ignore_index=True)
    frame["target"] = np.where(frame["candidate"] == "g", 0.9, 0.5)
    folds = list(model_folds(frame, k=2, seed=0))
    test_pairs = frame[folds[0].test].drop_duplicates(["a", "b"])[["catalog", "a", "b"]]
    remeasured = pd.concat([test_pairs.assign(candidate=c) for c in ("f", "g")])
    remeasured["normalized"] = np.where(remeasured["candidate"] == "g", 0.4, 0.7)
    second = remeasured.set_index(["catalog", "a", "b", "candidate"])["normalized"]
    cv = cross_validate(frame, iter(folds), {}, remeasured=second)
    assert len(cv.pooled["oracle"]) == len(test_pairs)  # the other fold's pairs are not tested
    exhaustive = summarize(cv.pooled["exhaustive"])
    # every training pair measured g best, so best-fixed and exhaustive search both pick g,
    # which the second measurement scores 0.4 against the oracle's 0.7
    assert exhaustive["mean_selected"] == pytest.approx(0.4)
    assert summarize(cv.pooled["oracle"])["mean_selected"] == pytest.approx(0.7)
    assert summarize(cv.pooled["best_fixed"])["mean_selected"] == pytest.approx(0.4)


def _frame() -> pd.DataFrame:
    names = [f"m{i}" for i in range(8)]
    rows = []
    for a in names:
        for b in names:
            if a != b:
                for task in (f"t{int(a[1:]) % 3}", f"t{int(b[1:]) % 3}"):
                    rows.append({"catalog": "c", "a": a, "b": b, "task": task})
    return pd.DataFrame(rows)


def test_model_folds_never_share_a_model_between_train_and_test():
    frame = _frame()
    tested = set()
    for fold in model_folds(frame, k=4, seed=1):
        train = set(frame[fold.train]["a"]) | set(frame[fold.train]["b"])
        test = set(frame[fold.test]["a"]) | set(frame[fold.test]["b"])
        assert train and test and not train & test
        tested |= test
    assert tested == {f"m{i}" for i in range(8)}


def test_model_folds_over_several_deals_repeat_the_first_deal_and_deal_the_models_anew():
    frame = _frame()
    one = list(model_folds(frame, k=4, seed=1))
    many = list(model_folds(frame, k=4, seed=1, deals=3))
    assert [f.name for f in many[:4]] == ["models-0.0", "models-0.1", "models-0.2", "models-0.3"]
    assert len(many) == 12
    # deal 0 is the single deal's folds; the next deals test other pairs
    assert all((a.test == b.test).all() for a, b in zip(one, many[:4], strict=True))
    tested = [frozenset(np.flatnonzero(f.test)) for f in many]
    assert len(set(tested[4:]) - set(tested[:4])) > 0
    for fold in many:  # every deal keeps the guarantee
        train = set(frame[fold.train]["a"]) | set(frame[fold.train]["b"])
        assert not train & (set(frame[fold.test]["a"]) | set(frame[fold.test]["b"]))


def test_task_folds_hold_out_every_pair_that_involves_the_task():
    frame = _frame()
    for fold in task_folds(frame):
        task = fold.name.removeprefix("task-")
        assert task not in set(frame[fold.train]["task"])
        test_pairs = frame[fold.test].groupby(["a", "b"])["task"].agg(set)
        assert all(task in tasks for tasks in test_pairs)


def test_extra_training_rows_never_bring_back_a_held_out_task():
    frame = _frame()
    extra = _frame().assign(catalog="other")
    for fold in task_folds(frame):
        task = fold.name.removeprefix("task-")
        train = with_extra(frame[fold.train], extra, frame[fold.test])
        assert task not in set(train["task"])
        assert (train["catalog"] == "other").any()  # pairs without the task are kept
        kept = train[train["catalog"] == "other"].groupby(["a", "b"]).size()
        whole = extra.groupby(["a", "b"]).size()
        assert (kept == whole.reindex(kept.index)).all()  # whole pairs, never half a pair
    assert with_extra(frame, None, frame) is frame


def test_extra_rows_on_tasks_the_catalog_lacks_are_kept():
    """Another family's tasks (the tiny zoo's string tasks next to a real catalog's) are never
    held out, so cross-family training data reaches every fold instead of being dropped."""
    frame = _frame()
    extra = _frame().assign(catalog="other", task=lambda d: "other_" + d["task"])
    for fold in [*task_folds(frame), *model_folds(frame, 3, 0)]:
        train = with_extra(frame[fold.train], extra, frame[fold.test])
        assert (train["catalog"] == "other").sum() == len(extra)


# --- end to end on a micro zoo -------------------------------------------------------------------


def test_training_frame_has_every_predictor_column_and_the_target(trained):
    from simmerge.learn.datasets import training_frame

    frame = training_frame(trained["features"], trained["outcomes"])
    assert len(frame) == len(trained["outcomes"])
    assert set(predictor_columns()) <= set(frame.columns)
    assert frame["target"].between(0, 2).all()
    assert (frame["task_of_a"] + frame["task_of_b"] >= 1).all()  # every task is a member's


def test_rank_merges_ranks_every_candidate_with_uncertainty_and_contributions(trained):
    from _factories import SMALL_GRID

    from simmerge.cli.formatting import format_ranking
    from simmerge.pairwise.rank import rank_merges

    ranked = rank_merges(
        trained["catalog"],
        ["reverse_a", "sort_a"],
        top=None,
        predictor=trained["predictor"],
        grid=SMALL_GRID,
        options=trained["options"],
    )
    assert [c.rank for c in ranked] == [1, 2, 3, 4]
    assert {c.candidate for c in ranked} == {c.id for c in SMALL_GRID}
    preds = [c.predicted for c in ranked]
    assert preds == sorted(preds, reverse=True)
    for c in ranked:
        assert c.tasks == ("reverse", "sort") and set(c.per_task) == {"reverse", "sort"}
        assert c.predicted == pytest.approx(sum(c.per_task.values()) / 2)
        assert c.uncertainty >= 0 and len(c.top_features) == 5
        assert not math.isnan(c.predicted)
    assert "reverse_a + sort_a" in format_ranking(ranked)


def test_rank_merges_rejects_bad_pairs(trained):
    from simmerge.errors import CatalogError
    from simmerge.pairwise.rank import rank_merges

    with pytest.raises(ConfigError, match="two distinct experts"):
        rank_merges(trained["catalog"], ["reverse_a"], predictor=trained["predictor"])
    with pytest.raises(CatalogError, match="base model"):
        rank_merges(trained["catalog"], ["base", "sort_a"], predictor=trained["predictor"])


def test_verify_measures_what_collection_measured_and_records_it(trained, tmp_path):
    from _factories import SMALL_GRID

    from simmerge.outcomes.store import OutcomeStore
    from simmerge.pairwise.rank import rank_merges
    from simmerge.pairwise.verify import verify

    ranked = rank_merges(
        trained["catalog"],
        ["reverse_a", "sort_a"],
        top=None,
        predictor=trained["predictor"],
        grid=SMALL_GRID,
        options=trained["options"],
    )
    store_path = tmp_path / "verified.sqlite"
    report = verify(trained["catalog"], ranked, k=2, store=store_path)
    # the two best-ranked distinct merges (a candidate repeating a better one is passed over)
    from simmerge.pairwise.verify import distinct_top

    picked, skipped = distinct_top(ranked, 2)
    assert [v.rank for v in report.verified] == [c.rank for c in picked]
    assert report.verified[0].rank == 1 and list(report.skipped) == skipped
    assert report.best.actual == max(v.actual for v in report.verified)
    collected = trained["outcomes"].set_index(["a", "b", "candidate", "task"])["normalized"]
    for v in report.verified:
        for task, value in v.per_task.items():
            assert value == pytest.approx(collected[("reverse_a", "sort_a", v.candidate, task)])
        assert v.error == pytest.approx(v.predicted - v.actual)
    with OutcomeStore(store_path) as store:
        assert len(store) == 2 * 2  # 2 candidates x 2 tasks
    with pytest.raises(ConfigError, match="k >= 1"):
        verify(trained["catalog"], ranked, k=0)


def test_verify_reports_what_each_merge_kept_of_a_general_task_apart_from_its_score(
    trained, tmp_path
):
    import json

    import yaml
    from _factories import SMALL_GRID

    from simmerge.catalog import Catalog
    from simmerge.evaluation.harness import EvalTask, evaluate
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.pairwise.rank import rank_merges
    from simmerge.pairwise.verify import verify

    source = trained["catalog"].source
    doc = yaml.safe_load(source.read_text())
    root = source.parent
    for entry in [doc["base"], *doc["experts"]]:
        entry["path"] = str(root / entry["path"])
    for spec in doc["tasks"].values():
        for key in ("eval", "probes"):
            if key in spec:
                spec[key] = str(root / spec[key])
    # like the real recipes' general eval: the base's own greedy continuations of some prompts
    prompts = [json.loads(line)["prompt"] for line in (root / "eval" / "reverse.jsonl").open()]
    greedy = evaluate(
        str(root / doc["base"]["path"]),
        EvalTask.from_records([{"prompt": p, "answer": ""} for p in prompts[:8]], name="g"),
        "cpu",
    )
    general = tmp_path / "general.jsonl"
    general.write_text(
        "".join(
            json.dumps({"prompt": p, "answer": e.prediction, "kind": "token_accuracy"}) + "\n"
            for p, e in zip(prompts[:8], greedy.examples, strict=True)
            if e.prediction
        )
    )
    doc["tasks"]["general"] = {"eval": str(general), "general": True}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(doc))
    catalog = Catalog.load(tmp_path / "catalog.yaml")
    ranked = rank_merges(
        catalog,
        ["reverse_a", "sort_a"],
        top=None,
        predictor=trained["predictor"],
        grid=SMALL_GRID,
        options=trained["options"],
    )
    report = verify(catalog, ranked, k=1, store=tmp_path / "v.sqlite")
    (v,) = report.verified
    task = EvalTask.load(general, name="general")
    base = evaluate(str(catalog.base.path), task, "cpu").score
    assert base > 0
    assert set(v.kept_general) == {"general"}
    assert v.kept_general["general"] == pytest.approx(v.raw["general"] / base)
    assert set(v.per_task) == {"reverse", "sort"}  # the score is the pair's skills only
    with OutcomeStore(tmp_path / "v.sqlite") as store:
        assert {o.task for o in store.outcomes(catalog.name)} == {"reverse", "sort"}


def test_candidate_config_round_trips_through_its_id(trained):
    from simmerge.pairwise.rank import rank_merges

    ranked = rank_merges(
        trained["catalog"],
        ["sort_a", "both"],
        top=2,
        predictor=trained["predictor"],
        options=trained["options"],
    )
    assert len(ranked) == 2
    assert all(isinstance(c.config, OperatorConfig) for c in ranked)


def test_rank_and_train_commands_work_end_to_end(trained, tmp_path, capsys):
    from simmerge.cli.main import main
    from simmerge.learn.datasets import write_training_tables

    catalog = str(trained["catalog"].source)
    cache = str(trained["options"].cache_dir)
    # the CLI computes features with the default signature config: its own cache entries
    assert (
        main(
            [
                "rank",
                catalog,
                "--models",
                "reverse_a,sort_a",
                "--predictor",
                str(trained["predictor"]),
                "--cache-dir",
                cache,
                "--top",
                "3",
                "--json",
            ]
        )
        == 0
    )
    ranked = json.loads(capsys.readouterr().out)
    assert [c["rank"] for c in ranked] == [1, 2, 3]
    assert {"candidate", "predicted", "uncertainty", "top_features", "plan_id"} <= set(ranked[0])

    write_training_tables(trained["features"], trained["outcomes"], tmp_path / "data")
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--n-models",
                "2",
                "--cv-folds",
                "0",
            ]
        )
        == 0
    )
    assert "trained on" in capsys.readouterr().out
    loaded = MergePredictor.load(out)
    assert loaded.card_["training_sources"] == [f"dataset:{tmp_path / 'data'}"]
    assert main(["train", "--data", "", "--out", str(out)]) == 3  # nothing to train on


def test_anchored_rule_keeps_best_fixed_unless_beaten_by_more_than_the_margin():
    from simmerge.learn.anchoring import anchor

    pred = _series({("p1", "f"): 0.50, ("p1", "g"): 0.53, ("p2", "f"): 0.50, ("p2", "g"): 0.60})
    actual = _series({("p1", "f"): 0.6, ("p1", "g"): 0.4, ("p2", "f"): 0.5, ("p2", "g"): 0.9})
    plain = summarize(per_pair(actual, pred, "f"))
    anchored = summarize(per_pair(actual, anchor(pred, "f", 0.05), "f"))
    assert plain["risk"] == 0.5  # p1: g predicted 0.03 better, is 0.2 worse
    assert anchored["risk"] == 0.0 and anchored["mean_selected"] == pytest.approx(0.75)
    assert anchor(pred, "f", 0.0) is pred


def test_choose_margin_picks_from_the_grid_by_inner_cross_validation():
    from simmerge.learn.anchoring import MARGINS, choose_margin

    frame = _frame()
    rng = np.random.default_rng(0)
    rows = []
    for cand in ("f", "g", "h"):
        part = frame.copy()
        part["candidate"] = cand
        part["target"] = rng.uniform(0, 1, len(part)) + (0.3 if cand == "f" else 0.0)
        rows.append(part)
    data = pd.concat(rows, ignore_index=True)

    class Noise:  # predicts noise: anchoring on best-fixed is the safe choice
        def fit(self, frame, y):
            return self

        def predict(self, frame):
            return rng.uniform(0, 1, len(frame))

    margin = choose_margin(data, Noise)
    assert margin in MARGINS and margin >= 0.2


def test_ranking_flags_the_anchor_from_the_predictor_card(trained):
    from simmerge.pairwise.rank import rank_merges

    card = MergePredictor.load(trained["predictor"]).card_
    ranked = rank_merges(
        trained["catalog"],
        ["reverse_a", "sort_a"],
        top=None,
        predictor=trained["predictor"],
        options=trained["options"],
    )
    flagged = [c.candidate for c in ranked if c.best_fixed]
    assert flagged == [card["selection"]["best_fixed"]]


def test_ranking_margin_overrides_the_card_plain_pick_at_zero_anchor_first_when_large(trained):
    """``margin=0`` is the plain argmax (the evaluation's best row on held-out models); a margin
    larger than any predicted difference keeps best-fixed first; a negative one is an error."""
    from simmerge.pairwise.rank import rank_merges

    def ranked(margin):
        return rank_merges(
            trained["catalog"],
            ["reverse_a", "sort_a"],
            top=None,
            predictor=trained["predictor"],
            options=trained["options"],
            contributions=0,
            margin=margin,
        )

    plain = ranked(0.0)
    assert [c.predicted for c in plain] == sorted((c.predicted for c in plain), reverse=True)
    assert ranked(10.0)[0].best_fixed
    with pytest.raises(ConfigError, match="margin must be a number >= 0"):
        ranked(-0.1)


def test_extra_training_rows_are_the_named_datasets_concatenated_or_none():
    from simmerge.learn.datasets import extra_training_frame, load_training_tables, training_frame

    assert extra_training_frame("") is None
    one = training_frame(*load_training_tables("zoo-default"))
    two = extra_training_frame("zoo-default,zoo-default")
    assert len(two) == 2 * len(one) and two.index.is_unique  # with_extra aligns on the index


def test_shipped_predictors_and_training_data_load_and_agree():
    """models/default is fitted on the real SmolLM2 catalog's outcomes, models/tiny-zoo on the
    large tiny zoo's (the multi-way plan model's step predictor); each card says so and holds
    exactly its training table's rows."""
    from simmerge.learn.datasets import load_training_tables, shipped_datasets, training_frame
    from simmerge.learn.loading import load_predictor

    assert {"smol-large", "gemma-small", "zoo-large", "zoo-default"} <= set(shipped_datasets())
    for name in ("zoo-default", "zoo-large", "smol-large", "gemma-small"):
        features, outcomes = load_training_tables(name)
        frame = training_frame(features, outcomes)
        assert len(frame) == len(outcomes) and frame["task_of_a"].notna().all()
    for name, data in ((None, "smol-large"), ("tiny-zoo", "zoo-large")):
        model = load_predictor(name)
        frame = training_frame(*load_training_tables(data))
        card = model.card_
        assert card["training_rows"] == len(frame) and card["decompose"] and model.level_boosters_
        assert card["training_sources"] == [f"dataset:{data}"]
        assert card["selection"]["best_fixed"] in set(frame["candidate"])
        assert {"gap_closure", "risk"} <= set(card["cv_held_out_models"]["simmerge"])
        mean, std = model.predict(frame.head(50), return_std=True)
        assert np.isfinite(mean).all() and (std >= 0).all()


def test_the_shipped_plan_model_names_the_step_predictor_it_learned_from():
    from simmerge.learn.loading import load_predictor
    from simmerge.learn.plan_model import load_plan_model

    plan_model = load_plan_model(None)
    step = load_predictor(plan_model.step_predictor)
    assert plan_model.step_predictor == "tiny-zoo"
    assert step.card_["training_data_hash"] in plan_model.card_["predictor_hashes"]
    assert (
        load_predictor(None).card_["training_data_hash"] not in plan_model.card_["predictor_hashes"]
    )


def test_train_command_refits_on_a_store_of_verified_outcomes(trained, tmp_path, capsys):
    from simmerge.cli.main import main

    out = tmp_path / "from-store"
    args = ["train", "--data", "", "--store", str(trained["store"]), "--out", str(out)]
    assert main(args) == 3  # --store needs --catalog
    assert "needs --catalog" in capsys.readouterr().err
    extra = ["--catalog", str(trained["catalog"].source), "--cache-dir", str(tmp_path / "c")]
    assert main([*args, *extra, "--n-models", "1", "--cv-folds", "0"]) == 0
    card = MergePredictor.load(out).card_
    assert card["training_rows"] == len(trained["outcomes"])
    assert card["training_sources"][0].startswith("store:o.sqlite")


def test_rank_configs_places_users_mergekit_files_among_the_candidates(trained, tmp_path, capsys):
    import yaml

    from simmerge.cli.main import main

    catalog = trained["catalog"]
    base = str(catalog.base.path)
    a, b = (str(catalog.model(n).path) for n in ("reverse_a", "sort_a"))
    files = {
        # equal to a grid entry once the weights of 0.5 fold into lambda
        "ta.yaml": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": b, "parameters": {"weight": 0.5}},
                {"model": a, "parameters": {"weight": 0.5}},
            ],
            "parameters": {"lambda": 2.0},
        },
        "ties.yaml": {  # not in the grid: a new candidate
            "merge_method": "ties",
            "base_model": base,
            "models": [{"model": a}, {"model": b}],
            "parameters": {"density": 0.35},
        },
        "slerp.yaml": {  # members in the other order: t mirrors
            "merge_method": "slerp",
            "base_model": b,
            "models": [{"model": b}, {"model": a}],
            "parameters": {"t": 0.7},
        },
        "gradient.yaml": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [{"model": a, "parameters": {"weight": [0, 1]}}, {"model": b}],
        },
        "sce.yaml": {
            "merge_method": "sce",
            "base_model": base,
            "models": [{"model": a}, {"model": b}],
        },
    }
    paths = []
    for name, doc in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(doc))
        paths.append(str(tmp_path / name))
    argv = ["rank", str(catalog.source), "--models", "reverse_a,sort_a", "--top", "2"]
    argv += ["--predictor", str(trained["predictor"]), "--configs", ",".join(paths), "--json"]
    argv += ["--cache-dir", str(trained["options"].cache_dir)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    verdicts = {Path(v["path"]).name: v for v in out["configs"]}
    assert verdicts["ta.yaml"]["candidate"] == "task_arithmetic[lambda=1.0]"
    assert verdicts["ties.yaml"]["candidate"] == "ties[density=0.35]"
    assert verdicts["slerp.yaml"]["candidate"] == "slerp[t=0.3]"
    assert "gradient" in verdicts["gradient.yaml"]["reason"]
    assert "not trained on operator 'sce'" in verdicts["sce.yaml"]["reason"]
    ranked = {c["candidate"]: c for c in out["ranking"]}
    for name in ("ta.yaml", "ties.yaml", "slerp.yaml"):
        v = verdicts[name]
        assert ranked[v["candidate"]]["rank"] == v["rank"]  # shown even outside the top 2
        assert ranked[v["candidate"]]["predicted"] == pytest.approx(v["predicted"])
    assert sum(c == "task_arithmetic[lambda=1.0]" for c in ranked) == 1  # ranked once
