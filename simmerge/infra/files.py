"""Crash-safe writes: everything simmerge writes appears whole or not at all.

Files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on
POSIX within one file system); output folders are built in a hidden temporary sibling folder and
renamed when complete. A killed process leaves at most a ``.tmp-*`` sibling behind, never a
half-written result under the real name; the next write to the same name removes such
leftovers when the process that made them (same host, recorded in the name) is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from simmerge.errors import InputNotFoundError, OutputPathError, SimmergeError


def _process_space() -> str:
    """Who can judge whether a pid is alive: this host (full name and machine id) and this pid
    namespace (containers on one host with one name still differ), hashed to 12 hex digits."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/etc/machine-id").read_text().strip())
    except OSError:
        parts.append("-")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("-")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=6).hexdigest()


_SPACE = _process_space()
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<space>[0-9a-f]{12})-(?P<pid>\d+)-[0-9a-f]{8}$")


def _tmp_sibling(path: Path, *, clean: bool = True) -> Path:
    """A hidden sibling named after ``path``, this host/pid namespace and this process;
    ``clean`` first removes the siblings that killed processes left for the same name."""
    if clean:
        remove_stale_siblings(path)
    return path.parent / f".{path.name}.tmp-{_SPACE}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_siblings(path: Path) -> list[Path]:
    """Remove temporary siblings of ``path`` left by dead processes of this host and pid
    namespace (a live process's, or another machine's on shared storage, are left alone)."""
    return remove_stale_temps(path.parent, name=path.name)


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (of ``name`` only, if given) whose writer is a dead
    process of this host and pid namespace; returns what was removed."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP_RE.match(p.name)
        if not m or m["space"] != _SPACE or (name is not None and m["name"] != name):
            continue
        if not _alive(int(m["pid"])):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def ensure_writable_dir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create {what} folder {str(folder)!r}: {exc.strerror or exc}.",
            "choose a location you can write to.",
        ) from None
    if not os.access(folder, os.W_OK):
        raise OutputPathError(
            f"The {what} folder {str(folder)!r} is not writable.",
            "fix its permissions or choose another location.",
        )


@contextlib.contextmanager
def atomic_output_path(path: Path, *, clean: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is renamed to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. ``clean``
    first removes temporaries of ``path`` left by killed processes (a cache, which writes many
    entries into one folder, cleans the whole folder once instead: :func:`remove_stale_temps`).
    """
    path = Path(path)
    ensure_writable_dir(path.parent, "output")
    tmp = _tmp_sibling(path, clean=clean)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputPathError(
            f"Could not write {str(path)!r}: {exc.strerror or exc}.",
            "check free disk space and permissions.",
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, clean: bool = True) -> None:
    with atomic_output_path(path, clean=clean) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json_report(path: Path, report: object) -> Path:
    """A benchmark or evaluation report as indented, key-sorted JSON, written atomically (the
    scripts under ``scripts/`` all write their results this way)."""
    import json

    atomic_write_text(Path(path), json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return Path(path)


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out_dir`` in one rename.

    On any exception the temporary folder is removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputPathError(
            f"Output folder {str(out_dir)!r} already exists.",
            "choose a new folder or pass overwrite=True (--overwrite).",
        )
    ensure_writable_dir(out_dir.parent, "output")
    tmp = _tmp_sibling(out_dir)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            old = _tmp_sibling(out_dir, clean=False)  # cleaned for this name just above
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, SimmergeError):
            raise
        raise OutputPathError(
            f"Writing {str(out_dir)!r} failed: {exc.strerror or exc}.",
            "check free disk space and permissions; nothing was left under that name.",
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_local_table(
    path: Path, what: str, error: type[SimmergeError]
) -> tuple[list[dict], list[str]]:
    """Rows and column names of a local JSONL/parquet file, read with ``datasets`` (never the
    hub). ``what`` names the file's role in error messages ("Evaluation file", "Probe file")."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"{what} {str(path)!r} does not exist.",
            "pass the path of a local .jsonl or .parquet file.",
        )
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise error(
            f"{what} {str(path)!r} has an unsupported suffix {path.suffix!r}.",
            "save it as .jsonl (one JSON object per line) or .parquet.",
        )
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for unreadable files
        raise error(
            f"{what} {str(path)!r} could not be read as {fmt}: {exc}",
            "check that every line is a JSON object (JSONL) or the file is valid parquet.",
        ) from exc
    return list(ds), list(ds.column_names)


def read_yaml_file(path: Path, what: str, error: type[SimmergeError], hint: str) -> object:
    """The parsed YAML of ``path`` (a catalog, a plan, …): a missing file is an
    :class:`InputNotFoundError` (``hint`` says what to pass), bad YAML or text an ``error``."""
    import yaml

    if not path.is_file():
        raise InputNotFoundError(f"{what} {str(path)!r} does not exist.", hint)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(
            f"{what} {str(path)!r} is not valid YAML: {exc}.",
            "fix the YAML syntax at the position named.",
        ) from None
