"""Jobs that tests/safety/test_crash.py runs in forked children and kills with SIGKILL, and one
that makes an executor's worker die once (retry tests).

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
