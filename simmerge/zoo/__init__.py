"""The embedded default catalog: tiny Llama models on synthetic character-level tasks.

Public entry: :func:`build_zoo` (and ``simmerge zoo build``). See
``build.py`` for the recipe and ``tasks.py`` for the tasks.
"""

from __future__ import annotations

from .build import RECIPES, SIZES, ZooRecipe, build_zoo
from .tasks import TASKS

__all__ = ["RECIPES", "SIZES", "TASKS", "ZooRecipe", "build_zoo"]
