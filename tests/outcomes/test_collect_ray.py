"""Outcome collection and verification on a real two-node Ray cluster started on this machine
(``ray_cluster``: two ``ray start`` nodes of one CPU each): the store holds the rows of a local
run, a worker killed mid-run is retried with nothing lost or written twice, and the blocks ran
on both nodes. Three experts of the default tiny zoo x three candidates: 18 jobs, 12 distinct
merges, in blocks of two."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from crash_jobs import Spied, nodes_used

pytestmark = pytest.mark.slow

MODELS = ("reverse_a", "sort_a", "rotate_a")
CANDIDATES = ("linear", "ties[density=0.5]", "slerp[t=0.3]")


def store_rows(path) -> list[tuple]:
    """The store's rows without their write time, sorted."""
    from simmerge.outcomes.store import OutcomeStore

    with OutcomeStore(path) as store:
        return sorted(tuple(v for k, v in asdict(o).items() if k != "created") for o in store)


@pytest.fixture(scope="module")
def local(tiny_zoo, tmp_path_factory):
    """The subset collected in this process, the default path."""
    from simmerge.catalog import Catalog
    from simmerge.merging.grid import grid_from_ids
    from simmerge.outcomes.collection import collect_outcomes, expert_pairs
    from simmerge.outcomes.store import OutcomeStore

    root = tmp_path_factory.mktemp("collect-local")
    catalog = Catalog.load(tiny_zoo / "catalog.yaml")
    grid = grid_from_ids(list(CANDIDATES))
    pairs = expert_pairs(catalog, list(MODELS))
    with OutcomeStore(root / "local.sqlite") as store:
        summary = collect_outcomes(
            catalog, store, grid, pairs=pairs, cache_dir=root / "cache", progress=False
        )
    rows = store_rows(root / "local.sqlite")
    assert summary.merged == 12 and summary.reused == 6 and len(rows) == 36
    assert len({(r[1], r[2], r[3], r[7]) for r in rows}) == 36  # one per (pair, candidate, task)
    assert any(r[-1] > 0.2 for r in rows)  # normalized scores worth comparing
    return {
        "catalog": catalog,
        "grid": grid,
        "pairs": pairs,
        "cache": root / "cache",
        "rows": rows,
        "summary": summary,
    }


def test_collect_command_on_the_cluster_writes_the_local_rows(local, ray_cluster, tmp_path, capsys):
    from simmerge.cli.main import main

    store = tmp_path / "ray.sqlite"
    args = ["collect", str(local["catalog"].source), "--store", str(store)]
    args += ["--candidates", ",".join(CANDIDATES), "--models", ",".join(MODELS)]
    args += ["--executor", "ray", "--address", ray_cluster.address, "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "18 (pair, candidate) jobs: 0 already stored, 12 merged+evaluated, 6 reused" in out
    assert store_rows(store) == local["rows"]
    assert main(args) == 0  # a rerun finds everything stored and starts no task
    assert "18 already stored" in capsys.readouterr().out


def test_a_worker_killed_mid_run_is_retried_with_nothing_lost_or_written_twice(
    local, ray_cluster, tmp_path
):
    from simmerge.infra.executors import RayExecutor
    from simmerge.outcomes.collection import collect_outcomes
    from simmerge.outcomes.store import OutcomeStore

    log, marker = tmp_path / "log", tmp_path / "killed"
    log.mkdir()
    runner = RayExecutor(ray_cluster.address)
    # the last pair's first block kills its worker (SIGKILL) the first time it runs
    executor = Spied(runner, str(log), str(marker), lambda block: block.first == "sort_a")
    try:
        with OutcomeStore(tmp_path / "ray.sqlite") as store:
            summary = collect_outcomes(
                local["catalog"],
                store,
                local["grid"],
                pairs=local["pairs"],
                cache_dir=local["cache"],
                progress=False,
                executor=executor,
                block_size=2,
            )
            assert len(store) == len(local["rows"])
        assert len(nodes_used(log)) == 2  # the six blocks ran on both nodes
    finally:
        runner.close()
    assert "killed worker" in marker.read_text()
    # every (pair, candidate) written once, by the driver, from one measurement each
    assert (summary.merged, summary.reused, summary.rows) == (12, 6, len(local["rows"]))
    assert store_rows(tmp_path / "ray.sqlite") == local["rows"]


def test_verify_on_the_cluster_measures_what_verify_here_measures(tiny_zoo, ray_cluster, tmp_path):
    from simmerge.catalog import Catalog
    from simmerge.merging.grid import grid_from_ids
    from simmerge.pairwise.rank import rank_merges
    from simmerge.pairwise.verify import verify
    from simmerge.signals.profiles import FeatureOptions

    catalog = Catalog.load(tiny_zoo / "catalog.yaml")
    ranked = rank_merges(
        catalog,
        ["reverse_a", "sort_a"],
        top=None,
        grid=grid_from_ids(list(CANDIDATES)),
        options=FeatureOptions(cache_dir=tmp_path / "cache"),
        progress=False,
    )
    here = verify(catalog, ranked, k=2, store=tmp_path / "here.sqlite", cache_dir=tmp_path)
    there = verify(
        catalog,
        ranked,
        k=2,
        store=tmp_path / "ray.sqlite",
        cache_dir=tmp_path,
        executor="ray",
        address=ray_cluster.address,
    )
    assert [asdict(v) for v in there.verified] == [asdict(v) for v in here.verified]
    assert len(here.verified) == 2
    assert store_rows(tmp_path / "ray.sqlite") == store_rows(tmp_path / "here.sqlite")
