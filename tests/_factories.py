"""What several test folders share, in one module: tiny checkpoints (simmerge.zoo.micro), a micro
zoo recipe and a small candidate grid, the scripts loader and the checks of a scan folder.
Fixtures live in conftest.py; tests import plain helpers from here, never from each other."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from simmerge.merging.grid import OperatorConfig
from simmerge.scanning.layout import (
    FEATURES_FILE,
    RANKING_FILE,
    REPORT_FILE,
    json_key,
    load_ranking,
    parquet_key,
)
from simmerge.zoo.build import ExpertSpec, ZooRecipe
from simmerge.zoo.micro import VOCAB, save_model, tiny_config, tiny_tokenizer
from simmerge.zoo.train import ModelShape

__all__ = [
    "MICRO3",
    "SMOLLM2_GGUF",
    "SMALL_GRID",
    "VOCAB",
    "assert_same_outputs",
    "check_outputs_whole",
    "load_script",
    "mtimes",
    "save_model",
    "tiny_config",
    "tiny_tokenizer",
]

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# the real pretrained base scripts/setup.sh fetches (SIMMERGE_BASES: another folder)
SMOLLM2_GGUF = (
    Path(os.environ.get("SIMMERGE_BASES", Path(__file__).resolve().parents[1] / "runs" / "bases"))
    / "SmolLM2-135M-Instruct.Q4_1.gguf"
)


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module: scripts are not part of the package, but their
    functions are tested like the package's."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a script's dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


MICRO3 = ZooRecipe(
    name="micro-zoo-3",
    tasks=("reverse", "sort"),
    shape=ModelShape(hidden=32, intermediate=64, layers=2, heads=2),
    base_steps=6,
    batch_size=8,
    expert_batch_size=8,
    eval_size=4,
    probe_size=3,
    experts=(
        ExpertSpec("reverse_a", ("reverse",), 1, 3, 1e-3),
        ExpertSpec("sort_a", ("sort",), 2, 3, 1e-3),
        ExpertSpec("both", ("reverse", "sort"), 3, 3, 1e-3),
    ),
)
SMALL_GRID = tuple(
    OperatorConfig.from_id(i)
    for i in ("linear", "task_arithmetic[lambda=0.5]", "slerp[t=0.3]", "slerp[t=0.7]")
)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def check_outputs_whole(out: Path) -> None:
    """Every file under the real names is complete; only .tmp-* siblings may be partial."""
    for path in out.iterdir():
        if ".tmp-" in path.name:
            continue
        if path.name == FEATURES_FILE:
            assert parquet_key(path) is not None
            pd.read_parquet(path)
        elif path.name == RANKING_FILE:
            assert json_key(path) is not None
        elif path.name == REPORT_FILE:
            text = path.read_text()
            assert text.rstrip().endswith("</html>") and "simmerge-scan-key" in text
        elif path.suffix == ".png":
            assert path.read_bytes()[-8:] == b"IEND\xaeB`\x82"  # a PNG ends with IEND
        else:
            raise AssertionError(f"unexpected file {path.name}")


def assert_same_outputs(out: Path, reference: Path) -> None:
    got, want = pd.read_parquet(out / FEATURES_FILE), pd.read_parquet(reference / FEATURES_FILE)
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    assert (got[["a", "b", "task"]].values == want[["a", "b", "task"]].values).all()
    num = got.columns[3:]
    np.testing.assert_allclose(got[num].to_numpy(), want[num].to_numpy(), rtol=1e-4, atol=1e-5)
    r_got, r_want = load_ranking(out), load_ranking(reference)
    assert [p["best"]["candidate"] for p in r_got["pairs"]] == [
        p["best"]["candidate"] for p in r_want["pairs"]
    ]
    assert [p["plan"] for p in r_got["plans"]] == [p["plan"] for p in r_want["plans"]]
