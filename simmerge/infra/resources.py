"""Locate the project's data folders (``probes/``, ``features/``, ``models/``).

In a source checkout (or an editable install) they are the top-level folders beside the package.
In an installed wheel they are packed under ``simmerge/_data/`` (see ``pyproject.toml``,
``force-include``). Callers use :func:`data_dir` and never care which case they are in.
"""

from __future__ import annotations

from pathlib import Path

from simmerge.errors import InputNotFoundError

DATA_FOLDERS = ("probes", "features", "models")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # simmerge/


def data_dir(name: str) -> Path:
    """Return the folder holding the project's ``name`` data (one of :data:`DATA_FOLDERS`)."""
    if name not in DATA_FOLDERS:
        raise ValueError(f"unknown data folder {name!r}; expected one of {DATA_FOLDERS}")
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise InputNotFoundError(
        f"simmerge's data folder {name!r} was not found next to the package ({_PACKAGE_DIR}).",
        "reinstall simmerge from a wheel or run from a full source checkout.",
    )
