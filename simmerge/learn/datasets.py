"""Training tables: pair features joined with measured outcomes.

Two tables, kept apart because features repeat across every candidate of a pair:

* ``pair_features``: one row per (catalog, ordered pair a, b, probe set) with the similarity
  features (``task`` empty for the general probe set) -- :mod:`simmerge.signals.profiles`;
* ``outcomes``: one row per (catalog, a, b, candidate, task) from the
  :class:`~simmerge.outcomes.store.OutcomeStore`, plus ``task_of_a`` / ``task_of_b``.

:func:`training_frame` joins them into the predictor's design matrix
(:func:`~simmerge.learn.predictor.predictor_columns`) with ``target`` = normalized score. The
shipped tables live in ``features/<name>/`` (see ``features/DATASHEET.md``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from simmerge.catalog import Catalog
from simmerge.errors import ConfigError, InputNotFoundError
from simmerge.infra.files import atomic_output_path
from simmerge.infra.resources import data_dir
from simmerge.learn.predictor import TASK_PREFIX, candidate_features, predictor_columns
from simmerge.merging.grid import OperatorConfig
from simmerge.outcomes.store import OutcomeStore
from simmerge.signals.profiles import FeatureOptions, build_profiles, feature_rows
from simmerge.signals.similarity import FEATURE_COLUMNS, FUNCTIONAL_COLUMNS

PAIR_KEYS = ("catalog", "a", "b")
PAIR_FEATURES_FILE = "pair_features.parquet"
OUTCOMES_FILE = "outcomes.parquet"


def feature_frame(
    catalog: Catalog, options: FeatureOptions | None = None, *, progress: bool = True
) -> pd.DataFrame:
    """Pair features of every ordered expert pair x probe set of ``catalog``."""
    rows = feature_rows(build_profiles(catalog, options, progress=progress))
    return pd.DataFrame(
        [
            {"catalog": catalog.name, "a": r.a, "b": r.b, "task": r.task or "", **r.as_dict()}
            for r in rows
        ]
    )


def outcome_frame(store: OutcomeStore, catalog: Catalog) -> pd.DataFrame:
    """The store's outcome rows of ``catalog`` with whose task each row's task is."""
    records = store.to_records(catalog.name)
    if not records:
        raise ConfigError(
            f"The outcome store has no rows for catalog {catalog.name!r}.",
            "run `simmerge collect CATALOG --store STORE` first.",
        )
    df = pd.DataFrame(records).rename(columns={"model_a": "a", "model_b": "b"})
    tasks = {e.name: set(e.tasks) for e in catalog.experts}
    df["task_of_a"] = [t in tasks.get(a, ()) for a, t in zip(df["a"], df["task"], strict=True)]
    df["task_of_b"] = [t in tasks.get(b, ()) for b, t in zip(df["b"], df["task"], strict=True)]
    return df


def training_frame(features: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Design matrix + keys + ``target``: one row per outcome whose pair has features."""
    general = features[features["task"] == ""].set_index(list(PAIR_KEYS))[list(FEATURE_COLUMNS)]
    per_task = features[features["task"] != ""].set_index([*PAIR_KEYS, "task"])[
        list(FUNCTIONAL_COLUMNS)
    ]
    per_task = per_task.add_prefix(TASK_PREFIX)
    df = outcomes.join(general, on=list(PAIR_KEYS), how="inner")
    df = df.join(per_task, on=[*PAIR_KEYS, "task"], how="left")
    if df.empty:
        raise ConfigError(
            "No outcome row has pair features (catalog or model names differ between tables).",
            "compute features and outcomes for the same catalog.",
        )
    cand = {c: candidate_features(OperatorConfig.from_id(c)) for c in df["candidate"].unique()}
    cand_df = pd.DataFrame.from_dict(cand, orient="index")
    df = df.join(cand_df, on="candidate")
    df["task_of_a"] = df["task_of_a"].astype(float)
    df["task_of_b"] = df["task_of_b"].astype(float)
    df["target"] = df["normalized"].astype(float)
    for c in predictor_columns():
        if c not in df.columns:
            df[c] = math.nan
    return df.reset_index(drop=True)


def extra_training_frame(datasets: str) -> pd.DataFrame | None:
    """The training rows of ``datasets`` (comma-separated shipped names or folders; '' for
    none), concatenated: the training-only rows of other catalogs that cross-validation adds to
    every fold (:func:`simmerge.learn.splits.with_extra`). None when there are none."""
    frames = [training_frame(*load_training_tables(n)) for n in datasets.split(",") if n]
    return pd.concat(frames, ignore_index=True) if frames else None


def pair_objective(frame: pd.DataFrame, column: str) -> pd.Series:
    """The quantity a user ranks candidates of a pair by: the mean of ``column`` (e.g. the
    target or a prediction) over the pair's tasks, per (catalog, a, b, candidate)."""
    return frame.groupby([*PAIR_KEYS, "candidate"], sort=True)[column].mean()


def write_table(df: pd.DataFrame, path: Path) -> None:
    """One zstd parquet table, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, compression="zstd")


def write_training_tables(features: pd.DataFrame, outcomes: pd.DataFrame, folder: Path) -> None:
    write_table(features, folder / PAIR_FEATURES_FILE)
    write_table(outcomes, folder / OUTCOMES_FILE)


REMEASURED_FOLDER = "remeasured"
SECOND_MEASUREMENT_FILE = "second.parquet"


def load_remeasured(
    name_or_folder: str | Path = "zoo-large",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    """(features, outcomes, second outcomes) of a dataset's remeasured held-out-model test
    pairs (``<dataset>/remeasured``, written by ``scripts/remeasure_outcomes.py``), or None.

    The first two are tables like the dataset's own, for the test pairs of a zoo rebuilt from
    the dataset's recipe; the third scores the same merges on a second, independent eval set."""
    folder = dataset_folder(name_or_folder) / REMEASURED_FOLDER
    if not (folder / SECOND_MEASUREMENT_FILE).is_file():
        return None
    features, outcomes = load_training_tables(folder)
    return features, outcomes, pd.read_parquet(folder / SECOND_MEASUREMENT_FILE)


def dataset_folder(name_or_folder: str | Path) -> Path:
    """The folder of a dataset: ``name_or_folder`` itself when it holds the tables, else the
    shipped ``features/<name>``."""
    folder = Path(name_or_folder)
    if (folder / OUTCOMES_FILE).is_file():
        return folder
    return data_dir("features") / str(name_or_folder)


def load_training_tables(
    name_or_folder: str | Path = "zoo-large",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, outcomes) of a shipped dataset (``features/<name>``) or a folder."""
    folder = dataset_folder(name_or_folder)
    missing = [f for f in (PAIR_FEATURES_FILE, OUTCOMES_FILE) if not (folder / f).is_file()]
    if missing:
        raise InputNotFoundError(
            f"Training data {str(name_or_folder)!r}: {', '.join(missing)} not found.",
            "pass a folder written by scripts/build_training_data.py or a shipped name "
            "(a folder under features/).",
        )
    return pd.read_parquet(folder / PAIR_FEATURES_FILE), pd.read_parquet(folder / OUTCOMES_FILE)


def shipped_datasets() -> list[str]:
    root = data_dir("features")
    return sorted(p.name for p in root.iterdir() if (p / OUTCOMES_FILE).is_file())


def describe(features: pd.DataFrame | None, outcomes: pd.DataFrame) -> dict[str, Any]:
    """Counts for a dataset's meta.json (no feature count for an outcomes-only table)."""
    counts = {
        "catalogs": sorted(outcomes["catalog"].unique().tolist()),
        "experts": int(len(set(outcomes["a"]) | set(outcomes["b"]))),
        "ordered_pairs": int(outcomes.groupby(["catalog", "a", "b"]).ngroups),
        "candidates": int(outcomes["candidate"].nunique()),
        "tasks": sorted(outcomes["task"].unique().tolist()),
        "outcome_rows": len(outcomes),
    }
    if features is not None:
        counts["pair_feature_rows"] = len(features)
    return counts
