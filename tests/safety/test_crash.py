"""Crash safety: SIGKILL at random moments (20 trials each, SIMMERGE_CRASH_TRIALS to change).

* a streaming merge leaves a complete output folder or none, and the next merge to that name
  clears the killed one's temporary folder;
* outcome collection resumes with no lost and no duplicated rows, and the store stays readable;
* a catalog scan leaves only whole files, and the final run redoes nothing that had finished;
* bandit updates: every update that was saved survives, the state always loads.

Children are forked from a fork server that preloads torch and simmerge
(the jobs in simmerge/zoo/micro.py), so a trial starts in milliseconds and the kill lands in the
work.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import crash_jobs as w
import pytest
import torch

from simmerge.io.checkpoint import open_checkpoint
from simmerge.merging import MergePlan, PlanMember, merge
from simmerge.online.bandit import MergeBandit
from simmerge.outcomes.store import OutcomeStore
from simmerge.zoo.micro import save_model, tiny_config

pytestmark = pytest.mark.slow
TRIALS = int(os.environ.get("SIMMERGE_CRASH_TRIALS", "20"))


@pytest.fixture(scope="module")
def forker():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(w.CRASH_PRELOAD))
    return ctx


def run_killed(ctx, target, args, delay: float) -> bool:
    """Run ``target(*args)`` in a forked child; SIGKILL it after ``delay`` seconds unless it
    finished. True when it finished (exit code checked)."""
    proc = ctx.Process(target=target, args=args)
    proc.start()
    proc.join(delay)
    return _kill_unless_finished(proc, target)


def run_killed_when(ctx, target, args, path: Path, timeout: float) -> bool:
    """Run ``target(*args)`` in a forked child; SIGKILL it as soon as ``path`` exists (a stage
    has just written its output) unless it finished first. True when it finished."""
    proc = ctx.Process(target=target, args=args)
    proc.start()
    deadline = time.monotonic() + timeout
    while proc.is_alive() and not path.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    return _kill_unless_finished(proc, target)


def _kill_unless_finished(proc, target) -> bool:
    """SIGKILL ``proc`` unless it has finished; True when it finished on its own.

    The child may exit between any liveness check and the signal (and under forkserver it is
    reaped by the server, so its pid is gone): ``Process.kill`` tolerates that, and the exit
    code, not the liveness check, says which of the two happened."""
    if proc.is_alive():
        proc.kill()
    proc.join()
    if proc.exitcode == -signal.SIGKILL:
        return False
    assert proc.exitcode == 0, f"{target.__name__} failed with exit code {proc.exitcode}"
    return True


def kill_delays(rng: random.Random, duration: float, stretch: float) -> list[float]:
    """TRIALS kill delays covering [0, stretch * duration] evenly (one per stratum, jittered,
    in shuffled order), so early, middle and late kills all happen whatever the draws."""
    width = stretch * duration / TRIALS
    delays = [(i + rng.random()) * width for i in range(TRIALS)]
    rng.shuffle(delays)
    return delays


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- streaming merge -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merge_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-merge")
    config = tiny_config(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, max_position_embeddings=64
    )
    base = save_model(root / "base", seed=0, config=config)
    experts = [save_model(root / f"e{i}", seed=i, base=base, config=config) for i in (1, 2)]
    plan = MergePlan(
        operator="ties",
        base=str(base),
        members=tuple(PlanMember(model=str(e)) for e in experts),
        params={"density": 0.5},
    )
    plan_file = root / "plan.yaml"
    plan.to_mergekit_yaml(plan_file)
    return root, plan, plan_file


def test_killed_streaming_merge_leaves_a_complete_folder_or_none(forker, merge_case, tmp_path):
    _root, plan, plan_file = merge_case
    want = merge(plan, device="cpu")
    shard = 512 * 1024  # many shards: the kill can land between any two files
    # timed in a forked child like the trials: a child pays costs (lazy imports) the test
    # process has already paid
    timing = (str(plan_file), str(tmp_path / "timing"), shard)
    duration = _timed(lambda: run_killed(forker, w.merge_job, timing, 600))
    out = tmp_path / "merged"
    rng = random.Random(1)
    outcomes = {"complete": 0, "none": 0}
    for delay in kill_delays(rng, duration, 1.3):
        args = (str(plan_file), str(out), shard)
        run_killed(forker, w.merge_job, args, delay)
        if out.exists():
            got = open_checkpoint(out)
            assert sorted(got.names) == sorted(want)
            for name, tensor in want.items():
                assert torch.equal(got.get(name), tensor), name
            shutil.rmtree(out)
            outcomes["complete"] += 1
        else:
            outcomes["none"] += 1
    assert outcomes["none"] >= 1, outcomes  # some kills did land mid-merge
    merge(plan, out, shard_bytes=shard, progress=False)  # a later merge to the same name...
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []  # ...cleans up


# --- outcome collection -----------------------------------------------------------------------


def _rows(path: Path) -> dict[tuple, tuple]:
    with OutcomeStore(path) as db:
        records = db.to_records()
    keys = [(r["model_a"], r["model_b"], r["candidate"], r["task"]) for r in records]
    assert len(keys) == len(set(keys)), "duplicated outcome rows"
    return {k: (r["score"], r["normalized"]) for k, r in zip(keys, records, strict=True)}


def test_killed_collection_resumes_without_lost_or_duplicated_rows(forker, trained, tmp_path):
    from _factories import SMALL_GRID

    want = _rows(trained["store"])
    grid = [c.id for c in SMALL_GRID]
    store = tmp_path / "o.sqlite"
    args = (str(trained["catalog_path"]), str(store), grid)
    duration = _timed(lambda: run_killed(forker, w.collect_job, args, 600))
    assert _rows(store) == want  # a child's collection equals the reference
    rng = random.Random(2)
    partial = 0
    for delay in kill_delays(rng, duration, 1.1):
        if len(_rows(store)) == len(want):  # finished: start over to keep killing real work
            for p in tmp_path.glob("o.sqlite*"):
                p.unlink()
        run_killed(forker, w.collect_job, args, delay)
        got = _rows(store)  # opens: the store survives every kill
        assert all(got[k] == want[k] for k in got), "a row differs from the reference"
        partial += len(got) < len(want)
    assert partial >= 1
    run_killed(forker, w.collect_job, args, 600)
    assert _rows(store) == want


# --- catalog scans ----------------------------------------------------------------------------


def test_killed_scan_leaves_whole_files_and_resumes_without_recomputing(forker, trained, tmp_path):
    from _factories import assert_same_outputs, check_outputs_whole, mtimes

    from simmerge.scanning.layout import FEATURES_FILE, RANKING_FILE, REPORT_FILE

    catalog, predictor = str(trained["catalog_path"]), str(trained["predictor"])
    ref = tmp_path / "ref"
    # the reference scan runs (and is timed) in a forked child like the trials
    ref_args = (catalog, str(ref / "out"), str(ref / "cache"), predictor)
    duration = _timed(lambda: run_killed(forker, w.scan_job, ref_args, 600))
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = (catalog, str(out), str(cache), predictor)
    rng = random.Random(3)
    states = set()  # which outputs existed after a kill: the kills land in different stages
    for delay in kill_delays(rng, duration, 1.5):
        if (out / REPORT_FILE).is_file():  # finished: start cold again
            shutil.rmtree(out)
            shutil.rmtree(cache, ignore_errors=True)
        run_killed(forker, w.scan_job, args, delay)
        if out.exists():
            check_outputs_whole(out)
        states.add(tuple((out / f).is_file() for f in (FEATURES_FILE, RANKING_FILE, REPORT_FILE)))
    # Timed kills land wherever the stage lengths put them (a warm cache shortens a resumed
    # scan, so whole stages can be missed); two more cold scans are killed the moment a
    # stage's output appears, so the kill lands in the next stage on every machine.
    for stage_output in (FEATURES_FILE, RANKING_FILE):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        run_killed_when(forker, w.scan_job, args, out / stage_output, 600)
        check_outputs_whole(out)
        states.add(tuple((out / f).is_file() for f in (FEATURES_FILE, RANKING_FILE, REPORT_FILE)))
    assert len(states - {(True, True, True)}) >= 3, states  # kills landed in several stages
    cached = {k: v for k, v in mtimes(cache).items() if ".tmp-" not in k} if cache.exists() else {}
    done = [f for f in (FEATURES_FILE, RANKING_FILE) if (out / f).is_file()]
    finished = {f: (out / f).stat().st_mtime_ns for f in done}
    assert run_killed(forker, w.scan_job, args, 600)
    check_outputs_whole(out)
    after = mtimes(cache)
    assert {k: after[k] for k in cached} == cached  # no finished cache entry recomputed
    leftovers = [p for p in [*after, *mtimes(out)] if ".tmp-" in p]
    assert leftovers == []  # each killed write's temporary was removed when its name was written
    for f, mtime in finished.items():
        assert (out / f).stat().st_mtime_ns == mtime, f"{f} was finished but rewritten"
    assert_same_outputs(out, ref / "out")


# --- bandit updates ---------------------------------------------------------------------------


def test_killed_bandit_updates_lose_no_saved_update(forker, tmp_path):
    state, log = tmp_path / "state.json", tmp_path / "updates.log"
    rng = random.Random(4)
    for _ in range(TRIALS):
        run_killed(forker, w.bandit_job, (str(state), str(log)), rng.uniform(0.02, 0.4))
        if not state.exists():
            continue
        loaded = MergeBandit.load(state)  # never a torn file
        logged = [int(x) for x in log.read_text().split()] if log.exists() else [0]
        assert logged[-1] <= loaded.n_updates <= logged[-1] + 1  # saved, then logged
        assert not loaded.pending
    assert MergeBandit.load(state).n_updates >= TRIALS  # the trials did real work
