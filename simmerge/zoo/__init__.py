"""The embedded default catalog: tiny Llama models on synthetic character-level tasks.

Public entry: :func:`build_zoo` (and ``simmerge zoo build`` through :func:`add_cli`). See
``build.py`` for the recipe and ``tasks.py`` for the tasks.
"""

from __future__ import annotations

from typing import Any

from .build import RECIPES, SIZES, ZooRecipe, build_zoo
from .tasks import TASKS

__all__ = ["RECIPES", "SIZES", "TASKS", "ZooRecipe", "add_cli", "build_zoo"]


def add_cli(subparsers: Any) -> None:
    """Register ``zoo build --out DIR [--size default|large] [--seed N] [--device cpu|cuda]``."""
    zoo = subparsers.add_parser("zoo", help="the embedded tiny model zoo")
    sub = zoo.add_subparsers(dest="zoo_command", required=True)
    b = sub.add_parser("build", help="build (or reuse) the tiny zoo in a folder")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--size", choices=SIZES, default="default")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", choices=("cpu", "cuda"), default=None)
    b.set_defaults(func=_run_build)


def _run_build(args: Any) -> int:
    path = build_zoo(args.out, size=args.size, seed=args.seed, device=args.device)
    print(path / "catalog.yaml")
    return 0
