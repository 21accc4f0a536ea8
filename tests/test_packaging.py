"""The wheel carries the package data folders and installs into a clean virtual environment."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from simmerge.infra.resources import DATA_FOLDERS, data_dir

ROOT = Path(__file__).resolve().parents[1]


def test_data_folders_resolve_in_the_source_checkout():
    for name in DATA_FOLDERS:
        assert data_dir(name) == ROOT / name


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_with_package_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = next(tmp_path.glob("simmerge-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    probe = (
        "import json, simmerge; from simmerge.infra.resources import data_dir, DATA_FOLDERS;"
        "print(json.dumps({'pkg': simmerge.__file__,"
        " 'dirs': {n: str(data_dir(n)) for n in DATA_FOLDERS},"
        " 'files': {n: sorted(p.name for p in data_dir(n).iterdir()) for n in DATA_FOLDERS}}))"
    )
    out = subprocess.run([py, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import json

    info = json.loads(out.stdout)
    site = str(env_dir)
    assert info["pkg"].startswith(site)
    for name in DATA_FOLDERS:
        assert info["dirs"][name].startswith(site) and info["dirs"][name].endswith(f"_data/{name}")
        expected = sorted(p.name for p in (ROOT / name).iterdir())
        assert info["files"][name] == expected
    version = subprocess.run(
        [env_dir / "bin" / "simmerge", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and "simmerge" in version.stdout, version.stderr
