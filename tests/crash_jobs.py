"""Jobs that tests/safety/test_crash.py runs in forked children and kills with SIGKILL, and the
executor tests' jobs and wrappers: one that makes an executor's worker die once (retry tests),
and :class:`Spied`, an executor whose jobs log the node they ran on and can kill their worker.

Test code, so it stays out of the wheel: the fork server imports this module by name from the
test folder, which pytest puts on ``sys.path`` (``pythonpath`` in pyproject.toml) and which
forkserver children inherit.
"""

from __future__ import annotations

from pathlib import Path

import torch

CRASH_PRELOAD = (
    "torch",
    "crash_jobs",
    "simmerge.merging",
    "simmerge.outcomes.collection",
    "simmerge.scanning.pipeline",
    "simmerge.online.bandit",
    "simmerge.scanning.report",
    "matplotlib.pyplot",  # what a scan's report stage would otherwise import in every child
    "scipy.cluster.hierarchy",
)
BANDIT_ARMS = tuple(f"task_arithmetic[lambda={v}]" for v in (0.5, 0.7, 0.85, 1.0))


def exit_once(marker: str) -> str:
    """Kill the calling process the first time it runs for ``marker`` (a file path), return
    ``"ok"`` afterwards: a job that makes an executor's worker die once (retry tests)."""
    import os

    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os._exit(1)
    return "ok"


def sleep_then_mark(item: tuple[float, str]) -> int:
    """Leave ``started.<pid>`` in the folder, sleep, leave ``done.<pid>``; return the pid: a
    long job whose end shows whether it was allowed to finish."""
    import os
    import time

    seconds, folder = item
    (Path(folder) / f"started.{os.getpid()}").write_text("")
    time.sleep(seconds)
    (Path(folder) / f"done.{os.getpid()}").write_text("")
    return os.getpid()


def on_worker(fn, log: str, marker: str | None = None, die=None):
    """``fn`` as a Ray job (a function: Ray's remote wants one) that leaves one file per call in
    ``log``, named by the node it ran on, and that the first time ``die(item)`` is true
    (recorded by the file ``marker``) kills its own worker process with SIGKILL before doing the
    work: a worker dying mid-run."""

    def job(item):
        import os
        import signal
        import uuid

        import ray

        node = ray.get_runtime_context().get_node_id()
        if die is not None and die(item) and not Path(marker).exists():
            Path(marker).write_text(f"killed worker {os.getpid()} on node {node}")
            os.kill(os.getpid(), signal.SIGKILL)
        (Path(log) / f"{node}.{uuid.uuid4().hex}").write_text(str(os.getpid()))
        return fn(item)

    return job


class Spied:
    """An executor that runs ``inner``'s jobs wrapped by :func:`on_worker`."""

    def __init__(self, inner, log: str, marker: str | None = None, die=None) -> None:
        self.inner, self.name = inner, inner.name
        self.wrap = lambda fn: on_worker(fn, log, marker, die)

    def imap(self, fn, items, **kw):
        return self.inner.imap(self.wrap(fn), items, **kw)

    def map(self, fn, items, **kw):
        return self.inner.map(self.wrap(fn), items, **kw)

    def close(self) -> None:
        self.inner.close()


def nodes_used(log: str | Path) -> set[str]:
    """The nodes that :func:`on_worker` jobs ran on."""
    return {p.name.partition(".")[0] for p in Path(log).iterdir()}


def crash_scan_settings():
    from simmerge.scanning.pipeline import ScanSettings

    return ScanSettings(top=2, plans=2, max_models=3, beam=2)


def crash_scan_options(cache: str):
    from simmerge.signals.profiles import FeatureOptions
    from simmerge.signals.signatures import SignatureConfig

    return FeatureOptions(cache_dir=cache, signature=SignatureConfig(max_length=32))


def merge_job(plan: str, out: str, shard_bytes: int) -> None:
    from simmerge.merging import MergePlan, merge

    torch.set_num_threads(1)
    merge(MergePlan.from_yaml(plan), out, shard_bytes=shard_bytes, progress=False)


def collect_job(catalog: str, store: str, grid_ids: list[str]) -> None:
    from simmerge.catalog import Catalog
    from simmerge.merging.grid import grid_from_ids
    from simmerge.outcomes.collection import collect_outcomes
    from simmerge.outcomes.store import OutcomeStore

    torch.set_num_threads(1)
    with OutcomeStore(store) as db:
        collect_outcomes(Catalog.load(catalog), db, grid_from_ids(grid_ids), progress=False)


def scan_job(catalog: str, out: str, cache: str, predictor: str) -> None:
    from simmerge.scanning.pipeline import scan

    torch.set_num_threads(1)
    scan(
        catalog,
        out,
        options=crash_scan_options(cache),
        predictor=predictor,
        settings=crash_scan_settings(),
        progress=False,
    )


def bandit_job(state: str, log: str) -> None:
    """Update after update, each as a separate ``simmerge bandit update`` would: load, select,
    update, save; then log the update count (fsync'd), so a logged update was saved."""
    import os

    from simmerge.online.bandit import CONTEXT_FEATURES, ArmContext, MergeBandit

    feats = dict.fromkeys(CONTEXT_FEATURES, 0.0)
    path = Path(state)
    while True:
        bandit = MergeBandit.load(path) if path.exists() else MergeBandit(arms=BANDIT_ARMS)
        choice = bandit.select([ArmContext(a, feats, 0.5) for a in BANDIT_ARMS])
        bandit.update(choice, 0.25 + 0.5 * (choice.arm == BANDIT_ARMS[1]))
        bandit.save(path)
        with open(log, "a") as f:
            f.write(f"{bandit.n_updates}\n")
            f.flush()
            os.fsync(f.fileno())
