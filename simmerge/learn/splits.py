"""Held-out splits of a training frame: never a random row split, which would leak a pair's
other candidates into training.

:func:`model_folds` never shares a model between training and test pairs, :func:`task_folds`
never shares a task; :func:`with_extra` adds training-only rows from other catalogs to a fold
without breaking either guarantee.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

PAIR = ["catalog", "a", "b"]


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray  # boolean masks over the rows of the training frame
    test: np.ndarray


def deal_models(models: list, k: int, seed: int) -> list[set]:
    """The models dealt into ``k`` groups by ``seed``: the one dealing rule of held-out-model
    cross-validation (:func:`model_folds`) and of the training domain's held-out scores."""
    order = np.random.default_rng(seed).permutation(len(models))
    return [{models[j] for j in order[i::k]} for i in range(k)]


def model_folds(frame: pd.DataFrame, k: int = 5, seed: int = 0, deals: int = 1) -> Iterator[Fold]:
    """Group k-fold by model: test pairs have both models in the fold, training pairs neither
    (pairs with one model on each side are unused in that fold).

    ``deals`` > 1 repeats it with the models dealt again (seeds ``seed`` onwards), folds named
    ``models-<deal>.<i>``: one deal of a catalog of ~20 models tests only the pairs inside its
    groups (a few dozen), so a figure from one deal moves with the luck of that deal; pooling
    several tests each pair several times against other training sets."""
    models = sorted(
        set(zip(frame["catalog"], frame["a"], strict=True))
        | set(zip(frame["catalog"], frame["b"], strict=True))
    )
    a_key = list(zip(frame["catalog"], frame["a"], strict=True))
    b_key = list(zip(frame["catalog"], frame["b"], strict=True))
    for deal in range(deals):
        for i, held in enumerate(deal_models(models, k, seed + deal)):
            in_a = np.array([m in held for m in a_key])
            in_b = np.array([m in held for m in b_key])
            name = f"models-{i}" if deals == 1 else f"models-{deal}.{i}"
            yield Fold(name, train=~in_a & ~in_b, test=in_a & in_b)


def task_folds(frame: pd.DataFrame) -> Iterator[Fold]:
    """Leave one task out: test pairs involve the task, training pairs do not."""
    pair_tasks = frame.groupby(PAIR)["task"].agg(lambda s: frozenset(s))
    keys = list(zip(frame["catalog"], frame["a"], frame["b"], strict=True))
    tasks_of = [pair_tasks[k] for k in keys]
    for task in sorted(frame["task"].unique()):
        involved = np.array([task in ts for ts in tasks_of])
        yield Fold(f"task-{task}", train=~involved, test=involved)


def with_extra(train: pd.DataFrame, extra: pd.DataFrame | None, test: pd.DataFrame) -> pd.DataFrame:
    """A fold's training rows plus training-only rows from other catalogs (``extra``). Extra
    pairs that involve a held-out task -- a task of ``test`` that ``train`` lacks -- are
    dropped, so a held-out task stays unseen; extra catalogs hold other models, so held-out
    models stay unseen too. Extra pairs on tasks the catalog does not have at all (another
    family's tasks) are kept: they are what cross-catalog training data is for."""
    if extra is None or extra.empty:
        return train
    held_out = set(test["task"]) - set(train["task"])
    involved = extra["task"].isin(held_out)
    drop = involved.groupby([extra[k] for k in PAIR]).transform("any")
    return pd.concat([train, extra[~drop.to_numpy()]], ignore_index=True)
