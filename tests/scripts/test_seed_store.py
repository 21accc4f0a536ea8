"""scripts/seed_store.py: a shipped outcome table resumes a collection on a rebuilt zoo."""

from __future__ import annotations

import pytest
from _factories import SMALL_GRID, load_script

from simmerge.errors import ConfigError
from simmerge.learn.datasets import OUTCOMES_FILE, outcome_frame
from simmerge.outcomes.collection import collect_outcomes
from simmerge.outcomes.store import OutcomeStore


def _table(tmp_path, rows):
    folder = tmp_path / "table"
    folder.mkdir()
    rows.to_parquet(folder / OUTCOMES_FILE)
    return folder


def test_a_seeded_store_collects_only_the_merges_the_table_lacks(trained, tmp_path):
    catalog, full = trained["catalog"], trained["outcomes"]
    first = sorted(set(zip(full["a"], full["b"], strict=True)))[0]
    # the table holds one ordered pair only: the other order of its merges is reused, every
    # other pair is merged
    part = full[(full["a"] == first[0]) & (full["b"] == first[1])]
    store_path = tmp_path / "seeded.sqlite"
    args = [str(_table(tmp_path, part)), "--catalog", str(trained["catalog_path"])]
    assert load_script("seed_store").main([*args, "--store", str(store_path)]) == 0
    with OutcomeStore(tmp_path / "fresh.sqlite") as store:
        fresh = collect_outcomes(catalog, store, SMALL_GRID, progress=False)
    with OutcomeStore(store_path) as store:
        assert len(store) == len(part)
        summary = collect_outcomes(catalog, store, SMALL_GRID, progress=False)
        resumed = outcome_frame(store, catalog)
    assert summary.skipped == len(SMALL_GRID)  # the seeded pair's candidates
    # the seeded pair's merges are not built again, in either order
    assert summary.merged == fresh.merged - len(SMALL_GRID) // 2 * 2
    assert summary.merged + summary.reused + summary.skipped == fresh.jobs
    keys = ["a", "b", "candidate", "task"]
    got = resumed.set_index(keys)["score"].sort_index()
    want = full.set_index(keys)["score"].sort_index()
    assert got.index.equals(want.index)
    assert (got == want).all()  # a deterministic rebuild measures what the table holds


def test_a_table_measured_on_other_eval_files_is_refused_and_nothing_is_written(trained, tmp_path):
    rows = trained["outcomes"].copy()
    rows.loc[rows.index[0], "eval_hash"] = "0000000000000000"
    store_path = tmp_path / "refused.sqlite"
    args = [str(_table(tmp_path, rows)), "--catalog", str(trained["catalog_path"])]
    with pytest.raises(ConfigError, match="eval hashes differ"):
        load_script("seed_store").main([*args, "--store", str(store_path)])
    assert not store_path.exists()


def test_a_table_of_another_catalog_is_refused(trained, tmp_path):
    rows = trained["outcomes"].assign(catalog="someone-else")
    args = [str(_table(tmp_path, rows)), "--catalog", str(trained["catalog_path"])]
    with pytest.raises(ConfigError, match="not of"):
        load_script("seed_store").main([*args, "--store", str(tmp_path / "s.sqlite")])


def test_a_collection_checkpoint_and_the_shipped_table_seed_one_store(trained, tmp_path):
    """A collection that outlasts its machine is checkpointed as an outcomes-only table
    (build_training_data --outcomes-only, no features computed) and resumed from it together
    with the shipped table: the store then holds every row of both, each once."""
    full = trained["outcomes"]
    pairs = sorted(set(zip(full["a"], full["b"], strict=True)))
    in_first = full[["a", "b"]].apply(tuple, axis=1).isin(pairs[: len(pairs) // 2])
    shipped = _table(tmp_path, full[in_first])
    checkpoint = tmp_path / "collecting"
    script = load_script("build_training_data")
    args = [str(trained["catalog_path"]), "--store", str(trained["store"])]
    assert script.main([*args, "--out", str(checkpoint), "--outcomes-only", "--quiet"]) == 0
    assert sorted(p.name for p in checkpoint.iterdir()) == ["meta.json", OUTCOMES_FILE]
    store_path = tmp_path / "resumed.sqlite"
    seed = [str(shipped), str(checkpoint), "--catalog", str(trained["catalog_path"])]
    assert load_script("seed_store").main([*seed, "--store", str(store_path)]) == 0
    with OutcomeStore(store_path) as store:
        assert len(store) == len(full)
        resumed = outcome_frame(store, trained["catalog"])
    keys = ["a", "b", "candidate", "task"]
    got = resumed.set_index(keys)["score"].sort_index()
    assert (got == full.set_index(keys)["score"].sort_index()).all()


def test_dropped_experts_pairs_are_left_out_so_collect_measures_exactly_them(trained, tmp_path):
    catalog, full = trained["catalog"], trained["outcomes"]
    drop = sorted(set(full["a"]))[0]
    store_path = tmp_path / "dropped.sqlite"
    args = [str(_table(tmp_path, full)), "--catalog", str(trained["catalog_path"])]
    script = load_script("seed_store")
    assert script.main([*args, "--store", str(store_path), "--drop-models", drop]) == 0
    with OutcomeStore(store_path) as store:
        seeded = outcome_frame(store, catalog)
        assert not ((seeded["a"] == drop) | (seeded["b"] == drop)).any()
        summary = collect_outcomes(catalog, store, SMALL_GRID, progress=False)
        again = outcome_frame(store, catalog)
    theirs = (full["a"] == drop) | (full["b"] == drop)
    assert summary.skipped == len(full[~theirs].groupby(["a", "b", "candidate"]))
    assert len(again) == len(full)


def test_dropping_an_expert_the_catalog_lacks_is_refused(trained, tmp_path):
    args = [str(_table(tmp_path, trained["outcomes"])), "--catalog", str(trained["catalog_path"])]
    with pytest.raises(ConfigError, match="lacks"):
        load_script("seed_store").main(
            [*args, "--store", str(tmp_path / "s.sqlite"), "--drop-models", "nobody"]
        )
    assert not (tmp_path / "s.sqlite").exists()


def test_rows_of_an_expert_whose_weights_differ_from_this_build_are_refused_unless_dropped(
    trained, tmp_path
):
    """A rebuild on another kind of machine can train other weights for some experts: their
    rows are refused (the table's meta.json and the zoo manifest record weight digests), the
    others are seeded, and dropping the differing experts lets the seeding go on."""
    import json

    rows = trained["outcomes"]
    experts = sorted(set(rows["a"]) | set(rows["b"]))
    table = _table(tmp_path, rows)
    digests = {e: f"digest-{e}" for e in experts}
    (table / "meta.json").write_text(json.dumps({"zoo": {"weights": digests}}))
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    rebuilt = {**digests, experts[0]: "another-digest"}
    (zoo / "zoo_manifest.json").write_text(json.dumps({"weights": rebuilt}))
    check = load_script("seed_store")._check_weights
    with pytest.raises(ConfigError, match=rf"\['{experts[0]}'\].*other weights") as err:
        check(table, zoo, rows, [])
    assert f"--drop-models {experts[0]}" in str(err.value)
    check(table, zoo, rows, [experts[0]])  # dropped: nothing of it is seeded
    check(table, zoo, rows[(rows["a"] != experts[0]) & (rows["b"] != experts[0])], [])
    assert load_script("seed_store").differing_weights(table, zoo, rows, []) == [experts[0]]
    (zoo / "zoo_manifest.json").write_text(json.dumps({"weights": digests}))
    check(table, zoo, rows, [])  # the same build
    (zoo / "zoo_manifest.json").write_text(json.dumps({}))
    check(table, zoo, rows, [])  # a zoo that records no digests cannot be checked
