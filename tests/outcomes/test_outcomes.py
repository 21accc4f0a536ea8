"""Candidate grid, outcome store and outcome collection: ids, canonical merges, durable rows,
resumption without lost or duplicated rows."""

from __future__ import annotations

import sqlite3

import pytest
from _factories import MICRO3, SMALL_GRID

from simmerge.catalog import Catalog
from simmerge.errors import ConfigError, OutcomeStoreError, PlanError
from simmerge.merging.grid import DEFAULT_GRID, OperatorConfig, grid_from_ids
from simmerge.merging.registry import OPERATORS
from simmerge.outcomes.collection import collect_outcomes, expert_pairs
from simmerge.outcomes.store import Outcome, OutcomeStore
from simmerge.zoo.build import build_from_recipe


@pytest.fixture(scope="module")
def micro_catalog(tmp_path_factory) -> Catalog:
    import torch

    torch.set_num_threads(1)
    out = build_from_recipe(tmp_path_factory.mktemp("micro3"), MICRO3, progress=False)
    return Catalog.load(out / "catalog.yaml")


def _row(**kw) -> Outcome:
    base = dict(
        catalog="c",
        model_a="a",
        model_b="b",
        candidate="linear",
        operator="linear",
        params="{}",
        plan_id="p",
        task="t",
        eval_hash="h",
        score=0.5,
        expert_score=1.0,
        normalized=0.5,
    )
    return Outcome(**{**base, **kw})


# --- candidates --------------------------------------------------------------------------------


def test_default_grid_has_20_candidates_covering_every_predictor_operator():
    from simmerge.merging.grid import PREDICTOR_OPERATORS

    assert len(DEFAULT_GRID) >= 20
    assert {c.operator for c in DEFAULT_GRID} == set(PREDICTOR_OPERATORS)
    assert set(PREDICTOR_OPERATORS) <= set(OPERATORS)
    assert len({c.id for c in DEFAULT_GRID}) == len(DEFAULT_GRID)


def test_candidate_ids_round_trip():
    for config in DEFAULT_GRID:
        assert OperatorConfig.from_id(config.id) == config


@pytest.mark.parametrize(
    "bad", ["ties[density=1.5]", "ties[density=0.5", "ties[density]", "ties[density=x]", "nope"]
)
def test_bad_candidate_ids_are_typed_errors(bad):
    with pytest.raises(PlanError):  # OperatorParameterError or UnknownOperatorError
        grid_from_ids([bad])


def test_hyperparameters_fill_defaults_and_nan_for_absent():
    hp = OperatorConfig.from_id("ties[density=0.5]").hyperparameters()
    assert hp["density"] == 0.5 and hp["lambda"] == 1.0
    assert hp["t"] != hp["t"]  # NaN: ties has no t


def test_canonical_merge_mirrors_slerp_and_sorts_order_free_operators():
    order = {"a": 0, "b": 1}
    slerp = OperatorConfig.from_id("slerp[t=0.3]")
    assert slerp.canonical("b", "a", order) == ("a", "b", OperatorConfig.from_id("slerp[t=0.7]"))
    assert slerp.canonical("a", "b", order) == ("a", "b", slerp)
    ties = OperatorConfig.from_id("ties[density=0.5]")
    assert ties.canonical("b", "a", order) == ("a", "b", ties)


# --- store -------------------------------------------------------------------------------------


def test_store_rows_survive_reopening_and_duplicates_are_skipped(tmp_path):
    path = tmp_path / "o.sqlite"
    with OutcomeStore(path) as store:
        assert store.add([_row(), _row(task="u")]) == 2
        assert store.add([_row(), _row(task="v")]) == 1
    with OutcomeStore(path) as store:
        assert len(store) == 3
        assert {o.task for o in store} == {"t", "u", "v"}


def test_store_add_is_all_or_nothing(tmp_path):
    with OutcomeStore(tmp_path / "o.sqlite") as store:
        with pytest.raises(OutcomeStoreError, match="none were written"):
            store.add([_row(task="ok"), _row(task=None)])
        assert len(store) == 0


def test_a_file_that_is_not_a_store_is_a_typed_error(tmp_path):
    bad = tmp_path / "o.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutcomeStoreError, match="not a readable outcome store"):
        OutcomeStore(bad)
    with pytest.raises(OutcomeStoreError, match="not a file"):
        OutcomeStore(tmp_path)


def test_a_store_of_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "o.sqlite"
    OutcomeStore(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.close()
    with pytest.raises(OutcomeStoreError, match="schema version 99"):
        OutcomeStore(path)


def test_opening_a_new_store_waits_out_another_process_switching_it_to_wal(tmp_path, monkeypatch):
    """Shard collectors started together open one new store at the same instant; SQLite then
    answers 'database is locked' to the WAL switch at once, without its busy timeout. The
    store must retry instead of failing the collector (it did: one shard of the regeneration
    script died this way)."""
    import simmerge.outcomes.store as outcomes_module

    real_connect = sqlite3.connect
    locked_answers = [2]

    class LockedOnce:
        def __init__(self, db):
            self._db = db

        def execute(self, sql, *args):
            if sql.startswith("PRAGMA journal_mode") and locked_answers[0] > 0:
                locked_answers[0] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self._db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self._db, name)

        def __enter__(self):
            return self._db.__enter__()

        def __exit__(self, *exc):
            return self._db.__exit__(*exc)

    monkeypatch.setattr(
        outcomes_module.sqlite3, "connect", lambda *a, **k: LockedOnce(real_connect(*a, **k))
    )
    with OutcomeStore(tmp_path / "o.sqlite") as store:
        assert store.add([_row()]) == 1
    assert locked_answers == [0]


def test_a_store_locked_for_longer_than_the_wait_is_a_typed_error(tmp_path, monkeypatch):
    import simmerge.outcomes.store as outcomes_module

    real_connect = sqlite3.connect
    attempts = []

    class AlwaysLocked:
        def __init__(self, db):
            self._db = db

        def execute(self, sql, *args):
            attempts.append(sql)
            raise sqlite3.OperationalError("database is locked")

        def close(self):
            self._db.close()

    monkeypatch.setattr(outcomes_module, "_LOCK_WAIT_S", 0.05)
    monkeypatch.setattr(
        outcomes_module.sqlite3, "connect", lambda *a, **k: AlwaysLocked(real_connect(*a, **k))
    )
    with pytest.raises(OutcomeStoreError, match="locked"):
        OutcomeStore(tmp_path / "o.sqlite")
    assert len(attempts) > 1  # it retried before giving up


# --- collection --------------------------------------------------------------------------------


def test_collection_covers_every_ordered_pair_and_candidate(micro_catalog, tmp_path):
    with OutcomeStore(tmp_path / "o.sqlite") as store:
        summary = collect_outcomes(micro_catalog, store, SMALL_GRID, progress=False)
        rows = list(store)
    pairs = expert_pairs(micro_catalog)
    assert len(pairs) == 6
    assert summary.jobs == 6 * len(SMALL_GRID) and summary.skipped == 0
    # each unordered pair is merged once per candidate; the other order reuses it (slerp
    # through its mirror t -> 1 - t)
    assert summary.merged == 12 and summary.reused == 12
    by_key = {(o.model_a, o.model_b, o.candidate, o.task): o for o in rows}
    assert len(by_key) == len(rows)
    for o in rows:
        assert 0.0 <= o.score <= 1.0 and o.expert_score >= 0.0
        assert o.normalized == pytest.approx(o.score / o.expert_score if o.expert_score else 0.0)
        assert o.task in {
            *micro_catalog.model(o.model_a).tasks,
            *micro_catalog.model(o.model_b).tasks,
        }
    # a merge and its mirror are one measurement
    for (a, b, cand, task), o in by_key.items():
        mirror = OperatorConfig.from_id(cand).mirrored().id
        assert by_key[(b, a, mirror, task)].score == o.score


def test_interrupted_collection_resumes_without_lost_or_duplicated_rows(
    micro_catalog, tmp_path, monkeypatch
):
    import simmerge.outcomes.collection as collect_mod

    with OutcomeStore(tmp_path / "full.sqlite") as store:
        collect_outcomes(micro_catalog, store, SMALL_GRID, progress=False)
        full = {(o.model_a, o.model_b, o.candidate, o.task): o.score for o in store}

    real_merge = collect_mod.merge
    calls = {"n": 0}

    def flaky_merge(plan, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the 4th merge
        return real_merge(plan, **kw)

    path = tmp_path / "resumed.sqlite"
    monkeypatch.setattr(collect_mod, "merge", flaky_merge)
    with OutcomeStore(path) as store, pytest.raises(KeyboardInterrupt):
        collect_outcomes(micro_catalog, store, SMALL_GRID, progress=False)
    with OutcomeStore(path) as store:
        partial = len(store)
    assert 0 < partial < len(full)

    monkeypatch.setattr(collect_mod, "merge", real_merge)
    with OutcomeStore(path) as store:
        summary = collect_outcomes(micro_catalog, store, SMALL_GRID, progress=False)
        resumed = {(o.model_a, o.model_b, o.candidate, o.task): o.score for o in store}
        assert len(store) == len(full)
    assert resumed == full
    assert summary.skipped > 0


def test_a_store_measured_on_another_build_of_the_experts_is_resumed_with_a_warning(
    micro_catalog, tmp_path
):
    from simmerge.outcomes.collection import ReferenceDriftWarning

    path = tmp_path / "o.sqlite"
    first_pair = expert_pairs(micro_catalog)[:1]
    with OutcomeStore(path) as store:
        collect_outcomes(micro_catalog, store, SMALL_GRID, pairs=first_pair, progress=False)
        (task, today), *_ = {(o.task, o.expert_score) for o in store}
    with sqlite3.connect(path) as db:  # as if another build's expert had scored 0.25 lower
        db.execute("UPDATE outcomes SET expert_score = expert_score - 0.25 WHERE task = ?", (task,))
    with OutcomeStore(path) as store:
        with pytest.warns(ReferenceDriftWarning, match=f"{task}: stored"):
            summary = collect_outcomes(micro_catalog, store, SMALL_GRID, progress=False)
    assert summary.reference_drift == {task: ((today - 0.25,), today)}
    with OutcomeStore(tmp_path / "clean.sqlite") as store:
        collect_outcomes(micro_catalog, store, SMALL_GRID, pairs=first_pair, progress=False)
        resumed = collect_outcomes(micro_catalog, store, SMALL_GRID, progress=False)
    assert resumed.reference_drift == {}


def test_collect_command_reports_and_resumes(micro_catalog, tmp_path, capsys):
    from simmerge.cli.main import main

    args = [
        "collect",
        str(micro_catalog.source),
        "--store",
        str(tmp_path / "o.sqlite"),
        "--candidates",
        "linear,ties[density=0.5]",
        "--models",
        "reverse_a,sort_a",
        "--quiet",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "4 (pair, candidate) jobs: 0 already stored, 2 merged+evaluated, 2 reused" in first
    assert main(args) == 0
    assert "4 already stored" in capsys.readouterr().out
    assert main([*args[:4], "--candidates", "ties[density=7]"]) == 3  # typed error, exit 3


def test_shards_partition_the_pairs_and_keep_both_orders_together(micro_catalog):
    from simmerge.outcomes.collection import shard_pairs

    pairs = expert_pairs(micro_catalog)
    shards = [shard_pairs(pairs, k, 2) for k in range(2)]
    names = [{(a.name, b.name) for a, b in s} for s in shards]
    assert names[0] | names[1] == {(a.name, b.name) for a, b in pairs}
    assert not names[0] & names[1]
    for s in names:
        assert all((b, a) in s for a, b in s)
    with pytest.raises(ConfigError, match="does not exist"):
        shard_pairs(pairs, 2, 2)


def test_shard_argument_is_k_of_n_or_a_typed_error():
    from simmerge.outcomes.collection import parse_shard

    assert parse_shard("1/2") == (1, 2)
    for bad in ("1", "a/2", "1/2/3", "-1/2"):
        with pytest.raises(ConfigError, match="is not K/N"):
            parse_shard(bad)


def _rows(store: OutcomeStore) -> list[tuple]:
    return sorted(
        (o.model_a, o.model_b, o.candidate, o.task, o.plan_id, o.score, o.normalized) for o in store
    )


def test_collection_in_blocks_on_an_executor_writes_the_in_process_rows(micro_catalog, tmp_path):
    """The executor path (here in-process, as Ray runs it: blocks of merges whose scores the
    caller writes) gives the default path's rows and counts, and resumes from the store: the
    other order of a stored pair is written from the stored merge, not merged again."""
    from simmerge.infra.executors import LocalExecutor
    from simmerge.outcomes.collection import MergeBlock

    with OutcomeStore(tmp_path / "here.sqlite") as store:
        here = collect_outcomes(micro_catalog, store, SMALL_GRID, progress=False)
        want = _rows(store)
    with OutcomeStore(tmp_path / "blocks.sqlite") as store:
        blocks = collect_outcomes(
            micro_catalog, store, SMALL_GRID, progress=False, executor=LocalExecutor(), block_size=3
        )
        assert _rows(store) == want
    assert (blocks.merged, blocks.reused, blocks.rows) == (here.merged, here.reused, here.rows)

    order = {e.name: i for i, e in enumerate(micro_catalog.experts)}
    pairs = expert_pairs(micro_catalog)
    forward = [(a, b) for a, b in pairs if order[a.name] < order[b.name]]
    with OutcomeStore(tmp_path / "resumed.sqlite") as store:
        collect_outcomes(micro_catalog, store, SMALL_GRID, pairs=forward, progress=False)
        resumed = collect_outcomes(
            micro_catalog, store, SMALL_GRID, progress=False, executor=LocalExecutor()
        )
        assert _rows(store) == want
    assert resumed.skipped == len(forward) * len(SMALL_GRID) and resumed.merged == 0
    assert resumed.reused == resumed.jobs - resumed.skipped
    with OutcomeStore(tmp_path / "x.sqlite") as store, pytest.raises(ConfigError, match="block"):
        collect_outcomes(micro_catalog, store, SMALL_GRID, executor=LocalExecutor(), block_size=0)
    # what a worker is sent: no open checkpoints, and a GPU wanted unless the device is a CPU
    block = MergeBlock.of(micro_catalog, "a", "b", SMALL_GRID[:1], ("t",), None)
    assert block.catalog._checkpoints == {} and block.gpu
    assert not MergeBlock.of(micro_catalog, "a", "b", (), (), "cpu").gpu
