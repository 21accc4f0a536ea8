"""GGUF checkpoints as catalog models: dequantized once into the cache as a safetensors folder.

A ``.gguf`` file (a llama.cpp checkpoint, often quantized) cannot be merged tensor by tensor
as it stands, so :func:`materialize_gguf` turns it into an ordinary Hugging Face folder --
``config.json``, float ``model.safetensors`` and the tokenizer, chat template included -- and
every later stage uses that folder like any other. transformers does the dequantization
(``from_pretrained(folder, gguf_file=...)``, which needs the ``gguf`` package: the
``simmerge[gguf]`` extra); a GGUF-loaded model refuses ``save_pretrained``, so the plain
architecture is built from its config without the quantization settings and given the
dequantized weights.

The folder is keyed by the file's sha256 and the versions of the two libraries that
dequantize it, so the same file is converted once, and a converted folder is never confused
with another file's or another dequantizer's. Files are checked before the (slow) conversion:
not a GGUF file, truncated, or of an architecture transformers cannot load are typed errors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from simmerge.errors import ConfigError, CorruptCheckpointError, GGUFArchitectureError
from simmerge.infra.cache import cache_key, default_cache_dir
from simmerge.infra.files import atomic_output_dir

GGUF_MAGIC = b"GGUF"
CACHE_FOLDER = "gguf"
FORMAT_VERSION = 1
DONE_FILE = "simmerge_gguf.json"  # written last: a folder without it is not finished


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` names a file with a ``.gguf`` suffix (what the catalog converts)."""
    p = Path(path)
    return p.suffix.lower() == ".gguf" and p.is_file()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError:
        raise ConfigError(
            "Reading a .gguf checkpoint needs the 'gguf' and 'accelerate' packages.",
            "install them with `pip install 'simmerge[gguf]'`.",
        ) from None
    return gguf


def gguf_architecture(path: Path) -> str:
    """The file's ``general.architecture``, after checking that the file is whole: every
    tensor's data lies inside it (a truncated download is the common failure)."""
    gguf = _gguf_module()
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CorruptCheckpointError(
            f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}).",
            "pass a llama.cpp .gguf file, or a Hugging Face model folder.",
        )
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path))
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:  # the reader raises many types for a cut or garbled file
        raise CorruptCheckpointError(
            f"GGUF file {str(path)!r} ({size} bytes) is truncated or corrupt: {exc}.",
            "download it again (simmerge zoo fetch-base checks the sha256) and retry.",
        ) from None
    if end > size:
        raise CorruptCheckpointError(
            f"GGUF file {str(path)!r} is truncated: its tensors need {end} bytes, it has {size}.",
            "download it again (simmerge zoo fetch-base checks the sha256) and retry.",
        )
    return arch


def _supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("transformers", "gguf")}


def materialize_gguf(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The safetensors folder of ``path`` (a ``.gguf`` file), converted on first use.

    ``cache_dir`` defaults to the cache root (``$SIMMERGE_CACHE``); the folder is
    ``<cache>/gguf/<key>``. The conversion holds the model twice in float32 for a moment
    (about 1.1 GB for a 135 M-parameter model)."""
    path = Path(path)
    arch = gguf_architecture(path)
    supported = _supported_architectures()
    if arch not in supported:
        raise GGUFArchitectureError(
            f"GGUF file {str(path)!r} holds a {arch!r} model, which transformers cannot load "
            f"from GGUF (it reads: {', '.join(supported)}).",
            "convert the model to a Hugging Face folder with its own tools, then list that "
            "folder in the catalog.",
        )
    material = {
        "format": FORMAT_VERSION,
        "sha256": file_sha256(path),
        "architecture": arch,
        "versions": _versions(),
    }
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / CACHE_FOLDER / cache_key(material)
    if (out / DONE_FILE).is_file():
        return out
    with atomic_output_dir(out, overwrite=True) as tmp:
        _convert(path, tmp)
        (tmp / DONE_FILE).write_text(_json(material | {"source": path.name}))
    return out


def _convert(path: Path, out: Path) -> None:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(path.parent), path.name
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    del loaded
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True) + "\n"
