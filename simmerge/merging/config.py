"""``MergeConfig``: a whole mergekit configuration, including what a uniform plan cannot say.

:class:`~simmerge.merging.plan.MergePlan` is the uniform merge simmerge predicts and searches
over: one operator, one value per parameter. Real mergekit files say more -- per-model
``gamma``/``epsilon``, gradients over the layers, values filtered by tensor name, ``slices``
(layer ranges, layer stacking), ``out_dtype``, ``tokenizer_source``, ``chat_template`` -- and
people keep them on model cards. A ``MergeConfig`` holds all of that, validated when it is
read (unknown keys, misplaced parameters and out-of-range values are
:class:`~simmerge.errors.PlanError`), and the engine executes it tensor by tensor with
mergekit's precedence: a source's parameters, then its slice's, then the global ones, then the
operator's default (see :mod:`simmerge.merging.settings` for gradients and filters).

A uniform config converts to a plan (:meth:`MergePlan.from_config`) and every plan to a config
(:meth:`MergePlan.to_config`), so the engine has one path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simmerge.errors import OperatorParameterError, PlanError
from simmerge.merging import settings as st
from simmerge.merging.registry import OPERATORS, OperatorSpec, ParamSpec, get_operator

OUTPUT_DTYPE_NAMES = ("float32", "float16", "bfloat16")
SIMMERGE_ONLY = ("seed",)
# mergekit options that change memory use or speed only; accepted and ignored
NEUTRAL_SHARED = {"int8_mask"}
_TOP_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "chat_template",
    "simmerge",
}
_MODEL_KEYS = {"model", "parameters"}
_SLICE_KEYS = {"sources", "parameters", "base_model"}
_SOURCE_KEYS = {"model", "layer_range", "parameters"}
_WEIGHT = ParamSpec("weight", float, 1.0, doc="the model's weight")


@dataclass(frozen=True)
class SliceSource:
    """One model's contribution to a slice; ``layer_range`` None means every layer."""

    model: str
    layer_range: tuple[int, int] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeSlice:
    """A run of output layers merged from the same layer range of each source."""

    sources: tuple[SliceSource, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None


@dataclass(frozen=True)
class SliceGroup:
    """A slice's inputs as the operator sees them: the base (if it takes one) and members."""

    base: SliceSource | None
    members: tuple[SliceSource, ...]


@dataclass(frozen=True)
class MergeConfig:
    """A validated mergekit configuration (``models:`` is one slice over every layer)."""

    operator: str
    slices: tuple[MergeSlice, ...]
    base: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
    seed: int | None = None
    sliced: bool = False  # written with `slices:` (else `models:`)

    @property
    def spec(self) -> OperatorSpec:
        return get_operator(self.operator)

    @property
    def output_dtype(self) -> str | None:
        """mergekit: ``out_dtype`` if set, else ``dtype`` (simmerge always computes in fp32)."""
        return self.out_dtype or self.dtype

    @property
    def takes_base(self) -> bool:
        """Whether ``base_model`` is an input of the operator (slerp's is its t = 0 model);
        otherwise mergekit merges it as one more model."""
        return takes_base(self.operator)

    def slice_base(self, sl: MergeSlice) -> str | None:
        return sl.base or self.base

    def group(self, sl: MergeSlice) -> SliceGroup:
        """Split a slice's sources into the operator's base and members (mergekit's rules)."""
        base_path = self.slice_base(sl)
        if not self.takes_base or base_path is None:
            return SliceGroup(None, sl.sources)
        base = next((s for s in sl.sources if same_path(s.model, base_path)), None)
        members = tuple(s for s in sl.sources if base is None or s is not base)
        if self.operator == "slerp":
            # slerp's base is the model at t = 0, its first member
            return SliceGroup(None, (base, *members) if base is not None else members)
        if base is None:
            base = SliceSource(model=base_path)
        return SliceGroup(base, members)

    # --- uniform plans -------------------------------------------------------------------------

    def non_uniform_reasons(self) -> list[str]:
        """Why this config is not one uniform merge (empty when ``MergePlan.from_config`` works)."""
        reasons = []
        if self.sliced or len(self.slices) != 1:
            reasons.append("it uses slices")
        scopes = [("global", self.params)]
        for sl in self.slices:
            scopes.append(("slice", sl.params))
            scopes += [(f"model {s.model}", s.params) for s in sl.sources]
        for where, scope in scopes:
            for name, value in scope.items():
                if not st.is_uniform(value):
                    reasons.append(f"{where} parameter {name!r} is a gradient or filtered")
        for name in self.member_extras:
            values = self.member_values(name)
            if any(v != values[0] for v in values):
                reasons.append(f"its models take different values of {name!r}")
        if self.tokenizer_source is not None:
            reasons.append("it sets tokenizer_source")
        if self.chat_template is not None:
            reasons.append("it sets chat_template")
        return reasons

    @property
    def member_extras(self) -> tuple[str, ...]:
        """Per-member parameters besides weight and density (gamma, epsilon, scale)."""
        return tuple(n for n in self.spec.per_member if n != "density")

    def member_values(self, name: str) -> list[Any]:
        """The value of per-member parameter ``name`` each member of the first slice uses:
        its own, else the global one, else the operator's default (uniform settings only)."""
        default = self.params.get(name, self.spec.param(name).default)
        return [s.params.get(name, default) for s in self.group(self.slices[0]).members]

    @property
    def is_uniform(self) -> bool:
        return not self.non_uniform_reasons()

    # --- identity and export -------------------------------------------------------------------

    @property
    def config_id(self) -> str:
        blob = json.dumps(self.to_mergekit_dict(), sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=6).hexdigest()

    def to_mergekit_dict(self, *, include_simmerge: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"merge_method": self.operator}
        if self.base:
            out["base_model"] = self.base
        if self.sliced:
            slices = []
            for sl in self.slices:
                entry: dict[str, Any] = {"sources": [_source_dict(s) for s in sl.sources]}
                if sl.params:
                    entry["parameters"] = dict(sl.params)
                if sl.base:
                    entry["base_model"] = sl.base
                slices.append(entry)
            out["slices"] = slices
        else:
            out["models"] = [_model_dict(s) for s in self.slices[0].sources]
        if self.params:
            out["parameters"] = dict(self.params)
        for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if include_simmerge and self.seed is not None and self.spec.randomized:
            out["simmerge"] = {"seed": self.seed}
        return out

    def to_mergekit_yaml(self, path: str | Path | None = None, *, strict: bool = False) -> str:
        """YAML text; ``strict`` drops simmerge-only settings so mergekit accepts the file."""
        return dump_yaml(self.to_mergekit_dict(include_simmerge=not strict), path)

    @classmethod
    def from_mergekit_dict(
        cls, data: Any, *, relative_to: Path | None = None, source: str = "config"
    ) -> MergeConfig:
        return _parse(data, relative_to=relative_to, source=source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeConfig:
        from simmerge.infra.files import read_yaml_file

        path = Path(path)
        data = read_yaml_file(path, "Plan file", PlanError, "check the path to the YAML plan.")
        return _parse(data, relative_to=path.parent, source=str(path))


def dump_yaml(doc: dict[str, Any], path: str | Path | None = None) -> str:
    """A mergekit document as YAML text, also written atomically to ``path`` if given."""
    text = yaml.safe_dump(doc, sort_keys=False)
    if path is not None:
        from simmerge.infra.files import atomic_write_text

        atomic_write_text(Path(path), text)
    return text


def load_config(path: str | Path) -> MergeConfig:
    """Read a mergekit YAML file (or a plan simmerge exported) as written."""
    return MergeConfig.from_yaml(path)


def _source_dict(s: SliceSource) -> dict[str, Any]:
    out: dict[str, Any] = {"model": s.model}
    if s.layer_range is not None:
        out["layer_range"] = list(s.layer_range)
    if s.params:
        out["parameters"] = dict(s.params)
    return out


def _model_dict(s: SliceSource) -> dict[str, Any]:
    out: dict[str, Any] = {"model": s.model}
    if s.params:
        out["parameters"] = dict(s.params)
    return out


def takes_base(operator: str) -> bool:
    spec = get_operator(operator)
    return spec.needs_base or spec.accepts_base or operator == "slerp"


def same_path(a: str, b: str) -> bool:
    """Two model paths name the same folder (compared after normalization)."""
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


# --- parsing ---------------------------------------------------------------------------------


def _expect_mapping(value: Any, source: str, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PlanError(
            f"{source}: {where} must be a mapping, got {type(value).__name__}.",
            "write it as `key: value` lines under that key.",
        )
    return value


def _resolve_path(value: Any, relative_to: Path | None, source: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PlanError(
            f"{source}: {where} must be a non-empty path string, got {value!r}.",
            "write the model folder's path (absolute, or relative to the plan file).",
        )
    whole = _one_path(value, relative_to)
    if "+" in value and not Path(whole).exists():  # mergekit's BASE+ADAPTER
        base, _, adapter = value.rpartition("+")
        if base and adapter:
            return f"{_one_path(base, relative_to)}+{_one_path(adapter, relative_to)}"
    return whole


def _one_path(value: str, relative_to: Path | None) -> str:
    p = Path(value).expanduser()
    if relative_to is not None and not p.is_absolute():
        p = relative_to / p
    return str(p)


def _unknown(keys: Any, allowed: set[str], source: str, where: str, hint: str) -> None:
    bad = sorted(set(map(str, keys)) - allowed)
    if bad:
        raise PlanError(f"{source}: {where} has unknown key(s) {', '.join(map(repr, bad))}.", hint)


class _Params:
    """Checks parameter names and values for one operator, by scope."""

    def __init__(self, operator: str, source: str) -> None:
        self.spec = get_operator(operator)
        self.source = source
        self.per_input: dict[str, ParamSpec] = {n: self.spec.param(n) for n in self.spec.per_member}
        if self.spec.uses_weights:
            self.per_input["weight"] = _WEIGHT
        self.shared: dict[str, ParamSpec] = {
            p.name: p for p in self.spec.params if p.name not in self.per_input
        }
        self.shared.pop("seed", None)  # simmerge-only: under `simmerge:`

    def cast(self, spec: ParamSpec, where: str):
        def check(value: Any) -> Any:
            try:
                return spec.check(value, self.spec.name)
            except OperatorParameterError as exc:
                raise OperatorParameterError(
                    f"{self.source}: {where}: {exc.what}", exc.fix
                ) from None

        return check

    def parse(self, raw: Any, where: str, *, member: bool) -> dict[str, Any]:
        params = dict(_expect_mapping(raw, self.source, where))
        out: dict[str, Any] = {}
        for name, value in params.items():
            name = str(name)
            if name in NEUTRAL_SHARED:
                if not isinstance(value, bool):
                    raise PlanError(
                        f"{self.source}: {where}.{name} must be true or false.",
                        f"write `{name}: true` or false.",
                    )
                continue
            if name == "filter_wise" and self.spec.name == "model_stock":
                if value is not False:
                    raise PlanError(
                        f"{self.source}: model_stock with filter_wise: true is not supported.",
                        "remove `filter_wise` (simmerge computes model_stock per tensor).",
                    )
                continue
            spec = self.per_input.get(name) or (None if member else self.shared.get(name))
            if spec is None:
                raise self._misplaced(name, where, member)
            setting = st.parse_setting(value, source=self.source, where=f"{where}.{name}")
            check = self.cast(spec, f"{where}.{name}")
            for leaf in st.leaves(setting):
                check(leaf)
            out[name] = setting
        return out

    def _misplaced(self, name: str, where: str, member: bool) -> PlanError:
        op = self.spec.name
        if member and name in self.shared:
            return PlanError(
                f"{self.source}: {where}: {name!r} is a global parameter of {op!r}, not a "
                "per-model one (mergekit ignores it there).",
                f"move {name} under the top-level `parameters` (or a slice's).",
            )
        if name == "weight":
            return PlanError(
                f"{self.source}: {where}: operator {op!r} does not use per-model weights.",
                "remove `weight` (slerp is steered by t).",
            )
        allowed = sorted(self.per_input) if member else sorted({*self.shared, *self.per_input})
        return PlanError(
            f"{self.source}: {where} has unsupported key(s) {name!r} for operator {op!r}.",
            f"its parameters here are: {', '.join(allowed) or 'none'}"
            + ("; put global ones under `parameters`." if member else "."),
        )


def check_chat_template(value: str | None, source: str) -> None:
    """``auto`` or a Jinja template; mergekit's short built-in names are not shipped."""
    if value is None or value == "auto":
        return
    if "{" not in value or len(value) < 20:
        raise PlanError(
            f"{source}: chat_template {value[:40]!r} is neither `auto` nor a Jinja template.",
            "paste the template text itself (named templates such as chatml are not "
            "shipped), or write `auto` to keep the one most inputs use.",
        )


def _dtype(top: Mapping[str, Any], key: str, source: str) -> str | None:
    value = top.get(key)
    if value is None:
        return None
    if value not in OUTPUT_DTYPE_NAMES:
        raise PlanError(
            f"{source}: unsupported {key} {value!r}.",
            f"use one of {', '.join(OUTPUT_DTYPE_NAMES)} or leave it out to keep the base's.",
        )
    return value


def _layer_range(value: Any, source: str, where: str) -> tuple[int, int]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    )
    if not ok:
        raise PlanError(
            f"{source}: {where} must be [start, end) with 0 <= start < end, got {value!r}.",
            "write e.g. `layer_range: [0, 16]` (end excluded, as mergekit).",
        )
    return int(value[0]), int(value[1])


def _parse(data: Any, *, relative_to: Path | None, source: str) -> MergeConfig:
    top = _expect_mapping(data, source, "the document")
    _unknown(
        top,
        _TOP_KEYS,
        source,
        "the document",
        f"allowed top-level keys are {', '.join(sorted(_TOP_KEYS))} (`modules` and "
        "`tokenizer` are not supported).",
    )
    operator = top.get("merge_method")
    if not isinstance(operator, str):
        raise PlanError(
            f"{source}: `merge_method` is missing or not a string.",
            f"add `merge_method: NAME` with one of: {', '.join(OPERATORS)}.",
        )
    try:
        params_checker = _Params(operator, source)
    except PlanError as exc:
        raise type(exc)(f"{source}: {exc.what}", exc.fix) from None
    base = top.get("base_model")
    base = _resolve_path(base, relative_to, source, "`base_model`") if base is not None else None
    params = params_checker.parse(top.get("parameters"), "parameters", member=False)
    extras = _expect_mapping(top.get("simmerge"), source, "`simmerge`")
    _unknown(extras, set(SIMMERGE_ONLY), source, "`simmerge`", "use only: seed.")
    seed = None
    if "seed" in extras:
        spec = params_checker.spec
        if not spec.randomized:
            raise PlanError(
                f"{source}: operator {operator!r} draws no random masks; `simmerge.seed` "
                "has no effect.",
                "remove the `simmerge:` section.",
            )
        seed = params_checker.cast(spec.param("seed"), "simmerge.seed")(extras["seed"])
    has_models, has_slices = top.get("models") is not None, top.get("slices") is not None
    if has_models == has_slices:
        raise PlanError(
            f"{source}: give exactly one of `models` and `slices`.",
            "list the models to merge as `- model: PATH` lines under `models:` (or use "
            "`slices:` with `sources`).",
        )
    if has_models:
        slices = (_parse_models(top["models"], params_checker, relative_to, source),)
    else:
        slices = _parse_slices(top["slices"], params_checker, relative_to, source)
    for key in ("tokenizer_source", "chat_template"):
        if top.get(key) is not None and not isinstance(top.get(key), str):
            raise PlanError(f"{source}: `{key}` must be a string.", f"see docs/cli.md, {key}.")
    check_chat_template(top.get("chat_template"), source)
    tok = top.get("tokenizer_source")
    if tok is not None and tok not in ("base", "union"):
        tok = _resolve_path(tok, relative_to, source, "`tokenizer_source`")
    if has_models and base is not None and not takes_base(operator):
        slices = (_with_base_member(slices[0], base, operator, params, source),)
    config = MergeConfig(
        operator=operator,
        slices=slices,
        base=base,
        params=params,
        dtype=_dtype(top, "dtype", source),
        out_dtype=_dtype(top, "out_dtype", source),
        tokenizer_source=tok,
        chat_template=top.get("chat_template"),
        seed=seed,
        sliced=has_slices,
    )
    _check_groups(config, source)
    return config


def _parse_models(
    models: Any, checker: _Params, relative_to: Path | None, source: str
) -> MergeSlice:
    if not isinstance(models, list) or not models:
        raise PlanError(
            f"{source}: `models` must be a non-empty list of {{model: PATH}} entries.",
            "list the models to merge as `- model: PATH` lines under `models:`.",
        )
    sources = []
    for i, entry in enumerate(models):
        entry = _expect_mapping(entry, source, f"models[{i}]")
        _unknown(
            entry,
            _MODEL_KEYS,
            source,
            f"models[{i}]",
            "a model entry takes `model` and `parameters`.",
        )
        path = _resolve_path(entry.get("model"), relative_to, source, f"models[{i}].model")
        mparams = checker.parse(entry.get("parameters"), f"models[{i}].parameters", member=True)
        sources.append(SliceSource(model=path, params=mparams))
    return MergeSlice(sources=tuple(sources))


def _parse_slices(
    slices: Any, checker: _Params, relative_to: Path | None, source: str
) -> tuple[MergeSlice, ...]:
    if not isinstance(slices, list) or not slices:
        raise PlanError(
            f"{source}: `slices` must be a non-empty list of {{sources: [...]}} entries.",
            "write each slice as `- sources:` with `- model: PATH` / `layer_range: [a, b]`.",
        )
    out = []
    for i, raw in enumerate(slices):
        where = f"slices[{i}]"
        raw = _expect_mapping(raw, source, where)
        _unknown(
            raw, _SLICE_KEYS, source, where, "a slice takes sources, parameters and base_model."
        )
        srcs = raw.get("sources")
        if not isinstance(srcs, list) or not srcs:
            raise PlanError(
                f"{source}: {where}.sources must be a non-empty list.",
                "list `- model: PATH` / `layer_range: [a, b]` entries under `sources:`.",
            )
        sources = []
        for j, s in enumerate(srcs):
            w = f"{where}.sources[{j}]"
            s = _expect_mapping(s, source, w)
            _unknown(
                s, _SOURCE_KEYS, source, w, "a source takes model, layer_range and parameters."
            )
            if "layer_range" not in s:
                raise PlanError(f"{source}: {w} has no layer_range.", "add `layer_range: [a, b]`.")
            sources.append(
                SliceSource(
                    model=_resolve_path(s.get("model"), relative_to, source, f"{w}.model"),
                    layer_range=_layer_range(s["layer_range"], source, f"{w}.layer_range"),
                    params=checker.parse(s.get("parameters"), f"{w}.parameters", member=True),
                )
            )
        lengths = {r.layer_range[1] - r.layer_range[0] for r in sources}  # type: ignore[index]
        if len(lengths) != 1:
            raise PlanError(
                f"{source}: the sources of {where} cover different numbers of layers.",
                "give every source of a slice a layer_range of the same length.",
            )
        base = raw.get("base_model")
        out.append(
            MergeSlice(
                sources=tuple(sources),
                params=checker.parse(raw.get("parameters"), f"{where}.parameters", member=False),
                base=_resolve_path(base, relative_to, source, f"{where}.base_model")
                if base is not None
                else None,
            )
        )
    return tuple(out)


def _check_groups(config: MergeConfig, source: str) -> None:
    """Member counts, base presence and duplicates, slice by slice (mergekit's contract)."""
    spec = config.spec
    for i, sl in enumerate(config.slices):
        where = f"slices[{i}]" if config.sliced else "models"
        paths = [os.path.normpath(s.model) for s in sl.sources]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise PlanError(
                f"{source}: {where} lists model(s) twice: {', '.join(dupes)}.",
                "list each model once; use its weight to give it more influence.",
            )
        base_path = config.slice_base(sl)
        if config.operator == "slerp":
            if base_path is None or not any(same_path(s.model, base_path) for s in sl.sources):
                raise PlanError(
                    f"{source}: for slerp, `base_model` must be one of the two models.",
                    "set `base_model` to the model at t = 0 (one of the two listed).",
                )
        elif config.sliced and base_path is not None and config.takes_base:
            if not any(same_path(s.model, base_path) for s in sl.sources):
                raise PlanError(
                    f"{source}: {where} does not list the base model {base_path!r} among its "
                    "sources (mergekit requires it there).",
                    "add the base as a source with the same layer_range.",
                )
        if spec.needs_base and base_path is None:
            raise PlanError(
                f"{source}: operator {config.operator!r} works on task vectors and needs a "
                "base model.",
                "set `base_model` to the checkpoint the members were fine-tuned from.",
            )
        n = len(config.group(sl).members)
        wanted = spec.members_wanted(n)
        if wanted is not None:
            raise PlanError(
                f"{source}: operator {config.operator!r} takes {wanted} model(s) besides the "
                f"base, got {n} in {where}.",
                "add or remove models.",
            )


def _with_base_member(
    sl: MergeSlice, base: str, operator: str, params: Mapping[str, Any], source: str
) -> MergeSlice:
    """mergekit merges a base_model that `models` omits as one more input of an operator that
    takes no base (linear, karcher, passthrough); linear then needs a weight for it."""
    if any(same_path(s.model, base) for s in sl.sources):
        return sl
    if get_operator(operator).uses_weights and "weight" not in params:
        raise PlanError(
            f"{source}: operator {operator!r} takes no base, and mergekit would merge "
            f"`base_model` {base!r} as one more model, which needs a weight.",
            "list the base under `models` with its weight, or remove `base_model`.",
        )
    return MergeSlice(
        sources=(*sl.sources, SliceSource(model=base)), params=sl.params, base=sl.base
    )
