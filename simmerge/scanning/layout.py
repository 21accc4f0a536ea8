"""What a scan folder holds, and how its files are read back.

Below both the scan pipeline (which writes these files) and the report and export (which read
them), so neither has to import the other. Each file records the key of everything it was
computed from (:mod:`simmerge.scanning.pipeline`, "Resume"); the readers here return that key, or
None for a missing or unreadable file, so a stage can tell whether its output is current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simmerge.errors import ConfigError

SCAN_FORMAT = 1
FEATURES_FILE, RANKING_FILE, REPORT_FILE = "features.parquet", "ranking.json", "report.html"
KEY_META = b"simmerge_scan_key"  # where features.parquet keeps its key (schema metadata)


def parquet_key(path: Path) -> str | None:
    """The scan key stored in a features.parquet, or None (missing or unreadable file)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None
    value = meta.get(KEY_META)
    return value.decode() if value else None


def json_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def load_ranking(out_dir: str | Path) -> dict[str, Any]:
    """The ``ranking.json`` of a finished scan folder (typed error when there is none)."""
    path = Path(out_dir) / RANKING_FILE
    if Path(out_dir).suffix == ".json":
        path = Path(out_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"No scan ranking at {str(path)!r}.",
            "run `simmerge scan CATALOG --out DIR` first and pass that DIR.",
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Scan ranking {str(path)!r} is unreadable: {exc}.",
            "re-run `simmerge scan` into that folder; it rewrites the ranking.",
        ) from None
    if not isinstance(data, dict) or data.get("format") != SCAN_FORMAT:
        raise ConfigError(
            f"{str(path)!r} is not a scan ranking of format {SCAN_FORMAT}.",
            "re-run `simmerge scan` with this simmerge version.",
        )
    return data
