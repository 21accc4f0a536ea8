"""The catalog: a base model, the experts fine-tuned from it, and the tasks they are for.

A catalog is a YAML file (paths relative to the file)::

    name: tiny-zoo                 # optional
    base: {name: base, path: base}
    experts:
      - {name: reverse_a, path: experts/reverse_a, tasks: [reverse]}
    tasks:                         # optional: eval data and probe prompts per task
      reverse: {eval: eval/reverse.jsonl, probes: probes/reverse.jsonl}
      general: {eval: eval/general.jsonl, general: true}

A task marked ``general`` is the base's own ability rather than an expert's skill: no expert
may list it, its reference score is the base's (:func:`~simmerge.evaluation.scorer.
reference_score`), and verification reports how much of it a merge keeps, so a merge that
forgets what the base could do is visible.

:meth:`Catalog.load` checks everything that can be checked cheaply before any heavy work: the
schema (unknown keys and wrong types are errors), unique and file-safe names, that every path
exists, and that every expert has the base's architecture, vocabulary and tensor names/shapes
(headers and config files only; no weights are read). A model's path may also name a ``.gguf``
file: it is dequantized once into the cache (:mod:`simmerge.io.gguf`) and used as that folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from simmerge.errors import CatalogError, DuplicateNameError, InputNotFoundError, SimmergeError
from simmerge.infra.files import read_yaml_file
from simmerge.io.checkpoint import Checkpoint, open_checkpoint, open_lora
from simmerge.io.compat import check_compatible
from simmerge.io.gguf import is_gguf, materialize_gguf
from simmerge.io.lora import is_adapter

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    path: str


class _ExpertEntry(_ModelEntry):
    tasks: list[str] = []


class _TaskEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    eval: str | None = None
    probes: str | None = None
    general: bool = False


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = None
    base: _ModelEntry
    experts: list[_ExpertEntry]
    tasks: dict[str, _TaskEntry] = {}


@dataclass(frozen=True)
class CatalogModel:
    """A model of the catalog: its unique name, folder and the tasks it is an expert for."""

    name: str
    path: Path
    tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """A task: optional eval data file and optional probe prompts file; ``general`` marks the
    base's own ability (module docs)."""

    name: str
    eval: Path | None = None
    probes: Path | None = None
    general: bool = False


@dataclass(frozen=True)
class Catalog:
    """A validated catalog. Build it with :meth:`load` (or :meth:`from_dict`)."""

    name: str
    source: Path | None
    base: CatalogModel
    experts: tuple[CatalogModel, ...]
    tasks: dict[str, TaskSpec]
    allow_pickle: bool = False
    allow_remote_code: bool = False
    _checkpoints: dict[str, Checkpoint] = field(default_factory=dict, repr=False, compare=False)

    # --- lookups -----------------------------------------------------------------------------

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    @property
    def task_names(self) -> list[str]:
        names = list(self.tasks)
        for e in self.experts:
            names += [t for t in e.tasks if t not in names]
        return names

    def model(self, name: str) -> CatalogModel:
        if name == self.base.name:
            return self.base
        for e in self.experts:
            if e.name == name:
                return e
        raise CatalogError(
            f"Catalog {self.name!r} has no model named {name!r}.",
            f"use one of: {', '.join([self.base.name, *self.expert_names])}.",
        )

    @property
    def general_tasks(self) -> list[str]:
        """The general-ability tasks with eval data (module docs)."""
        return [n for n, t in self.tasks.items() if t.general and t.eval is not None]

    def experts_for(self, task: str) -> list[CatalogModel]:
        return [e for e in self.experts if task in e.tasks]

    def checkpoint(self, name: str) -> Checkpoint:
        """The opened (lazy) checkpoint of a model; opened once and reused."""
        if name not in self._checkpoints:
            self._checkpoints[name] = open_checkpoint(
                self.model(name).path,
                allow_pickle=self.allow_pickle,
                allow_remote_code=self.allow_remote_code,
            )
        return self._checkpoints[name]

    # --- loading -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        allow_pickle: bool = False,
        allow_remote_code: bool = False,
        check_models: bool = True,
    ) -> Catalog:
        path = Path(path).expanduser()
        data = read_yaml_file(
            path,
            "Catalog file",
            CatalogError,
            "pass the path to a catalog YAML (see `simmerge zoo build` for an example).",
        )
        return cls.from_dict(
            data,
            root=path.parent,
            source=path,
            allow_pickle=allow_pickle,
            allow_remote_code=allow_remote_code,
            check_models=check_models,
        )

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        root: Path,
        source: Path | None = None,
        allow_pickle: bool = False,
        allow_remote_code: bool = False,
        check_models: bool = True,
    ) -> Catalog:
        where = str(source) if source else "catalog"
        if not isinstance(data, Mapping):
            raise CatalogError(
                f"Catalog {where!r} must be a YAML mapping with `base` and `experts`.",
                "see the catalog.yaml that `simmerge zoo build` writes for an example.",
            )
        try:
            spec = _CatalogFile.model_validate(dict(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise CatalogError(
                f"Catalog {where!r}: {loc}: {err['msg']}.",
                "allowed keys: name, base{name,path}, experts[{name,path,tasks}], "
                "tasks{NAME: {eval, probes, general}}.",
            ) from None
        names = [spec.base.name] + [e.name for e in spec.experts]
        for name in names + list(spec.tasks) + [t for e in spec.experts for t in e.tasks]:
            if not NAME_PATTERN.match(name):
                raise CatalogError(
                    f"Catalog {where!r}: name {name!r} is not allowed (it is used in file names).",
                    "use letters, digits, '.', '_' and '-' only, starting with a letter or digit.",
                )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DuplicateNameError(
                f"Catalog {where!r}: model name(s) used more than once: {', '.join(dupes)}.",
                "give every model (base and experts) a unique name.",
            )
        if not spec.experts:
            raise CatalogError(f"Catalog {where!r} lists no experts.", "add at least one expert.")

        def folder(p: str, who: str) -> Path:
            resolved = (root / Path(p).expanduser()).resolve()
            if is_gguf(resolved):  # dequantized once into the cache, then a folder like any
                try:
                    return materialize_gguf(resolved)
                except SimmergeError as exc:
                    raise type(exc)(
                        f"Catalog {where!r}, model {who!r}: {exc.what}", exc.fix
                    ) from None
            if not resolved.is_dir():
                raise InputNotFoundError(
                    f"Catalog {where!r}: the folder of {who!r} does not exist: {str(resolved)!r}.",
                    "fix the path: a model folder or a .gguf file (relative paths are relative "
                    "to the catalog file).",
                )
            return resolved

        def data_file(p: str | None, who: str) -> Path | None:
            if p is None:
                return None
            resolved = (root / Path(p).expanduser()).resolve()
            if not resolved.is_file():
                raise InputNotFoundError(
                    f"Catalog {where!r}: {who} file does not exist: {str(resolved)!r}.",
                    "fix the path (relative paths are relative to the catalog file).",
                )
            return resolved

        base = CatalogModel(spec.base.name, folder(spec.base.path, spec.base.name))

        def expert_path(p: str, who: str) -> Path:
            resolved = folder(p, who)
            if not is_adapter(resolved):
                return resolved
            try:  # a LoRA adapter: applied to the catalog's base (checked now, read lazily)
                open_lora(resolved, base.path)
            except SimmergeError as exc:
                raise type(exc)(f"Catalog {where!r}, model {who!r}: {exc.what}", exc.fix) from None
            return Path(f"{base.path}+{resolved}")

        experts = tuple(
            CatalogModel(e.name, expert_path(e.path, e.name), tuple(e.tasks)) for e in spec.experts
        )
        tasks = {
            name: TaskSpec(
                name,
                data_file(t.eval, f"eval data of task {name!r}"),
                data_file(t.probes, f"probes of task {name!r}"),
                t.general,
            )
            for name, t in spec.tasks.items()
        }
        owned = sorted(
            {t for e in spec.experts for t in e.tasks if t in tasks and tasks[t].general}
        )
        if owned:
            raise CatalogError(
                f"Catalog {where!r}: general task(s) {owned} are listed as experts' tasks.",
                "a general task measures the base's own ability: take it off the experts, or "
                "drop `general: true` to make it an ordinary task.",
            )
        paths = [base.path] + [e.path for e in experts]
        same = sorted({str(p) for p in paths if paths.count(p) > 1})
        if same:
            raise DuplicateNameError(
                f"Catalog {where!r}: the same folder is listed for several models: "
                f"{', '.join(same)}.",
                "list each checkpoint once (an expert identical to the base has no task vector).",
            )
        catalog = cls(
            spec.name or (source.stem if source else "catalog"),
            source,
            base,
            experts,
            tasks,
            allow_pickle,
            allow_remote_code,
        )
        if check_models:
            catalog._check_models(where)
        return catalog

    def _check_models(self, where: str) -> None:
        """Open every model and check it against the base; errors name the catalog file."""
        current = self.base.name
        try:
            for m in (self.base, *self.experts):
                current = m.name
                self.checkpoint(m.name)
            base = self._checkpoints[self.base.name]
            for e in self.experts:
                current = e.name
                check_compatible(base, self._checkpoints[e.name], self.base.name, e.name)
        except SimmergeError as exc:
            raise type(exc)(f"Catalog {where!r}, model {current!r}: {exc.what}", exc.fix) from None
