"""Parameter settings as mergekit writes them: a number, a gradient, or filtered values.

A setting is one of

* a scalar (``0.5``, ``true``) -- the same value for every tensor;
* a **gradient**, a list of numbers (``[0, 0.5, 1]``), interpolated linearly over the relative
  depth ``t`` of a layer inside its slice (``t = i / (n - 1)`` for layer ``i`` of ``n``; tensors
  outside the layers use ``t = 0``): the value at ``t`` lies ``t * (len - 1)`` of the way
  along the list. A list of booleans picks an element instead of interpolating;
* **filtered** values, a list of ``{filter: SUBSTRING, value: SETTING}`` entries: the first
  entry whose ``filter`` occurs in the tensor's name (or that has no filter, or ``*``) gives
  the value; when none matches, the next scope down decides (per-model, then slice, then
  global parameters, then the operator's default).

This is mergekit's rule (so a config from a model card means what its author meant), kept in
one place for the engine, the exporter and the validator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from simmerge.errors import PlanError

Scalar = bool | int | float
Setting = Any  # Scalar | list[Scalar] | list[dict[str, Any]] (validated by parse_setting)

_FILTER_KEYS = {"filter", "value"}


def _is_scalar(value: Any) -> bool:
    """A number or boolean (range and finiteness are the parameter's own check)."""
    return isinstance(value, (bool, int, float))


def _bad(source: str, where: str, value: Any, why: str) -> PlanError:
    return PlanError(
        f"{source}: {where} = {value!r} is not a valid parameter setting ({why}).",
        "write a number, a list of numbers (a gradient over the layers), or a list of "
        "`- filter: NAME` / `value: ...` entries.",
    )


def parse_setting(value: Any, *, source: str, where: str) -> Setting:
    """The setting in canonical form (single filter entries become a one-element list)."""
    if _is_scalar(value):
        return value
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad(source, where, value, "empty or of the wrong type")
    if all(_is_scalar(v) for v in value):
        return list(value)
    if not all(isinstance(v, Mapping) for v in value):
        raise _bad(source, where, value, "a list must hold only numbers or only filter entries")
    entries = []
    for i, entry in enumerate(value):
        bad = sorted(set(map(str, entry)) - _FILTER_KEYS)
        if bad or "value" not in entry:
            raise _bad(source, f"{where}[{i}]", entry, "an entry takes `filter` and `value`")
        flt = entry.get("filter")
        if flt is not None and not isinstance(flt, str):
            raise _bad(source, f"{where}[{i}].filter", flt, "a filter is a string")
        inner = parse_setting(entry["value"], source=source, where=f"{where}[{i}].value")
        if isinstance(inner, list) and inner and isinstance(inner[0], dict):
            raise _bad(source, f"{where}[{i}].value", entry["value"], "filters do not nest")
        entries.append({"filter": flt, "value": inner})
    return entries


def is_uniform(setting: Setting) -> bool:
    """True when the setting is one value for every tensor."""
    return not isinstance(setting, list)


def leaves(setting: Setting) -> Iterable[Scalar]:
    """Every value the setting can take at a gradient's knots (interpolated values lie between
    two of them, so range checks on the leaves cover every tensor)."""
    if not isinstance(setting, list):
        yield setting
        return
    for item in setting:
        if isinstance(item, dict):
            yield from leaves(item["value"])
        else:
            yield item


def matches(flt: str | None, tensor_name: str) -> bool:
    return flt is None or flt == "*" or (bool(tensor_name) and flt in tensor_name)


def evaluate(setting: Setting, tensor_name: str, t: float, cast: Callable[[Any], Any]) -> Any:
    """The setting's value for one tensor at relative depth ``t``; None if no filter matches."""
    if not isinstance(setting, list):
        return cast(setting)
    if setting and isinstance(setting[0], dict):
        for entry in setting:
            if matches(entry["filter"], tensor_name):
                return evaluate(entry["value"], tensor_name, t, cast)
        return None
    values = [cast(v) for v in setting]
    if any(isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return cast((1 - frac) * values[i0] + frac * values[i1])


def resolve(
    name: str,
    scopes: Iterable[Mapping[str, Setting] | None],
    tensor_name: str,
    t: float,
    cast: Callable[[Any], Any],
) -> Any:
    """The value of ``name`` from the first scope (highest precedence first) that sets it for
    this tensor; None when none does (the caller falls back to the default)."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate(scope[name], tensor_name, t, cast)
            if value is not None:
                return value
    return None
