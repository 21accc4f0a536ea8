"""Probe sets: the unlabeled prompts every model is run on once to compute its signature.

A probe set is only useful if every model of a catalog sees exactly the same prompts, so a
:class:`ProbeSet` carries a content hash (of ids and texts, in order) that keys the signature
cache. Sets ship as data in the top-level ``probes/`` folder (``ProbeSet.load("general")``);
any local JSONL or parquet file with a text column works too (``ProbeSet.load(path,
column=...)``), read through ``datasets`` like the eval data, never from the hub.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from simmerge.errors import InputNotFoundError, ProbeSetError
from simmerge.infra.files import TABLE_FORMATS, read_local_table
from simmerge.infra.resources import data_dir

DEFAULT_PROBE_SET = "general"


@dataclass(frozen=True)
class ProbeSet:
    """An ordered, named tuple of prompts with ids; ``hash`` identifies the content."""

    name: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.texts:
            raise ProbeSetError(
                f"Probe set {self.name!r} is empty.", "give it at least one non-empty prompt."
            )
        if len(self.ids) != len(self.texts):
            raise ProbeSetError(
                f"Probe set {self.name!r} has {len(self.ids)} ids for {len(self.texts)} prompts.",
                "give every prompt one id.",
            )
        if len(set(self.ids)) != len(self.ids):
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise ProbeSetError(
                f"Probe set {self.name!r} repeats the id {dup!r}.", "make every id unique."
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def hash(self) -> str:
        """Content hash of (id, text) pairs in order; the name does not enter it."""
        payload = json.dumps(list(zip(self.ids, self.texts, strict=True)), ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        column: str = "text",
        id_column: str | None = "id",
        name: str | None = None,
    ) -> ProbeSet:
        """Load a shipped set by name (``"general"``) or a local JSONL/parquet file.

        ``column`` names the prompt column; ``id_column`` the id column (row numbers are used
        when it is ``None`` or absent from the file).
        """
        path = _resolve(name_or_path)
        rows, _ = read_local_table(path, "Probe file", ProbeSetError)
        if not rows:
            raise ProbeSetError(f"Probe file {str(path)!r} has no rows.", "add prompts to it.")
        if column not in rows[0]:
            raise ProbeSetError(
                f"Probe file {str(path)!r} has no column {column!r} "
                f"(columns: {', '.join(sorted(rows[0]))}).",
                "pass column=<the prompt column> (CLI: --probe-column).",
            )
        texts = []
        for i, row in enumerate(rows):
            text = row.get(column)
            if not isinstance(text, str) or not text.strip():
                raise ProbeSetError(
                    f"Row {i} of probe file {str(path)!r} has no text in column {column!r}.",
                    "every probe needs a non-empty string prompt; remove or fix that row.",
                )
            texts.append(text)
        has_ids = id_column is not None and id_column in rows[0]
        ids = [str(r.get(id_column)) if has_ids else str(i) for i, r in enumerate(rows)]
        return cls(name or path.stem, tuple(ids), tuple(texts))


def shipped_probe_sets() -> list[str]:
    """Names of the probe sets in the project's ``probes/`` data folder."""
    return sorted(p.stem for p in data_dir("probes").glob("*.jsonl"))


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix.lower() in TABLE_FORMATS or path.exists():
        return path  # read_local_table reports a missing file or a bad suffix
    shipped = data_dir("probes") / f"{name_or_path}.jsonl"
    if not shipped.is_file():
        raise InputNotFoundError(
            f"No shipped probe set named {str(name_or_path)!r}.",
            f"use one of {', '.join(shipped_probe_sets())} or a path to a JSONL/parquet file.",
        )
    return shipped
