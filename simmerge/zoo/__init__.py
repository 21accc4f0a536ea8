"""The embedded default catalog: tiny Llama models on synthetic character-level tasks.

Public entry: :func:`build_zoo` (and ``simmerge zoo build``). See
``build.py`` for the recipe and ``tasks.py`` for the tasks.
"""

from __future__ import annotations

from typing import Any

from .build import RECIPES, SIZES, ZooRecipe, build_zoo
from .tasks import TASKS

__all__ = ["RECIPES", "SIZES", "TASKS", "ZooRecipe", "build_zoo", "run_build_cli"]


def run_build_cli(args: Any) -> int:
    """Handler of ``simmerge zoo build`` (arguments declared in simmerge.cli)."""
    path = build_zoo(args.out, size=args.size, seed=args.seed, device=args.device)
    print(path / "catalog.yaml")
    return 0
