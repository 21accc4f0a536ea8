"""Loaders never raise anything but simmerge.errors types on arbitrary input, and every valid
plan survives the trip through mergekit's format unchanged."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simmerge.errors import OperatorParameterError, SimmergeError
from simmerge.io.safetensors_format import read_header
from simmerge.merging import MergePlan

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
plan_like = st.fixed_dictionaries(
    {},
    optional={
        "merge_method": st.one_of(st.sampled_from(["ties", "linear", "slerp", "della"]), scalars),
        "base_model": st.one_of(st.just("/b"), scalars),
        "models": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"model": st.one_of(st.just("/a"), st.just("/c"), scalars)},
                    optional={
                        "parameters": st.dictionaries(
                            st.sampled_from(["weight", "density", "gamma"]), values, max_size=2
                        )
                    },
                ),
                max_size=3,
            ),
            values,
        ),
        "parameters": st.dictionaries(
            st.sampled_from(["density", "lambda", "t", "epsilon", "normalize", "x"]),
            values,
            max_size=3,
        ),
        "dtype": values,
        "simmerge": values,
        "slices": values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(plan_like, values))
def test_plan_loader_raises_only_simmerge_errors(doc):
    try:
        MergePlan.from_mergekit_dict(doc)
    except SimmergeError:
        pass


def _param_value(spec):
    if spec.kind is bool:
        return st.booleans()
    low = spec.low if spec.low is not None else -5.0
    high = spec.high if spec.high is not None else 5.0
    if spec.kind is int:
        return st.integers(int(low) + int(spec.low_open), int(high) if spec.high else 2**31)
    return st.floats(low, high, exclude_min=spec.low_open, allow_nan=False, allow_infinity=False)


@st.composite
def valid_plans(draw):
    """A plan every rule accepts: any registered operator, a member count it takes, each
    parameter in its declared range, per-member weights and densities where it reads them."""
    from simmerge.merging.plan import OUTPUT_DTYPES, PlanMember
    from simmerge.merging.registry import OPERATORS

    spec = OPERATORS[draw(st.sampled_from(sorted(OPERATORS)))]
    top = min(spec.max_members or 3, 3)
    n = draw(st.integers(spec.min_members, max(spec.min_members, top)))
    members = []
    for i in range(n):
        kw = {"model": f"/m{i}"}
        if spec.uses_weights:
            kw["weight"] = draw(st.floats(0.1, 2.0))
        if "density" in spec.per_member and draw(st.booleans()):
            kw["density"] = draw(st.floats(0.05, 1.0))
        members.append(PlanMember(**kw))
    params = {p.name: draw(_param_value(p)) for p in spec.params if draw(st.booleans())}
    try:
        return MergePlan(
            operator=spec.name,
            members=tuple(members),
            base="/base" if spec.needs_base else None,
            params=params,
            dtype=draw(st.sampled_from([None, *OUTPUT_DTYPES])),
        )
    except OperatorParameterError:  # a cross-parameter rule (DELLA's density ± epsilon)
        assume(False)


@settings(max_examples=300, deadline=None)
@given(valid_plans())
def test_a_valid_plan_loads_back_from_its_mergekit_form_unchanged(plan):
    """The success side of the loader fuzz: load must not merely avoid crashing, it must give
    back the plan that was written (dict and YAML text alike)."""
    import yaml

    again = MergePlan.from_mergekit_dict(plan.to_mergekit_dict())
    assert again == plan and again.plan_id == plan.plan_id
    text = plan.to_mergekit_yaml()
    assert MergePlan.from_mergekit_dict(yaml.safe_load(text)) == plan


def _yaml_loaders():
    from simmerge.catalog import Catalog

    return [MergePlan.from_yaml, Catalog.load]


@pytest.mark.parametrize("load", _yaml_loaders(), ids=["plan", "catalog"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200))
def test_yaml_text_raises_only_simmerge_errors(load, text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "file.yaml"
        path.write_text(text)
        try:
            load(path)
        except SimmergeError:
            pass


header_docs = st.dictionaries(
    st.text(max_size=6),
    st.one_of(
        values,
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(["F32", "BF16", "I8", "X"]),
                "shape": st.lists(st.integers(-2, 4), max_size=3),
                "data_offsets": st.lists(st.integers(-2, 64), max_size=3),
            }
        ),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=64), header_docs.map(lambda d: json.dumps(d).encode())),
    st.binary(max_size=64),
)
def test_safetensors_header_reader_raises_only_simmerge_errors(header, data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header + data)
        try:
            read_header(path)
        except SimmergeError:
            pass


# --- catalogs, bandit states, scan rankings ---------------------------------------------------

_MODELS: dict[str, str] = {}


def _real_models() -> dict[str, str]:
    """A tiny base and expert on disk (made once), so fuzzed catalogs also reach the checks
    that open checkpoints."""
    if not _MODELS:
        from simmerge.zoo.micro import save_model

        root = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
        base = save_model(root / "base", seed=0)
        _MODELS.update(base=str(base), expert=str(save_model(root / "e", seed=1, base=base)))
    return _MODELS


def _catalog_like(models: dict[str, str]):
    path = st.one_of(st.sampled_from([models["base"], models["expert"], "/nonexistent"]), scalars)
    name = st.one_of(st.sampled_from(["base", "a", "b"]), scalars)
    entry = st.fixed_dictionaries(
        {"name": name, "path": path},
        optional={"tasks": st.one_of(st.lists(st.sampled_from(["t", "u"]), max_size=2), values)},
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "name": st.one_of(st.just("c"), scalars),
            "base": st.one_of(entry, values),
            "experts": st.one_of(st.lists(entry, max_size=3), values),
            "tasks": st.one_of(
                st.dictionaries(
                    st.sampled_from(["t", "u"]),
                    st.fixed_dictionaries({}, optional={"eval": path, "probes": path, "x": values}),
                    max_size=2,
                ),
                values,
            ),
            "extra": values,
        },
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_catalog_loader_raises_only_simmerge_errors(data):
    from simmerge.catalog import Catalog

    doc = data.draw(st.one_of(_catalog_like(_real_models()), values))
    try:
        Catalog.from_dict(doc, root=Path(tempfile.gettempdir()))
    except SimmergeError:
        pass


def _valid_state() -> dict:
    from simmerge.online.bandit import CONTEXT_FEATURES, ArmContext, MergeBandit

    bandit = MergeBandit(arms=("linear", "ties[density=0.5]"))
    feats = dict.fromkeys(CONTEXT_FEATURES, 0.0)
    bandit.update(bandit.select([ArmContext("linear", feats, 0.5)]), 0.5)
    bandit.select([ArmContext("linear", feats, 0.5)])  # one pending choice
    return json.loads(json.dumps(bandit.to_state()))


_STATE = _valid_state()


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        values,
        st.tuples(st.sampled_from(sorted(_STATE)), values),
        st.tuples(st.sampled_from(["levels", "pending", "scaler", "rng"]), values),
    )
)
def test_bandit_state_loader_raises_only_simmerge_errors(change):
    """Arbitrary documents, and a valid state with one key replaced by anything."""
    from simmerge.online.bandit import MergeBandit

    state = change
    if isinstance(change, tuple):
        state = json.loads(json.dumps(_STATE))
        state[change[0]] = change[1]
    try:
        MergeBandit.from_state(state)
    except SimmergeError:
        pass
