"""Signatures, weight sketches and pair features on the tiny zoo."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch

from simmerge.catalog import Catalog
from simmerge.errors import CacheError, IncompatibleModelsError
from simmerge.signals.probes import ProbeSet
from simmerge.signals.profiles import FeatureOptions, build_profiles, feature_rows
from simmerge.signals.signatures import SignatureConfig, compute_signature, compute_signatures
from simmerge.signals.similarity import (
    FEATURE_COLUMNS,
    exact_structural_features,
    functional_features,
    pair_features,
)
from simmerge.signals.sketch import GROUPS, SketchConfig, sketch_task_vector, tensor_groups

pytestmark = pytest.mark.slow

SYMMETRIC_PREFIXES = ("cos_", "sign_conflict_", "mask_jaccard_", "act_cos_", "cka_")
SYMMETRIC = {"js_mean", "top1_agreement"}


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def catalog(tiny_zoo):
    return Catalog.load(tiny_zoo / "catalog.yaml")


@pytest.fixture(scope="session")
def profiles(catalog, cache):
    return build_profiles(catalog, FeatureOptions(device="cpu", cache_dir=cache), progress=False)


@pytest.fixture(scope="session")
def reverse_probes(tiny_zoo):
    return ProbeSet.load(tiny_zoo / "probes" / "reverse.jsonl")


def test_tiny_vocab_signature_stores_whole_distributions(tiny_zoo, reverse_probes, cache):
    sig = compute_signature(
        tiny_zoo / "experts" / "reverse_a", reverse_probes, device="cpu", cache_dir=cache
    )
    assert sig.full and sig.logprobs.shape[1] == sig.vocab_size
    assert sig.n_probes == len(reverse_probes)
    assert sig.logprobs.shape[0] == int(sig.offsets[-1])
    assert torch.allclose(sig.logprobs.exp().sum(1), torch.ones(sig.logprobs.shape[0]), atol=1e-4)
    assert bool((sig.logprobs[:, :-1] >= sig.logprobs[:, 1:]).all())  # sorted, most likely first
    n_layers = (
        Catalog.load(tiny_zoo / "catalog.yaml").checkpoint("base").config["num_hidden_layers"]
    )
    assert sig.hidden.shape[:2] == (n_layers + 1, len(reverse_probes))


def test_second_call_reads_the_cache_and_returns_identical_tensors(
    tiny_zoo, reverse_probes, tmp_path, monkeypatch
):
    model = tiny_zoo / "experts" / "sort_a"
    first = compute_signature(model, reverse_probes, device="cpu", cache_dir=tmp_path)
    import simmerge.io.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although the signature is cached")

    monkeypatch.setattr(simmerge.io.models, "load_model", no_model)
    second = compute_signature(model, reverse_probes, device="cpu", cache_dir=tmp_path)
    for name, t in first.tensors().items():
        assert torch.equal(t, second.tensors()[name]), name


def test_several_probe_sets_load_the_model_once_and_match_single_set_calls(
    tiny_zoo, tmp_path, monkeypatch
):
    import simmerge.io.models

    model = tiny_zoo / "experts" / "sort_a"
    sets = [ProbeSet.load(f) for f in sorted((tiny_zoo / "probes").glob("*.jsonl"))[:3]]
    assert len({p.hash for p in sets}) == 3
    alone = [compute_signature(model, p, device="cpu", use_cache=False) for p in sets]
    compute_signature(model, sets[1], device="cpu", cache_dir=tmp_path)  # one set cached
    loads = []
    real_load = simmerge.io.models.load_model

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(simmerge.io.models, "load_model", counting_load)
    together = compute_signatures(model, sets, device="cpu", cache_dir=tmp_path, progress=False)
    assert len(loads) == 1
    assert [s.probe_hash for s in together] == [p.hash for p in sets]
    for one, other in zip(alone, together, strict=True):
        for name, t in one.tensors().items():
            assert torch.allclose(t.float(), other.tensors()[name].float(), atol=1e-5), name
    assert len(list((tmp_path / "signatures").glob("*.safetensors"))) == 3
    compute_signatures(model, sets, device="cpu", cache_dir=tmp_path, progress=False)
    assert len(loads) == 1  # every set cached: no load at all


def test_cache_entry_for_other_inputs_raises_cache_error(tiny_zoo, reverse_probes, tmp_path):
    model = tiny_zoo / "experts" / "sort_a"
    compute_signature(model, reverse_probes, device="cpu", cache_dir=tmp_path)
    (entry,) = (tmp_path / "signatures").glob("*.safetensors")
    other = tiny_zoo / "experts" / "rotate_a"
    compute_signature(other, reverse_probes, device="cpu", cache_dir=tmp_path / "x")
    (foreign,) = (tmp_path / "x" / "signatures").glob("*.safetensors")
    entry.write_bytes(foreign.read_bytes())  # right file name, wrong content
    with pytest.raises(CacheError, match="other inputs"):
        compute_signature(model, reverse_probes, device="cpu", cache_dir=tmp_path)
    entry.write_bytes(b"garbage")
    with pytest.raises(CacheError, match="unreadable"):
        compute_signature(model, reverse_probes, device="cpu", cache_dir=tmp_path)


def test_state_dict_signature_equals_the_folder_signature(tiny_zoo, reverse_probes):
    from simmerge.io.checkpoint import open_checkpoint

    folder = tiny_zoo / "experts" / "caesar_a"
    state = dict(open_checkpoint(folder).iter_tensors())
    from_dir = compute_signature(folder, reverse_probes, device="cpu", use_cache=False)
    from_state = compute_signature(
        state, reverse_probes, device="cpu", reference_dir=folder, use_cache=False
    )
    for name, t in from_dir.tensors().items():
        assert torch.allclose(t.float(), from_state.tensors()[name].float(), atol=1e-5), name


def test_top_k_signatures_approximate_the_full_kl(tiny_zoo, reverse_probes):
    cfg = SignatureConfig(top_k=16, full_vocab_max=0)
    a_dir, b_dir = tiny_zoo / "experts" / "reverse_a", tiny_zoo / "experts" / "sort_a"
    full = functional_features(
        compute_signature(a_dir, reverse_probes, device="cpu", use_cache=False),
        compute_signature(b_dir, reverse_probes, device="cpu", use_cache=False),
    )
    a = compute_signature(a_dir, reverse_probes, config=cfg, device="cpu", use_cache=False)
    b = compute_signature(b_dir, reverse_probes, config=cfg, device="cpu", use_cache=False)
    assert not a.full and a.logprobs.shape[1] == 16 and float(a.tail.max()) > 0
    approx = functional_features(a, b)
    assert approx["kl_mean"] == pytest.approx(full["kl_mean"], rel=0.1)
    assert approx["js_mean"] == pytest.approx(full["js_mean"], rel=0.1)
    assert approx["entropy_a"] == pytest.approx(full["entropy_a"], rel=0.1)
    assert approx["top1_agreement"] == full["top1_agreement"]
    self_kl = functional_features(a, a)
    assert self_kl["kl_mean"] == pytest.approx(0.0, abs=1e-6)


def test_every_feature_is_finite_for_every_zoo_pair_and_probe_set(profiles):
    """Columns of layer groups the architecture lacks (Llama has no "other" tensors) are NaN by
    design (LightGBM treats NaN as missing); every other value is finite."""
    sketch = next(iter(profiles.values())).sketch
    absent = [g for i, g in enumerate(GROUPS) if not bool(sketch.segment_groups[i].any())]
    assert absent == ["other"]
    rows = feature_rows(profiles)
    n = len(profiles)
    n_sets = len(next(iter(profiles.values())).signatures)
    assert len(rows) == n * (n - 1) * n_sets
    assert rows[0].names == FEATURE_COLUMNS
    values = [(r.a, r.b, r.task, k, v) for r in rows for k, v in r.as_dict().items()]
    absent_cols = tuple(f"_{g}" for g in absent)
    assert all(math.isnan(v) for *_, k, v in values if k.endswith(absent_cols))
    bad = [x for x in values if not x[3].endswith(absent_cols) and not math.isfinite(x[4])]
    assert not bad


def test_similarities_are_symmetric_and_kl_is_not(profiles):
    names = sorted(profiles)
    kl_differs = False
    for x, y in combinations(names, 2):
        ab = pair_features(profiles[x], profiles[y], "reverse").as_dict()
        ba = pair_features(profiles[y], profiles[x], "reverse").as_dict()
        for k, v in ab.items():
            if k in SYMMETRIC or k.startswith(SYMMETRIC_PREFIXES):
                assert v == pytest.approx(ba[k], rel=1e-5, abs=1e-6, nan_ok=True), (x, y, k)
        assert ab["entropy_a"] == pytest.approx(ba["entropy_b"])
        assert ab["norm_ratio_all"] == pytest.approx(1 / ba["norm_ratio_all"])
        kl_differs |= abs(ab["kl_mean"] - ba["kl_mean"]) > 1e-3
    assert kl_differs


def test_a_model_against_itself_has_zero_divergence_and_unit_similarity(profiles):
    p = profiles["reverse_a"]
    f = pair_features(p, p, "reverse")
    for k in ("kl_mean", "kl_p90", "js_mean"):
        assert f[k] == pytest.approx(0.0, abs=1e-6), k
    for g in GROUPS:
        if math.isfinite(f[f"cos_{g}"]):
            assert f[f"cos_{g}"] == pytest.approx(1.0, abs=1e-6), g
            assert f[f"sign_conflict_d20_{g}"] == 0.0
            assert f[f"mask_jaccard_d20_{g}"] == pytest.approx(1.0)
    assert f["top1_agreement"] == 1.0 and f["cka_min"] == pytest.approx(1.0)


def test_sketch_estimates_are_within_the_promised_error_of_the_exact_pass(catalog, profiles):
    """Issue bound at the default sketch size: |cosine error| <= 0.02, |sign-conflict error|
    <= 0.01 (mask Jaccard held to the same 0.01); norms are exact up to float32 rounding."""
    base = catalog.checkpoint("base")
    worst = {"cos": 0.0, "sign_conflict": 0.0, "mask_jaccard": 0.0, "norm": 0.0}
    for x, y in combinations(sorted(profiles), 2):
        est = pair_features(profiles[x], profiles[y]).as_dict()
        exact = exact_structural_features(catalog.checkpoint(x), catalog.checkpoint(y), base)
        for k, v in exact.items():
            if not math.isfinite(v):
                continue
            stat = next(s for s in worst if k.startswith(s) or (s == "norm" and "norm" in k))
            worst[stat] = max(worst[stat], abs(est[k] - v))
    assert worst["cos"] <= 0.02, worst
    assert worst["sign_conflict"] <= 0.01, worst
    assert worst["mask_jaccard"] <= 0.01, worst
    assert worst["norm"] <= 1e-5, worst


def test_sketches_of_one_catalog_share_coordinates_and_are_cached(catalog, cache):
    base = catalog.checkpoint("base")
    a = sketch_task_vector(catalog.checkpoint("reverse_a"), base, cache_dir=cache, progress=False)
    b = sketch_task_vector(catalog.checkpoint("swap_a"), base, cache_dir=cache, progress=False)
    assert a.layout_hash == b.layout_hash
    assert torch.equal(a.segment_counts, b.segment_counts)
    again = sketch_task_vector(catalog.checkpoint("reverse_a"), base, cache_dir=cache)
    for name, t in a.tensors().items():
        assert torch.equal(t, again.tensors()[name]), name


def test_sketches_with_other_configs_are_not_comparable(catalog, cache):
    base = catalog.checkpoint("base")
    a = sketch_task_vector(catalog.checkpoint("reverse_a"), base, cache_dir=cache)
    b = sketch_task_vector(
        catalog.checkpoint("swap_a"), base, config=SketchConfig(sample_size=4096), use_cache=False
    )
    with pytest.raises(IncompatibleModelsError, match="same base"):
        from simmerge.signals.similarity import structural_features

        structural_features(a, b)


def test_features_cli_writes_every_ordered_pair_times_probe_set(tiny_zoo, cache, tmp_path):
    import pyarrow.parquet as pq

    from simmerge.cli.main import main

    out = tmp_path / "features.parquet"
    args = ["features", str(tiny_zoo / "catalog.yaml"), "--out", str(out)]
    assert main([*args, "--cache-dir", str(cache), "--device", "cpu", "--quiet"]) == 0
    table = pq.read_table(out).to_pylist()
    cat = Catalog.load(tiny_zoo / "catalog.yaml")
    n = len(cat.experts)
    assert len(table) == n * (n - 1) * (1 + len(cat.tasks))
    assert {r["task"] for r in table} == {"", *cat.tasks}
    assert list(table[0])[:3] == ["a", "b", "task"]
    assert list(table[0])[3:] == list(FEATURE_COLUMNS)


@pytest.mark.parametrize(
    "name, groups",
    [
        ("model.embed_tokens.weight", ("all", "embeddings")),
        ("lm_head.weight", ("all", "head")),
        ("model.norm.weight", ("all", "norms")),
        ("model.layers.0.self_attn.q_proj.weight", ("all", "attention", "depth_0")),
        ("model.layers.5.mlp.down_proj.weight", ("all", "mlp", "depth_1")),
        ("model.layers.11.post_attention_layernorm.weight", ("all", "norms", "depth_2")),
        ("transformer.h.3.attn.c_attn.weight", ("all", "attention", "depth_0")),
        ("transformer.wte.weight", ("all", "embeddings")),
    ],
)
def test_tensor_names_map_to_layer_groups(name, groups):
    assert tensor_groups(name, n_layers=12) == groups
