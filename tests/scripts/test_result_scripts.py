"""Scripts that turn result files into the README's figures: they must compute what their
docs say, on inputs small enough to check by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _factories import load_script


def _report(catalog: str, sets: list[tuple[float, float, float, float]]) -> dict:
    """An evaluate_multiway report: per task set (picked, predicted, best-fixed, oracle)."""
    return {
        "catalog": catalog,
        "results": {"best_fixed": {}, "fast": {}, "oracle": {}},
        "task_sets": [
            {"fast": {"value": v, "predicted": p}, "best_fixed": f, "oracle": o}
            for v, p, f, o in sets
        ],
    }


def test_pooled_multiway_gap_closure_sums_gains_over_every_task_set_of_every_zoo(tmp_path):
    script = load_script("pool_multiway")
    # zoo a: gain 0.1 of a gap 0.2 (0.5); zoo b: gains -0.1 and 0 of gaps 0.1 and 0.3 (-0.25)
    reports = [
        _report("a", [(0.6, 0.9, 0.5, 0.7)]),
        _report("b", [(0.4, 0.7, 0.5, 0.6), (0.5, 0.8, 0.5, 0.8)]),
    ]
    paths = []
    for r in reports:
        paths.append(tmp_path / f"{r['catalog']}.json")
        paths[-1].write_text(json.dumps(r))
    assert script.main([*map(str, paths), "--json", str(tmp_path / "p.json")]) == 0
    fast = json.loads((tmp_path / "p.json").read_text())["pooled"]["fast"]
    assert fast["gap_closure"] == pytest.approx(0.0 / 0.6)  # (0.1 - 0.1 + 0) / (0.2 + 0.1 + 0.3)
    assert fast["per_zoo_gap_closure"] == pytest.approx({"a": 0.5, "b": -0.25})
    assert fast["pct_of_oracle"] == pytest.approx(1.5 / 2.1)
    assert fast["mean_predicted"] == pytest.approx(0.8)
    assert fast["risk"] == pytest.approx(1 / 3)  # only zoo b's first pick loses by > 0.01
    assert fast["task_sets"] == 3


def test_plan_pick_is_the_best_predicted_plan_and_top_3_verified_the_best_measured_of_three():
    script = load_script("explore_plan_model_variants")
    # one task set (x, y); plan "partial" lacks a score on y, so it cannot be picked
    rows = [
        ("p1", 0.2, 0.9),
        ("p2", 0.8, 0.6),
        ("p3", 0.5, 0.7),
        ("p4", 0.9, 0.1),
        ("p5", 0.6, 0.3),
    ]
    test = pd.DataFrame(
        [(plan, task, value, 0) for plan, x, y in rows for task, value in (("x", x), ("y", y))]
        + [("partial", "x", 1.0, 0)],
        columns=["plan", "task", "target", "oneshot"],
    )
    # predicted mean per plan: p1 0.9, p2 0.8, p5 0.7, p3 0.6, p4 0.1; measured means
    # p1 0.55, p2 0.7, p3 0.6, p4 0.5, p5 0.45
    by_plan = {"p1": 0.9, "p2": 0.8, "p3": 0.6, "p4": 0.1, "p5": 0.7, "partial": 2.0}
    predicted = test["plan"].map(by_plan).to_numpy()
    report = {"task_sets": [{"tasks": ["x", "y"], "best_fixed": 0.5, "oracle": 0.7}]}
    picked, fixed, oracle, oracle_rank, verified = script.pick_values(test, predicted, report)
    assert picked.tolist() == pytest.approx([0.55])  # p1, the best predicted complete plan
    assert verified.tolist() == pytest.approx([0.7])  # best measured of p1, p2, p5
    assert oracle_rank.tolist() == [1]  # p1 is ranked above the best measured plan, p2
    assert fixed.tolist() == [0.5] and oracle.tolist() == [0.7]


def test_outcome_comparison_matches_rows_on_the_outcome_key_and_counts_the_unmatched():
    script = load_script("compare_outcome_tables")

    def table(rows):
        cols = ["a", "b", "candidate", "task", "operator", "score", "normalized"]
        return pd.DataFrame(rows, columns=cols)

    old = table(
        [
            ("x", "y", "linear", "t", "linear", 0.5, 0.5),
            ("x", "y", "ties", "t", "ties", 0.8, 0.8),
            ("x", "y", "ties", "u", "ties", 0.2, 0.2),  # only in old
        ]
    )
    new = table(
        [
            ("x", "y", "linear", "t", "linear", 0.5, 0.5),
            ("x", "y", "ties", "t", "ties", 0.6, 0.6),
            ("y", "x", "ties", "t", "ties", 0.9, 0.9),  # only in new: the other order
        ]
    )
    result = script.compare(old, new)
    assert result["overall"]["rows"] == 2
    assert result["overall"]["normalized_identical"] == pytest.approx(0.5)
    assert result["overall"]["normalized_mean_abs_diff"] == pytest.approx(0.1)
    assert result["only_in_old"] == 1 and result["only_in_new"] == 1
    assert result["per_operator"]["ties"]["rows"] == 1
    assert result["per_operator"]["ties"]["normalized_correlation"] is None  # one row


def test_readme_quickstart_table_is_the_script_s_rendering_of_the_saved_demo_report():
    from _factories import SCRIPTS

    script = load_script("readme_demo_table")
    report = json.loads((SCRIPTS / "results" / "demo_smol-small.json").read_text())
    readme = (SCRIPTS.parent / "README.md").read_text()
    assert script.readme_block(readme) == script.table(report)


def test_readme_demo_table_shows_every_verified_merge_and_the_best_fixed_one():
    script = load_script("readme_demo_table")
    top = [
        {"rank": r, "candidate": c, "predicted": 0.9, "uncertainty": 0.03, "actual": a}
        for r, c, a in ((1, "linear", 0.5), (2, "ties[density=0.5]", 0.7))
    ]
    report = {
        "catalog": "c",
        "predictor_training": ["dataset:zoo-large"],
        "pairs": [
            {"a": "x", "b": "y", "top": top, "best_fixed": "slerp[t=0.5]", "best_fixed_actual": 0.6}
        ],
    }
    text = script.table(report)
    assert "| x + y | 1 | `linear` | 0.90 ± 0.03 | 0.50 |" in text
    assert "| | best fixed | `slerp[t=0.5]` | | 0.60 |" in text
    assert "error of the verified predictions: 0.30" in text  # |0.9-0.5| and |0.9-0.7|
    assert "dataset:zoo-large" in text
    block = script.replace_block(f"a\n{script.BEGIN}\nold\n{script.END}\nb", text)
    assert script.readme_block(block) == text and block.startswith("a\n") and block.endswith("b")


def _micro_dataset(trained, tmp_path):
    from simmerge.learn.datasets import write_training_tables

    folder = tmp_path / "micro"
    write_training_tables(trained["features"], trained["outcomes"], folder)
    return folder


def test_transfer_and_replay_scripts_score_a_saved_predictor_on_another_catalog(
    trained, tmp_path, capsys
):
    data = _micro_dataset(trained, tmp_path)
    transfer = load_script("evaluate_transfer")
    out = tmp_path / "t.json"
    assert transfer.main(["--predictor", str(trained["predictor"]), "--data", str(data),
                          "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    res = doc["results"]
    assert res["oracle"]["top1_accuracy"] == 1.0 and res["oracle"]["pairs"] > 0
    assert res["simmerge"]["mean_abs_error"] >= 0
    assert 0.0 <= doc["pairs_out_of_distribution"] <= 1.0
    pairs = res["oracle"]["pairs"]
    assert sum(doc["plain_picks"].values()) == sum(doc["best_of_pairs"].values()) == pairs
    assert set(doc["candidate_mean"]) >= set(doc["best_of_pairs"])
    replay = load_script("replay_bandit_real")
    out = tmp_path / "r.json"
    assert replay.main(["--stream", str(data), "--predictor", str(trained["predictor"]),
                        "--seeds", "2", "--out", str(out)]) == 0  # fmt: skip
    policies = json.loads(out.read_text())["policies"]
    assert {"lints", "lints, trusting", "predictor", "best_fixed", "random"} <= set(policies)
    assert all(p["final_regret_mean"] >= 0 for p in policies.values())
    assert "cum. regret" in capsys.readouterr().out


def test_out_of_fold_replay_priors_come_from_predictors_that_never_saw_the_pairs_experts(trained):
    import pandas as pd

    from simmerge.learn.datasets import training_frame
    from simmerge.learn.predictor import MergePredictor
    from simmerge.learn.splits import model_folds

    replay = load_script("replay_bandit_real")
    # two copies of the micro catalog: six experts, so a split in two groups always leaves a
    # pair of one copy in each group (one to test, one to train on)
    frame = training_frame(trained["features"], trained["outcomes"])
    frame = pd.concat([frame, frame.assign(catalog="copy")], ignore_index=True)
    model = MergePredictor.load(trained["predictor"])
    rows = replay.out_of_fold_rows(frame, model, partitions=3, groups=2)
    assert not rows.empty
    assert not rows.duplicated(["catalog", "a", "b", "candidate"]).any()
    folds = {f"partition-{s}/{f.name}": f for s in range(3) for f in model_folds(frame, 2, s)}
    for (cat, a, b, fold), _ in rows.groupby(["catalog", "a", "b", "fold"]):
        f = folds[fold]
        pair = (frame["catalog"] == cat) & (frame["a"] == a) & (frame["b"] == b)
        assert f.test[pair.to_numpy()].all()  # the pair is tested in that fold ...
        touched = (frame["catalog"] == cat) & frame["a"].isin([a, b]) | (
            frame["catalog"] == cat
        ) & frame["b"].isin([a, b])
        assert not f.train[touched.to_numpy()].any()  # ... and no row with its experts trains


def test_best_fixed_with_an_arm_per_request_is_scored_against_each_requests_best():
    import numpy as np

    from simmerge.online.replay import ReplayData

    replay = load_script("replay_bandit_real")
    rewards = np.array([[0.2, 0.9], [0.7, 0.4], [0.5, 0.5]])
    data = ReplayData(arms=("x", "y"), rewards=rewards, priors=rewards,
                      features=({}, {}, {}))  # fmt: skip
    (res,) = replay.fixed_results(data, [[2, 0, 1]], ["x", "y", "x"])
    assert res.chosen == ["x", "x", "y"]
    assert res.regret == pytest.approx([0.0, 0.7, 0.3])


def test_order_averaging_pairs_each_merge_with_the_same_merge_in_the_other_order():
    script = load_script("explore_order_averaging")
    rows = [  # (a, b, task, candidate)
        ("x", "y", "t", "ties[density=0.5]"),
        ("y", "x", "t", "ties[density=0.5]"),
        ("x", "y", "t", "slerp[t=0.3]"),
        ("y", "x", "t", "slerp[t=0.7]"),  # the same merge as slerp t=0.3 on (x, y)
        ("y", "x", "t", "slerp[t=0.3]"),  # its partner, slerp t=0.7 on (x, y), is absent
        ("x", "y", "u", "ties[density=0.5]"),  # another task: no partner
    ]
    frame = pd.DataFrame(rows, columns=["a", "b", "task", "candidate"]).assign(catalog="c")
    mean = [0.2, 0.4, 0.6, 1.0, 0.5, 0.9]
    assert script.order_averaged(frame, pd.Series(mean).to_numpy()) == pytest.approx(
        [0.3, 0.3, 0.8, 0.8, 0.5, 0.9]
    )


def test_feature_comparison_reports_only_columns_that_differ_on_matched_rows():
    script = load_script("compare_feature_tables")
    keys = {"catalog": ["c"] * 3, "a": ["x", "x", "z"], "b": ["y", "z", "x"], "task": ["t"] * 3}
    old = pd.DataFrame({**keys, "kl": [1.0, 2.0, 3.0], "cos": [0.5, 0.5, float("nan")]})
    new = old.assign(kl=[1.5, 2.0, 9.0])
    report = script.compare(old, new, exclude={"z"})  # the z rows are left out
    assert report["matched_rows"] == 1
    assert report["columns_differing"] == 1  # cos is equal, NaN in both counts as equal
    assert report["differences"]["kl"] == {
        "max_abs": 0.5,
        "mean_abs": 0.5,
        "mean_abs_value": 1.0,
        "rows_differing": 1,
    }
    assert script.compare(old, new, exclude=set())["differences"]["kl"]["rows_differing"] == 2
