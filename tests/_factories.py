"""Test fixtures: tiny real checkpoints (see simmerge.testing).

Import the fixtures into a test module with ``from _factories import ...``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from simmerge.testing import VOCAB, save_model, tiny_config, tiny_tokenizer

__all__ = ["VOCAB", "load_script", "save_model", "tiny_config", "tiny_tokenizer", "tiny_models"]

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module: scripts are not part of the package, but their
    functions are tested like the package's."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A base and three experts (fp32), plus a bf16 expert and a sharded expert."""
    root = tmp_path_factory.mktemp("tiny_models")
    base = save_model(root / "base", seed=0)
    out = {"base": base}
    for i, name in enumerate(["a", "b", "c"], start=1):
        out[name] = save_model(root / name, seed=i, base=base)
    out["bf16"] = save_model(root / "bf16", seed=7, base=base, dtype=torch.bfloat16)
    out["sharded"] = save_model(root / "sharded", seed=8, base=base, max_shard_size="20KB")
    return out
