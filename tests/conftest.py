"""Shared fixtures. ``tiny_zoo`` builds the default zoo once per test run (cached across runs in
pytest's cache folder, since ``build_zoo`` returns at once when its manifest matches); set
``SIMMERGE_TEST_ZOO`` to a folder to use (or build) the zoo there instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_zoo(request) -> Path:
    import torch

    from simmerge.zoo import build_zoo

    # one thread: tiny models gain little from more, and a busy second core makes two
    # threads spin-wait (measured 20x slower training while another process ran)
    torch.set_num_threads(1)
    env = os.environ.get("SIMMERGE_TEST_ZOO")
    folder = Path(env) if env else Path(request.config.cache.mkdir("simmerge-tiny-zoo-default"))
    return build_zoo(folder, size="default", seed=0, progress=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A micro zoo, its outcomes and features, and a predictor fitted on them."""
    import torch
    from _factories import MICRO3, SMALL_GRID

    from simmerge.catalog import Catalog
    from simmerge.learn.datasets import feature_frame, outcome_frame
    from simmerge.learn.fitting import fit_predictor
    from simmerge.outcomes.collection import collect_outcomes
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.signals.profiles import FeatureOptions
    from simmerge.signals.signatures import SignatureConfig
    from simmerge.zoo.build import build_from_recipe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("e2e")
    catalog = Catalog.load(build_from_recipe(root / "zoo", MICRO3, progress=False) / "catalog.yaml")
    options = FeatureOptions(cache_dir=root / "cache", signature=SignatureConfig(max_length=32))
    store_path = root / "o.sqlite"
    with OutcomeStore(store_path) as store:
        collect_outcomes(catalog, store, SMALL_GRID, progress=False)
        outcomes = outcome_frame(store, catalog)
    features = feature_frame(catalog, options, progress=False)
    model = fit_predictor(features, outcomes, n_models=2, cv_folds=0)
    model.save(root / "predictor")
    return {
        "catalog": catalog,
        "catalog_path": root / "zoo" / "catalog.yaml",
        "options": options,
        "store": store_path,
        "predictor": root / "predictor",
        "outcomes": outcomes,
        "features": features,
    }


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    import torch
    from _factories import save_model

    """A base and three experts (fp32), plus a bf16 expert and a sharded expert."""
    root = tmp_path_factory.mktemp("tiny_models")
    base = save_model(root / "base", seed=0)
    out = {"base": base}
    for i, name in enumerate(["a", "b", "c"], start=1):
        out[name] = save_model(root / name, seed=i, base=base)
    out["bf16"] = save_model(root / "bf16", seed=7, base=base, dtype=torch.bfloat16)
    out["sharded"] = save_model(root / "sharded", seed=8, base=base, max_shard_size="20KB")
    return out


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct dequantized from the GGUF that scripts/setup.sh fetches."""
    from _factories import SMOLLM2_GGUF

    if not SMOLLM2_GGUF.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{SMOLLM2_GGUF} is missing: scripts/setup.sh fetches it in CI")
        pytest.skip(f"run `simmerge zoo fetch-base smollm2 --out {SMOLLM2_GGUF.parent}` first")
    from simmerge.io.gguf import materialize_gguf

    return materialize_gguf(SMOLLM2_GGUF, cache_dir=tmp_path_factory.mktemp("gguf-cache"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A real two-node Ray cluster on this machine (tests/_ray_cluster.py: one CPU per node),
    started for the test module that asks for it and stopped after it, failed or not."""
    ray = pytest.importorskip("ray", reason="the Ray executor is the extra simmerge[ray]")
    import crash_jobs
    from _ray_cluster import LocalRayCluster

    # the test jobs live in the test folder, which Ray's workers do not import from
    ray.cloudpickle.register_pickle_by_value(crash_jobs)
    with LocalRayCluster(nodes=2, cpus=1) as cluster:
        yield cluster
