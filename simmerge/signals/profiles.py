"""The catalog-wide feature table: every ordered expert pair x every probe set.

Cost is O(N) in the number of experts for everything that touches a model: one signature per
(expert, distinct probe file) and one sketch per expert, all cached. Only the cheap vector
operations of :func:`~simmerge.signals.similarity.pair_features` are O(N²).

Rows: for each ordered pair (a, b) of distinct experts, one row on the general probe set
(``task`` empty) and one per catalog task that has probes (SimMerge's x(a, b, t)). Tasks that
share a probe file share one signature per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations, permutations
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from simmerge.catalog import Catalog
from simmerge.infra.files import atomic_output_path
from simmerge.signals.probes import DEFAULT_PROBE_SET, ProbeSet
from simmerge.signals.signatures import SignatureConfig, compute_signatures
from simmerge.signals.similarity import (
    GENERAL,
    ModelProfile,
    PairFeatures,
    assemble_pair_features,
    functional_features_both,
    structural_features_both,
)
from simmerge.signals.sketch import SketchConfig, sketch_task_vector


@dataclass(frozen=True)
class FeatureOptions:
    """What the table is computed with (defaults match the shipped predictor)."""

    general_probes: str | Path | None = DEFAULT_PROBE_SET  # None: task probe sets only
    probe_column: str = "text"
    signature: SignatureConfig = SignatureConfig()
    sketch: SketchConfig = SketchConfig()
    device: str | None = None
    cache_dir: str | Path | None = None


def catalog_probe_sets(catalog: Catalog, options: FeatureOptions) -> dict[str, ProbeSet]:
    """Probe set per key: ``"general"`` and every task with a probes file."""
    sets: dict[str, ProbeSet] = {}
    if options.general_probes is not None:
        sets[GENERAL] = ProbeSet.load(options.general_probes, column=options.probe_column)
    by_file: dict[Path, ProbeSet] = {}
    for name, spec in catalog.tasks.items():
        if spec.probes is not None:
            if spec.probes not in by_file:
                by_file[spec.probes] = ProbeSet.load(spec.probes, column=options.probe_column)
            sets[name] = by_file[spec.probes]
    return sets


def build_profiles(
    catalog: Catalog,
    options: FeatureOptions | None = None,
    *,
    experts: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, ModelProfile]:
    """Signatures (one per expert and distinct probe set) and sketches, all cached; for every
    expert, or the ones named in ``experts``."""
    options = options or FeatureOptions()
    sets = catalog_probe_sets(catalog, options)
    base = catalog.checkpoint(catalog.base.name)
    chosen = [catalog.model(n) for n in experts] if experts else list(catalog.experts)
    return {
        expert.name: model_profile(
            expert.name, expert.path, catalog.checkpoint(expert.name), base, sets, options
        )
        for expert in tqdm(chosen, desc="profiles", disable=not progress)
    }


def model_profile(
    name: str,
    path: Path,
    checkpoint: Any,
    base: Any,
    sets: dict[str, ProbeSet],
    options: FeatureOptions,
) -> ModelProfile:
    """Signatures on every probe set and the task-vector sketch of one model folder (also a
    folder outside the catalog, such as an intermediate multi-way merge)."""
    distinct = list({p.hash: p for p in sets.values()}.values())
    computed = compute_signatures(
        path,
        distinct,
        config=options.signature,
        device=options.device,
        cache_dir=options.cache_dir,
        progress=False,
    )
    by_hash = {p.hash: sig for p, sig in zip(distinct, computed, strict=True)}
    sigs = {key: by_hash[probes.hash] for key, probes in sets.items()}
    sketch = sketch_task_vector(
        checkpoint,
        base,
        config=options.sketch,
        device=options.device or "cpu",
        cache_dir=options.cache_dir,
        progress=False,
    )
    return ModelProfile(name, sketch, sigs)


def feature_rows(profiles: dict[str, ModelProfile]) -> list[PairFeatures]:
    """Pair features for every ordered pair x every probe set the profiles share."""
    rows: dict[tuple[str, str], list[PairFeatures]] = {}
    for a, b in combinations(profiles.values(), 2):
        # structural features do not depend on the probe set; both orders at once
        st_ab, st_ba = structural_features_both(a.sketch, b.sketch)
        for key in sorted(set(a.signatures) & set(b.signatures)):
            fn_ab, fn_ba = functional_features_both(a.signatures[key], b.signatures[key])
            task = None if key == GENERAL else key
            rows.setdefault((a.name, b.name), []).append(
                assemble_pair_features(a, b, task, fn_ab, st_ab)
            )
            rows.setdefault((b.name, a.name), []).append(
                assemble_pair_features(b, a, task, fn_ba, st_ba)
            )
    return [r for a, b in permutations(profiles, 2) for r in rows.get((a, b), [])]


def write_feature_table(
    rows: list[PairFeatures], out: str | Path, *, metadata: dict[bytes, bytes] | None = None
) -> Path:
    """Write rows as parquet (columns ``a``, ``b``, ``task`` then the features), atomically;
    ``metadata`` is added to the file's schema metadata (a scan stores its resume key there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"a": r.a, "b": r.b, "task": r.task or "", **r.as_dict()} for r in rows]
    table = pa.Table.from_pylist(records)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    out = Path(out)
    with atomic_output_path(out) as tmp:
        pq.write_table(table, tmp)
    return out
