"""Outcome collection: merge every expert pair with every candidate and evaluate it.

This is the exhaustive merge-and-evaluate loop that simmerge exists to avoid at use time; it
produces the predictor's training data (and the zoo's quality numbers). Each merge is built in
memory, loaded into ONE reused model and scored on the union of the two experts' tasks.

Resumable: a (pair, candidate) is written to the :class:`~simmerge.outcomes.store.OutcomeStore` in
one transaction with all its task rows, and a rerun skips what the store holds, so a crash or Ctrl-C
loses at most the merge in flight. Each distinct merge is measured once: ordered pairs that give
the same merge (see :meth:`OperatorConfig.canonical`) share the measurement.

**Executors.** By default every merge runs in this process, one after the other. Given another
executor (``executor="ray"``, a local process pool with ``workers`` > 1, or an
:class:`~simmerge.infra.executors.Executor`), the distinct merges still to measure are cut into
:class:`MergeBlock` jobs -- up to ``block_size`` candidates of one canonical pair, merged and
scored by one worker with one loaded model -- and each block's scores come back to this process,
which alone writes the store, one (pair, candidate) transaction per job as each block arrives;
the equal merges of a block's candidates are written from its scores. A worker that dies is
retried by the executor (Ray); a killed driver loses only the blocks in flight, and a rerun
resumes. Workers must see the checkpoints and the eval files at the same paths.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from simmerge.catalog import Catalog, CatalogModel
from simmerge.errors import CatalogError, ConfigError
from simmerge.evaluation.scorer import MergeScorer, normalized, reference_score
from simmerge.infra.executors import Executor, in_process, running
from simmerge.merging import merge
from simmerge.merging.grid import DEFAULT_GRID, OperatorConfig
from simmerge.outcomes.store import Outcome, OutcomeStore, params_json


def expert_pairs(catalog: Catalog, names: Sequence[str] | None = None):
    """Ordered pairs of distinct experts (of ``names`` if given) that have eval data."""
    experts = [catalog.model(n) for n in names] if names else list(catalog.experts)
    if catalog.base in experts:
        raise CatalogError(
            f"{catalog.base.name!r} is the catalog's base model, not an expert.",
            f"pick experts among: {', '.join(catalog.expert_names)}.",
        )
    with_data = {t for t, spec in catalog.tasks.items() if spec.eval is not None}
    usable = [e for e in experts if set(e.tasks) & with_data]
    if len(usable) < 2:
        raise CatalogError(
            f"Catalog {catalog.name!r}: fewer than two experts have eval data for a task.",
            "add `tasks: {NAME: {eval: FILE}}` entries for the experts' tasks.",
        )
    return list(itertools.permutations(usable, 2))


def outcome_rows(
    catalog: Catalog,
    a: CatalogModel,
    b: CatalogModel,
    config: OperatorConfig,
    plan_id: str,
    scores: dict[str, float],
    eval_hashes: dict[str, str],
    refs: dict[tuple[str, str], float],
) -> list[Outcome]:
    """Outcome rows of one measured merge of (a, b), each score normalized by its task's
    reference among the experts' scores ``refs`` (:func:`~simmerge.evaluation.scorer.
    reference_score`: the better pair member that has the task, else the catalog's best
    expert of it)."""
    rows = []
    for t, score in scores.items():
        expert = reference_score(catalog, refs, t, (a.name, b.name))
        rows.append(
            Outcome(
                catalog=catalog.name,
                model_a=a.name,
                model_b=b.name,
                candidate=config.id,
                operator=config.operator,
                params=params_json(config.params),
                plan_id=plan_id,
                task=t,
                eval_hash=eval_hashes[t],
                score=score,
                expert_score=expert,
                normalized=normalized(score, expert),
            )
        )
    return rows


def shard_pairs(
    pairs: Sequence[tuple[CatalogModel, CatalogModel]], shard: int, n_shards: int
) -> list[tuple[CatalogModel, CatalogModel]]:
    """The ordered pairs of shard ``shard`` of ``n_shards``: unordered pairs are dealt out in
    turn and both orders of a pair stay in one shard, so that each shard still measures every
    distinct merge once. Shards can run as parallel processes on one store (SQLite WAL)."""
    if not 0 <= shard < n_shards:
        raise ConfigError(
            f"Shard {shard} of {n_shards} does not exist.", "use --shard K/N with 0 <= K < N."
        )
    unordered = sorted({tuple(sorted((a.name, b.name))) for a, b in pairs})
    mine = {p for i, p in enumerate(unordered) if i % n_shards == shard}
    return [(a, b) for a, b in pairs if tuple(sorted((a.name, b.name))) in mine]


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard K/N`` as (K, N); :func:`shard_pairs` checks the range."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()):
        raise ConfigError(f"--shard {text!r} is not K/N.", "write e.g. --shard 0/2.")
    return int(k), int(n)


@dataclass(frozen=True)
class CollectSummary:
    jobs: int
    skipped: int  # already in the store
    merged: int  # merges built and evaluated in this run
    reused: int  # written from an equal merge measured before
    rows: int
    seconds: float
    # per task: the expert scores stored rows were normalized by that differ from today's, and
    # today's (a store measured on another build of the experts; see reference_drift)
    reference_drift: dict[str, tuple[tuple[float, ...], float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeBlock:
    """One executor job of a collection: the merges of ``first`` and ``second`` (catalog order)
    with each of ``configs`` (canonical), scored on ``tasks``."""

    catalog: Catalog
    first: str
    second: str
    configs: tuple[OperatorConfig, ...]
    tasks: tuple[str, ...]
    device: str | None = None

    @classmethod
    def of(cls, catalog: Catalog, first: str, second: str, configs, tasks, device) -> MergeBlock:
        """The block, with the catalog sent without its open checkpoints (the workers merge
        from paths)."""
        light = replace(catalog, _checkpoints={})
        dev = None if device is None else str(device)
        return cls(light, first, second, tuple(configs), tuple(tasks), dev)

    @property
    def gpu(self) -> bool:
        """Whether the block runs on a GPU (an executor reserves one for it): ``cuda`` or no
        device given (the scorer then picks CUDA where there is one)."""
        return self.device is None or self.device.startswith("cuda")


def run_merge_block(block: MergeBlock) -> list[tuple[dict[str, float], str]]:
    """(score per task, plan id) of each merge of ``block``, in order, built and scored in the
    calling process (a Ray worker, a pool process) with one scorer for the whole block."""
    catalog = block.catalog
    scorer = MergeScorer(catalog, block.device)
    first, second = catalog.model(block.first).path, catalog.model(block.second).path
    out = []
    for config in block.configs:
        plan = config.plan(str(catalog.base.path), first, second)
        scores = scorer.score_state(merge(plan, device=str(scorer.device)), block.tasks)
        out.append((scores, plan.plan_id))
    return out


def collect_outcomes(
    catalog: Catalog,
    store: OutcomeStore,
    grid: Sequence[OperatorConfig] = DEFAULT_GRID,
    *,
    pairs: Sequence[tuple[CatalogModel, CatalogModel]] | None = None,
    device: Any | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    executor: str | Executor = "local",
    workers: int = 1,
    address: str | None = None,
    block_size: int = 4,
) -> CollectSummary:
    """Measure every (ordered pair, candidate) not yet in ``store``; see the module docs.
    The experts' reference scores come from the single-model score cache under ``cache_dir``.

    ``executor``: ``"local"`` (``workers`` > 1: a process pool), ``"ray"`` (``address``: an
    existing cluster, e.g. ``"auto"``; else a new local instance with ``workers`` CPUs) or an
    :class:`~simmerge.infra.executors.Executor` (left open); all but the in-process default run
    :class:`MergeBlock` jobs of up to ``block_size`` merges and write their rows here."""
    t0 = time.perf_counter()
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}.", "pass 1 or more.")
    scorer = MergeScorer(catalog, device)
    refs = scorer.expert_scores(cache_dir=cache_dir)
    pairs = list(pairs) if pairs is not None else expert_pairs(catalog)
    # one read of the store: what is measured (for reuse) is also what is done (for skipping)
    measured: dict[tuple[str, str, str, str, str], tuple[float, str]] = {}
    stored = list(store.outcomes(catalog.name))
    for o in stored:
        measured[(o.model_a, o.model_b, o.candidate, o.task, o.eval_hash)] = (o.score, o.plan_id)
    done = set(measured)
    drift = reference_drift(catalog, stored, refs, {t: scorer.eval_hash(t) for t in scorer.tasks})
    if drift:
        warnings.warn(_drift_message(drift), ReferenceDriftWarning, stacklevel=2)

    jobs = []
    skipped = 0
    for a, b in pairs:
        tasks = scorer.pair_tasks(a, b)
        for config in grid:
            keys = [(a.name, b.name, config.id, t, scorer.eval_hash(t)) for t in tasks]
            if all(k in done for k in keys):
                skipped += 1
            else:
                jobs.append((a, b, config, tasks))

    if in_process(executor, workers):
        merged, reused, rows = _collect_here(catalog, store, scorer, refs, measured, jobs, progress)
    else:
        with running(executor, workers=workers, address=address) as runner:
            merged, reused, rows = _collect_on(
                runner, catalog, store, scorer, refs, measured, jobs, device, progress, block_size
            )
    return CollectSummary(
        jobs=len(jobs) + skipped,
        skipped=skipped,
        merged=merged,
        reused=reused,
        rows=rows,
        seconds=time.perf_counter() - t0,
        reference_drift=drift,
    )


class ReferenceDriftWarning(UserWarning):
    """The store's rows were normalized by expert scores that this catalog's experts no longer
    reproduce (see :func:`reference_drift`)."""


def reference_drift(
    catalog: Catalog,
    stored: Sequence[Outcome],
    refs: dict[tuple[str, str], float],
    eval_hashes: dict[str, str],
) -> dict[str, tuple[tuple[float, ...], float]]:
    """Per task, the reference (expert) scores stored rows were normalized by that differ from
    the reference this catalog's experts give now, with the current one.

    A store seeded from another build of the catalog -- e.g. a zoo rebuilt on another machine,
    whose fine-tunes are not bit-identical -- mixes two sets of experts; the collector resumes
    anyway (the differences are usually a few examples), but says so, because a row's
    normalized score then depends on which build measured it. Rows of another eval file are
    not compared (they are not this catalog's measurements)."""
    seen: dict[str, set[float]] = {}
    now: dict[str, float] = {}
    for o in stored:
        if eval_hashes.get(o.task) != o.eval_hash:
            continue
        current = reference_score(catalog, refs, o.task, (o.model_a, o.model_b))
        if abs(o.expert_score - current) > 1e-9:
            seen.setdefault(o.task, set()).add(o.expert_score)
            now[o.task] = current
    return {t: (tuple(sorted(v)), now[t]) for t, v in sorted(seen.items())}


def _drift_message(drift: dict[str, tuple[tuple[float, ...], float]]) -> str:
    parts = "; ".join(
        f"{t}: stored {', '.join(f'{x:.4g}' for x in old)}, now {cur:.4g}"
        for t, (old, cur) in drift.items()
    )
    return (
        f"Some stored rows were normalized by expert scores this catalog's experts no longer "
        f"give ({parts}): the store was measured on another build of these experts (a zoo "
        "rebuilt on another machine is not bit-identical). New rows use the current scores; "
        "start a new store to measure everything on this build."
    )


_Job = tuple[CatalogModel, CatalogModel, OperatorConfig, list[str]]
_Measured = dict[tuple[str, str, str, str, str], tuple[float, str]]


def _known(measured: _Measured, first: str, second: str, canon: OperatorConfig, tasks, hashes):
    """(score, plan id) per task of the merge (first, second, canon) from ``measured``, or None
    when some task of it is not measured. The store may hold it under the other order (rows
    are written in the order asked for, e.g. a table seeded from one order only), as the
    mirrored configuration of (second, first)."""
    mirror = canon.mirrored().id
    for x, y, cid in ((first, second, canon.id), (second, first, mirror)):
        known = [measured.get((x, y, cid, t, hashes[t])) for t in tasks]
        if all(k is not None for k in known):
            return known
    return None


def _collect_here(
    catalog: Catalog,
    store: OutcomeStore,
    scorer: MergeScorer,
    refs: dict[tuple[str, str], float],
    measured: _Measured,
    jobs: list[_Job],
    progress: bool,
) -> tuple[int, int, int]:
    """Every job in this process, one after the other: (merged, reused, rows)."""
    order = {e.name: i for i, e in enumerate(catalog.experts)}
    merged = reused = rows = 0
    base_dir = str(catalog.base.path)
    for a, b, config, tasks in tqdm(jobs, desc="merge+eval", disable=not progress):
        first, second, canon = config.canonical(a.name, b.name, order)
        hashes = {t: scorer.eval_hash(t) for t in tasks}
        known = _known(measured, first, second, canon, tasks, hashes)
        if known is not None:
            scores = {t: k[0] for t, k in zip(tasks, known, strict=True)}
            plan_id = known[0][1]
            reused += 1
        else:
            plan = canon.plan(base_dir, catalog.model(first).path, catalog.model(second).path)
            scores = scorer.score_state(merge(plan, device=str(scorer.device)), tasks)
            plan_id = plan.plan_id
            merged += 1
            for t in tasks:
                measured[(first, second, canon.id, t, hashes[t])] = (scores[t], plan_id)
        batch = outcome_rows(catalog, a, b, config, plan_id, scores, hashes, refs)
        rows += store.add(batch)
    return merged, reused, rows


def _collect_on(
    runner: Executor,
    catalog: Catalog,
    store: OutcomeStore,
    scorer: MergeScorer,
    refs: dict[tuple[str, str], float],
    measured: _Measured,
    jobs: list[_Job],
    device: Any | None,
    progress: bool,
    block_size: int,
) -> tuple[int, int, int]:
    """The jobs as :class:`MergeBlock` jobs on ``runner``, the store written here as blocks
    finish: (merged, reused, rows)."""
    order = {e.name: i for i, e in enumerate(catalog.experts)}
    reused = rows = 0
    # jobs whose merge is in the store are written at once; the others wait for their merge,
    # which equal jobs (both orders of a pair) share
    waiting: dict[tuple[str, str, OperatorConfig], list[_Job]] = {}
    for a, b, config, tasks in jobs:
        first, second, canon = config.canonical(a.name, b.name, order)
        hashes = {t: scorer.eval_hash(t) for t in tasks}
        known = _known(measured, first, second, canon, tasks, hashes)
        if known is None:
            waiting.setdefault((first, second, canon), []).append((a, b, config, tasks))
            continue
        scores = {t: k[0] for t, k in zip(tasks, known, strict=True)}
        rows += store.add(outcome_rows(catalog, a, b, config, known[0][1], scores, hashes, refs))
        reused += 1
    by_pair: dict[tuple[str, str], list[OperatorConfig]] = {}
    for first, second, canon in waiting:
        by_pair.setdefault((first, second), []).append(canon)
    blocks = []
    for (first, second), configs in by_pair.items():
        tasks = waiting[(first, second, configs[0])][0][3]
        for i in range(0, len(configs), block_size):
            chunk = configs[i : i + block_size]
            blocks.append(MergeBlock.of(catalog, first, second, chunk, tasks, device))
    gpu = bool(blocks) and blocks[0].gpu
    results = runner.imap(run_merge_block, blocks, desc="merge+eval", progress=progress, gpu=gpu)
    with contextlib.closing(results):
        for i, measured_block in results:
            block = blocks[i]
            hashes = {t: scorer.eval_hash(t) for t in block.tasks}
            for canon, (scores, plan_id) in zip(block.configs, measured_block, strict=True):
                equal = waiting[(block.first, block.second, canon)]
                for a, b, config, _ in equal:
                    batch = outcome_rows(catalog, a, b, config, plan_id, scores, hashes, refs)
                    rows += store.add(batch)
                reused += len(equal) - 1
    return len(waiting), reused, rows
