"""A small content-keyed cache of tensors (signatures, sketches) as safetensors files.

Entries are keyed by a hash of everything that determines them (model fingerprint, probe hash,
config, format version), so a stale entry is never looked up. Each file also records that key
material in its metadata, and a file whose metadata disagrees (a hash collision, a hand-copied
file, another simmerge's format) raises :class:`CacheError` instead of being trusted. Files are
written to a temporary sibling and renamed, so an interrupted run never leaves a half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from simmerge.errors import CacheError
from simmerge.infra.files import atomic_write_bytes, ensure_writable_dir, remove_stale_temps

_META_KEY = "simmerge"
_CLEANED: set[Path] = set()  # cache folders whose killed writers' temporaries were removed


def default_cache_dir() -> Path:
    """``$SIMMERGE_CACHE`` if set, else ``~/.cache/simmerge``."""
    env = os.environ.get("SIMMERGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "simmerge"


def cache_key(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


class TensorCache:
    """``kind``-scoped folder of ``<key>.safetensors`` entries under a cache root."""

    def __init__(self, root: str | Path | None, kind: str) -> None:
        self.folder = Path(root if root is not None else default_cache_dir()) / kind

    def path(self, material: dict[str, Any]) -> Path:
        return self.folder / f"{cache_key(material)}.safetensors"

    def load(self, material: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The tensors stored for ``material``, or None on a miss."""
        path = self.path(material)
        if not path.is_file():
            return None
        fix = f"delete {str(path)!r} (or the whole cache folder) and run again."
        try:
            # one open: the metadata is checked before any tensor of a foreign entry is read
            with safe_open(str(path), framework="pt") as f:
                meta = (f.metadata() or {}).get(_META_KEY)
                if meta is None or json.loads(meta) != json.loads(
                    json.dumps(material, sort_keys=True)
                ):
                    raise CacheError(
                        f"Cache entry {str(path)!r} was written for other inputs or by another "
                        "simmerge version.",
                        fix,
                    )
                return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise CacheError(f"Cache entry {str(path)!r} is unreadable: {exc}", fix) from exc

    def store(self, material: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
        ensure_writable_dir(self.folder, "cache")
        if self.folder not in _CLEANED:  # once per folder and process, not per entry written
            remove_stale_temps(self.folder)
            _CLEANED.add(self.folder)
        path = self.path(material)
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        blob = save(data, metadata={_META_KEY: json.dumps(material, sort_keys=True)})
        atomic_write_bytes(path, blob, clean=False)
        return path
