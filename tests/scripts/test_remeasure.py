"""Second measurements on fresh eval examples (scripts/remeasure_outcomes.py and
scripts/remeasure_multiway.py): what they measure, that the first measurement they redo equals
the data it stands beside, and that they resume."""

from __future__ import annotations

import json

import pytest
from _factories import load_script as _script


@pytest.mark.slow
def test_remeasure_outcomes_measures_test_pairs_twice_and_reproduces_the_dataset(
    trained, tmp_path, capsys
):
    from simmerge.learn.datasets import load_remeasured, write_training_tables

    data = tmp_path / "data"
    write_training_tables(trained["features"], trained["outcomes"], data)
    script = _script("remeasure_outcomes")
    argv = [str(trained["catalog_path"].parent), "--data", str(data), "--examples", "30"]
    argv += ["--folds", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    for k in range(2):
        assert script.main([*argv, "--shard", f"{k}/2"]) == 0
    assert load_remeasured(data) is None  # shards write no tables
    assert script.main(argv) == 0
    assert "0 merged+evaluated" in capsys.readouterr().out  # the shards measured everything
    features, first, second = load_remeasured(data)
    groups = json.loads((data / "remeasured" / "meta.json").read_text())["test_groups"]
    pairs = {(a, b) for g in groups for a in g for b in g if a != b}
    for table in (features, first, second):
        assert set(zip(table["a"], table["b"], strict=True)) == pairs  # test pairs only
    # the same zoo: the first measurement repeats the dataset's rows exactly
    same = first.merge(trained["outcomes"], on=["a", "b", "candidate", "task"])
    assert len(same) and (same["score_x"] == same["score_y"]).all()
    meta = json.loads((data / "remeasured" / "meta.json").read_text())
    n = meta["expert_scores_equal_to_shipped"].split(" of ")
    assert n[0] == n[1]
    # the second one: every (pair, candidate, task) again, on other eval sets
    keys = ["a", "b", "candidate", "task"]
    assert sorted(map(tuple, first[keys].values)) == sorted(map(tuple, second[keys].values))
    assert not set(first["eval_hash"]) & set(second["eval_hash"])


@pytest.mark.slow
def test_remeasure_multiway_rescores_each_pick_and_exhaustive_search(trained, tmp_path):
    name = trained["catalog"].name
    evaluate = _script("evaluate_multiway")
    argv = [str(trained["catalog_path"]), "--sizes", "2", "--max-models", "3", "--quiet"]
    argv += ["--predictor", str(trained["predictor"]), "--modes", "fast", "--rankers", "analytic"]
    argv += ["--cache", str(tmp_path / "scores.jsonl")]
    argv += ["--json", str(tmp_path / f"evaluate_multiway_{name}.json")]
    argv += ["--data-out", str(tmp_path / f"{name}.parquet")]
    assert evaluate.main(argv) == 0
    (rec,) = json.loads((tmp_path / f"evaluate_multiway_{name}.json").read_text())["task_sets"]

    script = _script("remeasure_multiway")
    argv = [str(trained["catalog_path"].parent), "--examples", "30", "--quiet"]
    argv += ["--results-dir", str(tmp_path), "--tables-dir", str(tmp_path)]
    argv += ["--cache-dir", str(tmp_path / "c"), "--json", str(tmp_path / "r.json")]
    assert script.main(argv) == 0
    (again,) = json.loads((tmp_path / "r.json").read_text())["zoos"][name]["task_sets"]
    # the first measurement is the evaluation's: exhaustive search's pick is its oracle
    assert again["first"]["exhaustive"] == pytest.approx(rec["oracle"])
    assert again["first"]["fast"] == pytest.approx(rec["fast"]["value"])
    assert again["first"]["best_fixed"] == pytest.approx(rec["best_fixed"])
    assert again["plans"]["fast"] == rec["fast"]["plan"]
    assert all(0 <= v <= 2 for v in again["second"].values())
    cache = next((tmp_path / "c").iterdir())
    lines = cache.read_text().splitlines()
    assert len(lines) == len(set(again["plans"].values())) * len(rec["tasks"])
    assert script.main(argv) == 0  # a rerun merges nothing new
    assert len(cache.read_text().splitlines()) == len(lines)
