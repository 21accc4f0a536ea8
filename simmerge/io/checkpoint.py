"""Open Hugging Face checkpoint folders lazily: names, shapes and dtypes now, tensors on demand.

Supported layouts: ``config.json`` plus ``model.safetensors``, or a sharded
``model.safetensors.index.json`` with its shards. Pickle weights (``pytorch_model.bin``) can run
arbitrary code when loaded and are refused unless ``allow_pickle=True``; models whose config asks
for custom code (``auto_map``) are refused unless ``allow_remote_code=True``.

Fingerprints
------------
A checkpoint's :attr:`Checkpoint.fingerprint` keys every cache (signatures, sketches). Hashing
whole multi-GB files would cost as much as the work it caches, so the fingerprint hashes, per
weights file: its name, size, inode, modification and status-change times (ns), its full
safetensors header (every tensor's name, dtype, shape and offsets) and 64 KiB sampled from 16
evenly spaced places in its data region; plus ``config.json``. Any write to a file changes its
ctime, which user space cannot set back (unlike the mtime), so changed weights always change the
fingerprint. The price is that a byte-identical copy gets a new fingerprint: a cache miss, never
a wrong hit. For an exact, location-independent content hash use
:meth:`Checkpoint.content_hash` (reads everything).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from simmerge.errors import (
    CheckpointError,
    InputNotFoundError,
    MissingShardError,
    NonFiniteWeightsError,
    PickleRefusedError,
    RemoteCodeRefusedError,
)
from simmerge.io.lora import Adapter, is_adapter, named_base, read_adapter, split_plus
from simmerge.io.safetensors_format import DTYPE_CODES, TensorInfo, read_header, read_tensor

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_SAMPLES_PER_FILE = 16
_SAMPLE_BYTES = 4096


@dataclass(frozen=True)
class Checkpoint:
    """A lazily read checkpoint folder. Tensors are read one at a time with :meth:`get`."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    files: tuple[Path, ...]
    _preloaded: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    # --- metadata ----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(
                f"Checkpoint {str(self.path)!r} has no tensor {name!r}.",
                "merge only checkpoints of the same architecture as the base.",
            ) from None

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def support_dir(self) -> Path:
        """Where its tokenizer and generation files are (an adapter may borrow its base's)."""
        return self.path

    @property
    def largest_tensor_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors.values()), default=0)

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(self.config, sort_keys=True).encode())
        for file in sorted(self.files):
            st = file.stat()
            # ctime cannot be set from user space, so restoring an mtime (cp -p, rsync -t,
            # os.utime) after editing a weight still changes the fingerprint.
            h.update(f"{file.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}".encode())
            h.update(f"|{st.st_ino}".encode())
            if file.suffix == ".safetensors":
                header = read_header(file)
                h.update(header.header_bytes)
                data_start = 8 + len(header.header_bytes)
                span = max(header.file_size - data_start - _SAMPLE_BYTES, 0)
                with open(file, "rb") as f:
                    for i in range(_SAMPLES_PER_FILE):
                        f.seek(data_start + span * i // max(_SAMPLES_PER_FILE - 1, 1))
                        h.update(f.read(_SAMPLE_BYTES))
        return h.hexdigest()

    def content_hash(self) -> str:
        """Exact hash of config and every weights file (reads all bytes)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(self.config, sort_keys=True).encode())
        for file in sorted(self.files):
            h.update(file.name.encode())
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()

    # --- tensors -----------------------------------------------------------------------------

    def get(
        self,
        name: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        check_finite: bool = False,
    ) -> torch.Tensor:
        """Read one tensor (a fresh tensor the caller owns), optionally cast and moved."""
        t = self._read(name)
        if dtype is not None and t.dtype != dtype:
            t = t.to(device=device, dtype=dtype)
        elif str(device) != "cpu":
            t = t.to(device)
        if check_finite and t.is_floating_point() and not is_finite(t):
            raise NonFiniteWeightsError(
                f"Tensor {name!r} of checkpoint {str(self.path)!r} contains NaN or Inf values.",
                "this checkpoint is damaged (diverged training or a bad conversion); "
                "remove it from the catalog or repair it.",
            )
        return t

    def _read(self, name: str) -> torch.Tensor:
        """The stored tensor, in its stored dtype, on the CPU."""
        info = self.info(name)
        if self._preloaded is not None:
            return self._preloaded[name].clone()
        return read_tensor(info)

    def iter_tensors(self, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.tensors:
            yield name, self.get(name, **kwargs)


@dataclass(frozen=True)
class LoraCheckpoint(Checkpoint):
    """``base`` with a LoRA adapter merged in on the fly (:mod:`simmerge.io.lora`): the base's
    tensor names, shapes and dtypes; each tensor is computed when it is read."""

    base: Checkpoint | None = field(default=None, repr=False)
    adapter: Adapter | None = field(default=None, repr=False)

    @property
    def support_dir(self) -> Path:
        if self.adapter is not None and self.adapter.has_tokenizer:
            return self.path
        return self.base.path if self.base is not None else self.path

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(self.base.fingerprint.encode() if self.base is not None else b"")
        for file in sorted(self.adapter.files if self.adapter else ()):
            st = file.stat()
            h.update(f"{file.name}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}".encode())
            if file.suffix == ".safetensors":
                h.update(read_header(file).header_bytes)
        return h.hexdigest()

    def content_hash(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(self.base.content_hash().encode() if self.base is not None else b"")
        for file in sorted(self.adapter.files if self.adapter else ()):
            h.update(file.name.encode())
            h.update(file.read_bytes())
        return h.hexdigest()

    def _read(self, name: str) -> torch.Tensor:
        if self.base is None or self.adapter is None:
            raise CheckpointError(f"{str(self.path)!r} has no base.", "open it with open_lora.")
        return self.adapter.apply(name, self.base.get(name), self.info(name).torch_dtype)


def open_lora(
    adapter: str | Path, base: Checkpoint | str | Path | None = None, **flags: Any
) -> LoraCheckpoint:
    """A PEFT LoRA folder over ``base`` (default: the local folder its config names)."""
    folder = Path(adapter).expanduser()
    if base is None:
        base = named_base(folder)
    if not isinstance(base, Checkpoint):
        base = open_checkpoint(base, **flags)
    spec = read_adapter(folder, base.tensors, base.path)
    return LoraCheckpoint(folder, base.config, base.tensors, base.files, base=base, adapter=spec)


def is_finite(t: torch.Tensor) -> bool:
    """True if no entry is NaN or +-Inf. A sum is NaN/Inf whenever an entry is, and costs one
    read with no temporary; only if the sum is not finite (or overflowed) is the exact,
    mask-allocating check run."""
    if t.numel() == 0 or math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _load_config(folder: Path, allow_remote_code: bool) -> dict[str, Any]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"Checkpoint folder {str(folder)!r} has no config.json.",
            "point at a Hugging Face model folder (made with save_pretrained).",
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{str(cfg_path)!r} is not valid JSON ({exc}).", "repair or regenerate config.json."
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{str(cfg_path)!r} must hold a JSON object.",
            "restore the model's config.json (it is a JSON object in every HF model).",
        )
    if config.get("auto_map") and not allow_remote_code:
        raise RemoteCodeRefusedError(
            f"Model {str(folder)!r} needs custom code (config.json has auto_map); simmerge does "
            "not run code shipped with a checkpoint by default.",
            "review the code, then pass allow_remote_code=True (--trust-remote-code).",
        )
    return config


def _open_sharded(folder: Path) -> tuple[dict[str, TensorInfo], tuple[Path, ...]]:
    index_path = folder / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise TypeError("weight_map must map tensor names to file names")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{str(index_path)!r} is not a valid sharded index ({exc}).",
            "regenerate the checkpoint with save_pretrained.",
        ) from None
    tensors: dict[str, TensorInfo] = {}
    shard_names = sorted(set(weight_map.values()))
    files = []
    for shard in shard_names:
        # Compare names, not resolved paths: the HF hub cache stores shards as symlinks.
        if Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(
                f"{str(index_path)!r} names a shard outside the folder: {shard!r}.",
                "shard names in weight_map must be plain file names.",
            )
        shard_path = folder / shard
        if not shard_path.is_file():
            raise MissingShardError(
                f"{str(index_path)!r} names shard {shard!r}, missing from {str(folder)!r}.",
                "copy the missing shard (an interrupted download?) or re-save the checkpoint.",
            )
        files.append(shard_path)
        header = read_header(shard_path)
        for name, info in header.tensors.items():
            if weight_map.get(name) == shard:
                tensors[name] = info
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(
            f"{str(index_path)!r} maps {len(missing)} tensor(s) to shards that do not hold them "
            f"(first: {missing[0]!r}).",
            "the index and shards are from different saves; re-save the checkpoint.",
        )
    return tensors, tuple(files)


def _open_pickle(folder: Path) -> tuple[dict[str, torch.Tensor], tuple[Path, ...]]:
    files = sorted(folder.glob("pytorch_model*.bin"))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            part = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise CheckpointError(
                f"Could not load pickle weights {str(file)!r}: {exc}.",
                "convert the checkpoint to safetensors, or re-download it.",
            ) from None
        state.update(part)
    return state, tuple(files)


def open_checkpoint(
    path: str | Path, *, allow_pickle: bool = False, allow_remote_code: bool = False
) -> Checkpoint:
    """Open a checkpoint folder without reading any weights (except opted-in pickle files).

    A PEFT LoRA folder, or mergekit's ``BASE+ADAPTER``, opens as the base with the adapter
    merged in tensor by tensor (:mod:`simmerge.io.lora`)."""
    flags = {"allow_pickle": allow_pickle, "allow_remote_code": allow_remote_code}
    plus = split_plus(str(path))
    if plus is not None:
        return open_lora(plus[1], plus[0], **flags)
    folder = Path(path).expanduser()
    if is_adapter(folder):
        return open_lora(folder, **flags)
    if not folder.is_dir():
        raise InputNotFoundError(
            f"Checkpoint folder {str(folder)!r} does not exist.",
            "check the path (relative paths in a catalog are relative to the catalog file).",
        )
    config = _load_config(folder, allow_remote_code)
    if (folder / INDEX_FILE).is_file():
        tensors, files = _open_sharded(folder)
        return Checkpoint(folder, config, tensors, files)
    if (folder / SINGLE_FILE).is_file():
        header = read_header(folder / SINGLE_FILE)
        return Checkpoint(folder, config, header.tensors, (folder / SINGLE_FILE,))
    if any((folder / name).is_file() for name in PICKLE_FILES):
        if not allow_pickle:
            raise PickleRefusedError(
                f"Checkpoint {str(folder)!r} only has pickle weights (pytorch_model.bin); "
                "unpickling can execute arbitrary code.",
                "convert it to safetensors, or pass allow_pickle=True (--allow-pickle) if you "
                "trust its source.",
            )
        state, files = _open_pickle(folder)
        infos = {
            name: TensorInfo(name, files[0], DTYPE_CODES[t.dtype], tuple(t.shape), 0, t.nbytes)
            for name, t in state.items()
        }
        return Checkpoint(folder, config, infos, files, _preloaded=state)
    raise CheckpointError(
        f"Checkpoint folder {str(folder)!r} has no weights ({SINGLE_FILE} or {INDEX_FILE}).",
        "save the model with save_pretrained(..., safe_serialization=True).",
    )
