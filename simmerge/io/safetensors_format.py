"""Reading and streaming-writing the safetensors format with bounded memory.

Why not only the ``safetensors`` package? Two needs it does not meet:

* **Streaming writes.** ``safetensors.torch.save_file`` needs every tensor of a shard in memory at
  once. The merge engine computes one tensor at a time, so :class:`SafetensorsStreamWriter` writes
  the header first (shapes and dtypes are known in advance) and then each tensor's bytes as they
  are produced: peak memory is the tensor being written, not the shard.
* **Reads that do not grow RSS.** ``safe_open`` memory-maps the whole file; pages touched while
  reading stay mapped and count against the process until the handle closes. Reading each tensor
  with ``readinto`` into its own buffer keeps memory at "the tensors we hold", which is what the
  engine's memory bound is about. Headers are parsed and checked strictly, so a corrupt or
  truncated file is a :class:`~simmerge.errors.CorruptCheckpointError` naming the file, never a
  crash deep in torch.

The format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON ``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``,
then the data region; offsets are relative to the data region, contiguous, little-endian data.
The package itself is used in the tests as the reference reader and writer.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from simmerge.errors import CorruptCheckpointError, InputNotFoundError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference implementation's limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte range, dtype code and shape."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: bytes
    file_size: int


def _corrupt(path: Path, problem: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{str(path)!r} is not a valid safetensors file: {problem}.",
        "re-download or re-save the checkpoint (save_pretrained(..., safe_serialization=True)).",
    )


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header; raises CorruptCheckpointError on any defect."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"only {size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _corrupt(path, f"header length {n} does not fit a file of {size} bytes")
            raw = f.read(n)
    except FileNotFoundError:
        raise InputNotFoundError(
            f"Weights file {str(path)!r} does not exist.",
            "check the path, or re-download the checkpoint if a file is missing.",
        ) from None
    except IsADirectoryError:
        raise _corrupt(path, "it is a directory") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _corrupt(path, f"header is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    data_start = 8 + n
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _tensor_info(path, name, entry, data_start)
    spans = sorted((t.start - data_start, t.end - data_start, t.name) for t in tensors.values())
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise _corrupt(path, f"tensor {name!r} starts at {begin}, expected {cursor}")
        cursor = end
    if cursor != data_len:
        state = "truncated" if cursor > data_len else "followed by extra bytes"
        raise _corrupt(path, f"data region is {data_len} bytes but tensors need {cursor} ({state})")
    return SafetensorsHeader(path, tensors, dict(metadata), bytes(raw), size)


def _tensor_info(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _corrupt(path, f"entry {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise _corrupt(path, f"tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    itemsize = DTYPES[dtype].itemsize
    if (offsets[1] - offsets[0]) != math.prod(shape) * itemsize:
        raise _corrupt(path, f"tensor {name!r}: byte range does not match shape {shape} x {dtype}")
    return TensorInfo(
        name, path, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1]
    )


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one tensor into a fresh CPU buffer (no memory map)."""
    raw = torch.empty(info.nbytes, dtype=torch.uint8)
    if info.nbytes:
        try:
            with open(info.file, "rb") as f:
                f.seek(info.start)
                got = f.readinto(raw.numpy())
        except OSError as exc:
            raise _corrupt(info.file, f"reading {info.name!r} failed ({exc})") from None
        if got != info.nbytes:
            raise _corrupt(info.file, f"tensor {info.name!r} is truncated")
    return raw.view(info.torch_dtype).reshape(info.shape)


# smaller tensors are written inline even in background mode (measured on SmolLM2-135M, whose
# tensors are mostly under 4 MB: background writes of them were no faster)
BACKGROUND_MIN_BYTES = 1 << 22
# write-behind: after this many bytes a helper thread starts pushing them to disk (fdatasync)
SYNC_EVERY_BYTES = 64 << 20


class SafetensorsStreamWriter:
    """Write a safetensors file tensor by tensor, in a fixed order known up front.

    With ``background`` the bytes of each tensor are written by one helper thread while the
    caller computes the next tensor: writing to disk blocks in the kernel (dirty-page
    throttling on a slow disk), and the merge engine would otherwise leave the CPU idle for that
    time. At most one tensor is in flight, so memory grows by one output tensor at most; the
    caller must not modify a tensor after handing it over. A failed background write is raised
    by the next :meth:`write` or by :meth:`close`. Tensors under :data:`BACKGROUND_MIN_BYTES`
    are written inline: for them the thread handoff costs more than the overlap saves.

    :meth:`close` makes the file durable (fsync) before the caller renames it into place. So
    that this is not one long wait at the end, every :data:`SYNC_EVERY_BYTES` a second helper
    thread flushes what the kernel holds so far (``fdatasync``) while the caller goes on
    computing and reading; the final fsync only has the tail left.
    """

    def __init__(
        self,
        path: str | Path,
        layout: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: Mapping[str, str] | None = None,
        *,
        background: bool = False,
    ) -> None:
        self.path = Path(path)
        self._order: list[tuple[str, torch.dtype, tuple[int, ...]]] = list(layout)
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for name, dtype, shape in self._order:
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {
                "dtype": DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # align the data region to 8 bytes
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0
        self._pool = ThreadPoolExecutor(max_workers=1) if background else None
        self._pending: Future | None = None
        self._syncer: ThreadPoolExecutor | None = None
        self._sync: Future | None = None
        self._unsynced = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, dtype, shape = self._order[self._next]
        if name != expected_name or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(
                f"writer expected {expected_name} {dtype} {shape}, got {name} {tensor.dtype} "
                f"{tuple(tensor.shape)}"
            )
        data = tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8)
        self._next += 1
        self._wait()  # one tensor in flight; re-raises a failed earlier write
        if self._pool is None or data.numel() < BACKGROUND_MIN_BYTES:
            self._file.write(memoryview(data.numpy()))
        else:
            self._pending = self._pool.submit(self._file.write, memoryview(data.numpy()))
        self._unsynced += data.numel()
        if self._unsynced >= SYNC_EVERY_BYTES and (self._sync is None or self._sync.done()):
            self._start_sync()

    def _start_sync(self) -> None:
        """Push what the kernel holds to disk in the background (the caller never waits)."""
        if self._sync is not None:
            self._sync.result()  # re-raise a failed earlier sync
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simmerge-sync")
        self._unsynced = 0
        self._sync = self._syncer.submit(os.fdatasync, self._file.fileno())

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _release(self) -> None:
        """Stop the helper thread (after its current write) and close the file."""
        for pool in (self._pool, self._syncer):
            if pool is not None:
                pool.shutdown(wait=True)
        self._file.close()

    def close(self) -> None:
        try:
            self._wait()
            if self._next != len(self._order):
                raise ValueError(f"{self.path}: only {self._next} of {len(self._order)} written")
            if self._sync is not None:
                self._sync.result()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._release()

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._release()
