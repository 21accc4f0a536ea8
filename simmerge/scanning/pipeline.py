"""Batch catalog scans: from a catalog to a mergeability map and a ranked list of merges.

``scan(catalog, out_dir)`` runs, in order (each stage timed, with a progress bar):

1. **signatures** -- one job per expert: the model loaded once, one probe pass per distinct
   probe set: O(N) model loads and forward passes;
2. **sketches** -- one streaming weight pass per expert: O(N);
   both are jobs for an executor (:mod:`simmerge.infra.executors`: in-process, a process pool or
   Ray) whose results land in the content-keyed cache, so a re-run or another scan of the same
   checkpoints recomputes none of them;
3. **profiles** -- the cached signatures and sketches loaded back (O(N) reads);
4. **pair features** -- every ordered pair x probe set (O(N²) cheap vector operations)
   -> ``features.parquet``;
5. **ranking** -- every unordered pair's candidates ranked by the predictor (its predicted best
   merge is the heatmap's cell) and the top multi-way plans for the catalog's task set
   -> ``ranking.json``;
6. **report** -- ``report.html`` (self-contained) and its PNGs (:mod:`simmerge.scanning.report`).

**Resume.** Every output records a key of everything it was computed from (checkpoint
fingerprints, probe hashes, feature settings, and for the ranking the predictor's card and the
scan settings). A stage whose output exists with the current key is skipped; all files are
written to a temporary sibling and renamed, so a scan killed at any point (SIGKILL included)
leaves only whole files, and a re-run redoes only the stages that had not finished.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

from simmerge import __version__
from simmerge.catalog import Catalog
from simmerge.errors import ConfigError, OutputPathError
from simmerge.infra.cache import cache_key, default_cache_dir
from simmerge.infra.executors import Executor, running
from simmerge.infra.files import atomic_write_text, ensure_writable_dir
from simmerge.multiway.settings import DEFAULT_MAX_MODELS, MODES
from simmerge.scanning.layout import (
    FEATURES_FILE,
    KEY_META,
    RANKING_FILE,
    REPORT_FILE,
    SCAN_FORMAT,
    json_key,
    parquet_key,
)
from simmerge.signals.probes import ProbeSet
from simmerge.signals.profiles import (
    FeatureOptions,
    build_profiles,
    catalog_probe_sets,
    feature_rows,
    write_feature_table,
)
from simmerge.signals.signatures import SignatureConfig
from simmerge.signals.sketch import SketchConfig

STAGES = ("signatures", "sketches", "profiles", "pair_features", "ranking", "report")


# --- O(N) jobs (top-level and picklable: they run in other processes or on Ray workers) -------


@dataclass(frozen=True)
class SignatureJob:
    """One model's probe passes: ``path`` on each set of ``probes`` (loaded once), each stored in
    the cache under ``cache_dir``."""

    path: str
    probes: tuple[ProbeSet, ...]
    config: SignatureConfig
    device: str | None
    cache_dir: str


def run_signature_job(job: SignatureJob) -> float:
    from simmerge.signals.signatures import compute_signatures

    start = time.perf_counter()
    compute_signatures(
        job.path,
        job.probes,
        config=job.config,
        device=job.device,
        cache_dir=job.cache_dir,
        progress=False,
    )
    return time.perf_counter() - start


@dataclass(frozen=True)
class SketchJob:
    """One streaming weight pass: the task-vector sketch of ``path`` against ``base``."""

    path: str
    base: str
    config: SketchConfig
    device: str | None
    cache_dir: str
    allow_pickle: bool = False
    allow_remote_code: bool = False


def run_sketch_job(job: SketchJob) -> float:
    from simmerge.io.checkpoint import open_checkpoint
    from simmerge.signals.sketch import sketch_task_vector

    start = time.perf_counter()
    opts = {"allow_pickle": job.allow_pickle, "allow_remote_code": job.allow_remote_code}
    sketch_task_vector(
        open_checkpoint(job.path, **opts),
        open_checkpoint(job.base, **opts),
        config=job.config,
        device=job.device or "cpu",
        cache_dir=job.cache_dir,
        progress=False,
    )
    return time.perf_counter() - start


# --- settings and result ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScanSettings:
    """What the ranking stage is asked for (part of the ranking's resume key)."""

    top: int = 5  # candidates kept per pair in ranking.json
    plans: int = 5  # multi-way plans kept
    max_models: int = DEFAULT_MAX_MODELS
    beam: int | None = None  # plan_merge's default: every chain in fast mode where feasible
    mode: str = "fast"
    tasks: tuple[str, ...] = ()  # multi-way target tasks; empty: every task an expert has
    # candidates per pair whose top feature contributions are computed (LightGBM pred_contrib
    # is most of the ranking stage's time: ~35 ms per candidate on the tiny zoo)
    explain: int = 1
    # multi-way plan model: a folder or shipped name; None: the shipped one; "none": rank
    # plans by the analytic score alone (simmerge.learn.plan_model)
    plan_model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(dict.fromkeys(t.strip() for t in self.tasks)))
        if self.mode not in MODES:
            raise ConfigError(
                f"Unknown multi-way mode {self.mode!r}.", f"use one of {', '.join(MODES)}."
            )
        beam = 1 if self.beam is None else self.beam
        if min(self.top, self.max_models - 1, beam) < 1 or min(self.plans, self.explain) < 0:
            raise ConfigError(
                f"Scan settings out of range: top={self.top}, plans={self.plans}, "
                f"max_models={self.max_models}, beam={self.beam}, explain={self.explain}.",
                "use top >= 1, plans >= 0, max_models >= 2, beam >= 1 and explain >= 0.",
            )


@dataclass
class ScanResult:
    """Where a scan wrote its outputs, how long each stage took, and which it skipped."""

    out_dir: Path
    features: Path
    ranking: Path
    report: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


# --- resume keys -----------------------------------------------------------------------------


def _features_key(catalog: Catalog, options: FeatureOptions, sets: dict[str, ProbeSet]) -> str:
    models = {m.name: catalog.checkpoint(m.name).fingerprint for m in catalog.experts}
    return cache_key(
        {
            "format": SCAN_FORMAT,
            "simmerge": __version__,
            "base": catalog.checkpoint(catalog.base.name).fingerprint,
            "experts": models,
            # plan ids and exports name the folders: a moved catalog is ranked again
            "paths": [str(m.path.resolve()) for m in (catalog.base, *catalog.experts)],
            "source": str(catalog.source.resolve()) if catalog.source else None,
            "tasks": {e.name: list(e.tasks) for e in catalog.experts},
            "probes": {k: p.hash for k, p in sets.items()},
            "signature": asdict(options.signature),
            "sketch": asdict(options.sketch),
        }
    )


def _ranking_key(features_key: str, predictor: Any, settings: ScanSettings, plan_model: Any) -> str:
    return cache_key(
        {
            "features": features_key,
            "predictor": predictor.card_,
            "plan_model": plan_model.card_ if plan_model is not None else None,
            "settings": asdict(settings),
        }
    )


# --- the scan ----------------------------------------------------------------------------------


def scan(
    catalog: Catalog | str | Path,
    out_dir: str | Path,
    *,
    executor: str | Executor = "local",
    workers: int = 1,
    address: str | None = None,
    predictor: Any = None,
    options: FeatureOptions | None = None,
    settings: ScanSettings | None = None,
    store: str | Path | None = None,
    report: bool = True,
    progress: bool = True,
) -> ScanResult:
    """Scan ``catalog`` into ``out_dir`` (see the module docs); resumable.

    ``executor`` is ``"local"`` (``workers`` > 1: a process pool), ``"ray"`` (``address``:
    an existing cluster, e.g. ``"auto"``) or an :class:`~simmerge.infra.executors.Executor`.
    ``store`` is an outcome store whose verified outcomes the report plots against the
    predictions. The cache defaults to ``options.cache_dir`` or the user cache; on a Ray
    cluster it must be a folder every worker can reach at the same path.
    """
    from simmerge.learn.loading import load_predictor
    from simmerge.learn.plan_model import load_plan_model

    if not isinstance(catalog, Catalog):
        catalog = Catalog.load(catalog)
    if len(catalog.experts) < 2:
        raise ConfigError(
            f"Catalog {catalog.name!r} has {len(catalog.experts)} expert(s); a scan compares "
            "pairs of experts.",
            "add at least two experts to the catalog.",
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"Scan output {str(out)!r} is a file.", "pass a folder path.")
    ensure_writable_dir(out, "scan output")
    settings = settings or ScanSettings()
    unknown = [t for t in settings.tasks if t not in catalog.task_names]
    if unknown:
        raise ConfigError(
            f"Scan target task(s) {unknown} are not in catalog {catalog.name!r}.",
            f"pick among: {', '.join(catalog.task_names)}.",
        )
    options = options or FeatureOptions()
    # absolute: Ray workers (other working directories) must find the same cache
    cache_dir = (Path(options.cache_dir) if options.cache_dir else default_cache_dir()).resolve()
    options = replace(options, cache_dir=cache_dir)
    model = load_predictor(predictor)
    plan_model = load_plan_model(settings.plan_model)
    sets = catalog_probe_sets(catalog, options)
    f_key = _features_key(catalog, options, sets)
    r_key = _ranking_key(f_key, model, settings, plan_model)
    result = ScanResult(out, out / FEATURES_FILE, out / RANKING_FILE, None)

    @contextlib.contextmanager
    def timer(stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        result.seconds[stage] = time.perf_counter() - start

    features_done = parquet_key(result.features) == f_key
    ranking_done = json_key(result.ranking) == r_key
    profiles = None
    if features_done and ranking_done:
        result.skipped += list(STAGES[:5])
    else:
        on_gpu = (options.device or "cuda").startswith("cuda")  # signatures pick CUDA if any
        with running(executor, workers=workers, address=address) as runner:
            with timer("signatures"):
                jobs = _signature_jobs(catalog, sets, options)
                runner.map(
                    run_signature_job, jobs, desc="signatures", progress=progress, gpu=on_gpu
                )
                result.counts["signature_jobs"] = len(jobs)
                result.counts["probe_passes"] = sum(len(j.probes) for j in jobs)
            with timer("sketches"):
                jobs = _sketch_jobs(catalog, options)
                on_gpu = (options.device or "cpu").startswith("cuda")  # sketches: CPU default
                runner.map(run_sketch_job, jobs, desc="sketches", progress=progress, gpu=on_gpu)
        with timer("profiles"):
            profiles = build_profiles(catalog, options, progress=progress)
        if features_done:
            result.skipped.append("pair_features")
        else:
            with timer("pair_features"):
                rows = feature_rows(profiles)
                write_feature_table(rows, result.features, metadata={KEY_META: f_key.encode()})
            result.counts["feature_rows"] = len(rows)
        if ranking_done:
            result.skipped.append("ranking")
        else:
            with timer("ranking"):
                ranking = rank_catalog(
                    catalog,
                    profiles,
                    model,
                    settings,
                    options,
                    progress,
                    plan_model,
                    # none given: plan_merge picks the plan model's own step predictor
                    step_predictor=model if predictor is not None else None,
                )
                ranking.update(key=r_key, features_key=f_key)
                for part, seconds in ranking["seconds"].items():
                    result.seconds[f"ranking_{part}"] = seconds
                atomic_write_text(result.ranking, json.dumps(ranking, indent=1) + "\n")
    if report:
        from simmerge.scanning.report import html_key, report_key, write_report

        result.report = out / REPORT_FILE
        rep_key = report_key(r_key, catalog, store)
        if html_key(result.report) == rep_key:
            result.skipped.append("report")
        else:
            with timer("report"):
                write_report(out, store=store, key=rep_key)
    return result


def _signature_jobs(
    catalog: Catalog, sets: dict[str, ProbeSet], options: FeatureOptions
) -> list[SignatureJob]:
    distinct = tuple({p.hash: p for p in sets.values()}.values())
    return [
        SignatureJob(
            str(e.path), distinct, options.signature, options.device, str(options.cache_dir)
        )
        for e in catalog.experts
    ]


def _sketch_jobs(catalog: Catalog, options: FeatureOptions) -> list[SketchJob]:
    return [
        SketchJob(
            str(e.path),
            str(catalog.base.path),
            options.sketch,
            options.device,
            str(options.cache_dir),
            catalog.allow_pickle,
            catalog.allow_remote_code,
        )
        for e in catalog.experts
    ]


# --- ranking stage ---------------------------------------------------------------------------


def scan_tasks(catalog: Catalog, settings: ScanSettings) -> list[str]:
    """Multi-way target tasks: the settings' tasks, else every task some expert has."""
    if settings.tasks:
        return list(settings.tasks)
    return [t for t in catalog.task_names if catalog.experts_for(t)]


def rank_catalog(
    catalog: Catalog,
    profiles: dict[str, Any],
    model: Any,
    settings: ScanSettings,
    options: FeatureOptions,
    progress: bool = False,
    plan_model: Any = None,
    step_predictor: Any = None,
) -> dict[str, Any]:
    """The ``ranking.json`` document (without its keys): every unordered pair of experts in
    catalog order, ranked on the union of its two experts' tasks, and the multi-way plans,
    whose steps ``step_predictor`` predicts (None: as ``plan_merge`` chooses with none given)."""
    from tqdm.auto import tqdm

    from simmerge.pairwise.rank import inputs_from_profiles, rank_merges

    start = time.perf_counter()
    pairs = []
    todo = list(combinations(catalog.experts, 2))
    for a, b in tqdm(todo, desc="ranking pairs", disable=not progress):
        tasks = sorted({*a.tasks, *b.tasks})
        if not tasks:
            continue  # experts that declare no task: nothing to score a merge on
        inputs = inputs_from_profiles(a, b, tasks, profiles[a.name], profiles[b.name])
        ranked = rank_merges(
            catalog,
            (a.name, b.name),
            predictor=model,
            top=None,
            inputs=inputs,
            explain=settings.explain,
        )
        pairs.append(
            {
                "models": [a.name, b.name],
                "tasks": tasks,
                "best": ranked[0].to_dict(),
                "candidates": [c.to_dict() for c in ranked[: settings.top]],
                "predictions": {c.candidate: c.per_task for c in ranked},
            }
        )
    seconds = {"pairs": time.perf_counter() - start}
    start = time.perf_counter()
    plans, plan_tasks, plan_note = _multiway(
        catalog, profiles, step_predictor, plan_model, settings, options, progress
    )
    seconds["plans"] = time.perf_counter() - start
    rule = model.card_.get("selection") or {}
    return {
        "format": SCAN_FORMAT,
        "simmerge": __version__,
        "catalog": {
            "name": catalog.name,
            "source": str(catalog.source.resolve()) if catalog.source else None,
            "base": catalog.base.name,
            "experts": {e.name: list(e.tasks) for e in catalog.experts},
        },
        "predictor": {
            "columns": len(model.columns),
            "best_fixed": rule.get("best_fixed"),
            "margin": rule.get("margin"),
            "cv": model.card_.get("cv"),
            "interval": model.card_.get("interval"),
        },
        "plan_model": (
            {
                "trained_on": plan_model.card_.get("training_sources"),
                "step_predictor": plan_model.step_predictor if step_predictor is None else None,
            }
            if plan_model
            else None
        ),
        "settings": asdict(settings),
        "pairs": pairs,
        "plan_tasks": plan_tasks,
        "plans": plans,
        "plans_note": plan_note,
        "seconds": seconds,
    }


def _multiway(
    catalog: Catalog,
    profiles: dict[str, Any],
    step_predictor: Any,
    plan_model: Any,
    settings: ScanSettings,
    options: FeatureOptions,
    progress: bool,
) -> tuple[list[dict], list[str], str | None]:
    from simmerge.multiway.search import plan_merge

    tasks = scan_tasks(catalog, settings)
    if settings.plans == 0:
        return [], tasks, "multi-way planning switched off (plans=0)"
    if len(tasks) < 2:
        return [], tasks, f"the catalog's experts cover {len(tasks)} task(s); nothing to combine"
    relevant = [e for e in catalog.experts if set(e.tasks) & set(tasks)]
    if len(relevant) < 2:
        return [], tasks, f"only {len(relevant)} expert(s) have the target tasks"
    planned = plan_merge(
        catalog,
        tasks,
        max_models=settings.max_models,
        beam=settings.beam,
        mode=settings.mode,
        top=settings.plans,
        predictor=step_predictor,
        options=options,
        profiles=profiles,
        progress=progress,
        plan_model=plan_model if plan_model is not None else False,
    )
    return [p.to_dict() for p in planned], tasks, None
