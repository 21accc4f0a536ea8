"""Scoring models and in-memory merges of one catalog on its tasks: one normalization rule and
one cache of single-model scores, for 2-way collection and verification, multi-way
verification and single-model skills alike.

**Normalization.** A score on task t is divided by a *reference*: the best score on t of the
merge's members that are experts of t (the skill the merge should keep), or, when no member is,
the best score of the catalog's experts of t (:func:`reference_score`); for a *general* task
(the base's own ability, which no expert owns) it is the base's score. A reference of 0 (no
model can do the task) makes every normalized score 0: there is nothing to keep.

**Single-model scores** (:meth:`MergeScorer.model_scores`) are cached under the cache root
(``skills/``), keyed by the model's fingerprint and the eval set's hash, so each model of a
catalog is evaluated once per task whatever asks for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from simmerge.catalog import Catalog, CatalogModel
from simmerge.evaluation.harness import EvalTask, evaluate
from simmerge.infra.cache import TensorCache
from simmerge.io.models import load_model, load_state_into, load_tokenizer, pick_device

CACHE_FOLDER = "skills"
CACHE_FORMAT = 1
# (model name, task) -> score
Scores = Mapping[tuple[str, str], float]


def normalized(score: float, reference: float) -> float:
    """``score / reference``, the share of the reference's score kept; 0 when it is 0."""
    return score / reference if reference > 0 else 0.0


def reference_score(
    catalog: Catalog, scores: Scores, task: str, members: Sequence[str] = ()
) -> float:
    """What a score on ``task`` is normalized by (module docs): the best of ``scores`` over the
    ``members`` that are experts of ``task``, else over the catalog's experts of it (the base,
    for a general task); 0.0 when none of them has a score."""
    experts = [e.name for e in catalog.experts_for(task)]
    if not experts and task in catalog.general_tasks:
        experts = [catalog.base.name]
    owners = [m for m in members if m in experts and (m, task) in scores]
    return max((scores[(m, task)] for m in owners or experts if (m, task) in scores), default=0.0)


class MergeScorer:
    """Scores in-memory merges and model folders of one catalog on its eval tasks, with one
    reused model (loading a model per merge would cost more than scoring it)."""

    def __init__(
        self,
        catalog: Catalog,
        device: Any | None = None,
        batch_size: int = 128,
    ):
        self.catalog = catalog
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.tasks = {
            name: EvalTask.load(spec.eval, name=name)
            for name, spec in catalog.tasks.items()
            if spec.eval is not None
        }
        self._ref_dir = catalog.base.path
        self._tokenizer = load_tokenizer(self._ref_dir)
        self._model = load_model(self._ref_dir, self.device)

    def eval_hash(self, task: str) -> str:
        return self.tasks[task].config_hash()

    def pair_tasks(self, a: CatalogModel, b: CatalogModel) -> list[str]:
        """The tasks a merge of ``a`` and ``b`` is judged on: both experts' tasks with data."""
        return [t for t in sorted({*a.tasks, *b.tasks}) if t in self.tasks]

    def score_state(self, state: dict[str, Any], tasks: Iterable[str]) -> dict[str, float]:
        load_state_into(self._model, state, self._ref_dir)
        return {
            t: evaluate(
                self._model, self.tasks[t], tokenizer=self._tokenizer, batch_size=self.batch_size
            ).score
            for t in tasks
        }

    def example_order(self, task: str) -> tuple[int, ...]:
        """A fixed shuffle of ``task``'s examples, seeded by its eval hash: budgeted
        verification scores prefixes of it, so a prefix is a random sample of the task (an eval
        file ordered by difficulty or topic would bias a plain prefix) and every candidate of
        a pair is scored on the same examples."""
        import random

        order = list(range(len(self.tasks[task].examples)))
        random.Random(int(self.eval_hash(task), 16)).shuffle(order)
        return tuple(order)

    def score_state_slice(
        self, state: dict[str, Any], tasks: Iterable[str], start: int, stop: int
    ) -> dict[str, tuple[float, int]]:
        """(sum of example scores, number of examples) of ``state`` on the examples
        ``[start, stop)`` of each task's :meth:`example_order` (fewer where a task has fewer)."""
        from dataclasses import replace

        load_state_into(self._model, state, self._ref_dir)
        out = {}
        for t in tasks:
            task = self.tasks[t]
            picked = self.example_order(t)[start:stop]
            if not picked:
                out[t] = (0.0, 0)
                continue
            part = replace(task, examples=tuple(task.examples[i] for i in picked))
            result = evaluate(
                self._model, part, tokenizer=self._tokenizer, batch_size=self.batch_size
            )
            out[t] = (sum(e.score for e in result.examples), result.n)
        return out

    def score_folder(self, model: CatalogModel, tasks: Iterable[str]) -> dict[str, float]:
        return self.score_state(dict(self.catalog.checkpoint(model.name).iter_tensors()), tasks)

    def model_scores(
        self,
        names: Sequence[str],
        tasks: Sequence[str],
        *,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ) -> dict[tuple[str, str], float]:
        """Raw score of each catalog model of ``names`` on each task of ``tasks`` (which need
        eval data), from the cache under ``cache_dir`` (default: the cache root) or evaluated
        once and cached there (module docs)."""
        import torch

        cache = TensorCache(cache_dir, CACHE_FOLDER)
        raw: dict[tuple[str, str], float] = {}
        for name in tqdm(names, desc="single-model scores", disable=not progress):
            fingerprint = self.catalog.checkpoint(name).fingerprint
            todo = []
            for t in tasks:
                hit = cache.load(self._material(fingerprint, t))
                if hit is None:
                    todo.append(t)
                else:
                    raw[(name, t)] = float(hit["score"])
            if todo:
                for t, score in self.score_folder(self.catalog.model(name), todo).items():
                    raw[(name, t)] = float(score)
                    value = {"score": torch.tensor(float(score), dtype=torch.float64)}
                    cache.store(self._material(fingerprint, t), value)
        return raw

    def expert_scores(
        self, tasks: Iterable[str] | None = None, *, cache_dir: str | Path | None = None
    ) -> dict[tuple[str, str], float]:
        """Each expert's score on each of its own tasks that has eval data (of ``tasks`` if
        given), and the base's on the general tasks: the references of
        :func:`reference_score`, cached like :meth:`model_scores`."""
        wanted = set(self.tasks) if tasks is None else set(tasks) & set(self.tasks)
        out: dict[tuple[str, str], float] = {}
        general = [t for t in self.catalog.general_tasks if t in wanted]
        if general:  # the base is the reference of a general task
            out.update(self.model_scores([self.catalog.base.name], general, cache_dir=cache_dir))
        for e in self.catalog.experts:
            own = [t for t in e.tasks if t in wanted]
            if own:
                out.update(self.model_scores([e.name], own, cache_dir=cache_dir))
        return out

    def _material(self, fingerprint: str, task: str) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "model": fingerprint, "eval": self.eval_hash(task)}
