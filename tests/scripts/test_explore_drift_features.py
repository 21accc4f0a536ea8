"""scripts/explore_drift_features.py: each expert's drift from the base, on the right rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from _factories import load_script


def _drift(expert, probe_set, kl):
    return {"expert": expert, "set": probe_set, "kl_mean": kl, "top1_agreement": 1 - kl / 10}


def test_each_side_gets_its_own_experts_drift_on_the_rows_task_and_on_the_general_set():
    script = load_script("explore_drift_features")
    drift = pd.DataFrame(
        [
            _drift("x", "general", 1.0),
            _drift("y", "general", 2.0),
            _drift("x", "add", 3.0),
            _drift("y", "add", 4.0),
            _drift("x", "sub", 5.0),
            _drift("y", "sub", 6.0),
        ]
    )
    frame = pd.DataFrame(
        {"a": ["x", "y", "x"], "b": ["y", "x", "y"], "task": ["add", "sub", "mul"], "v": [1, 2, 3]}
    )
    out = script.with_drift(frame, drift)
    assert list(out["drift_a_kl_mean"]) == [1.0, 2.0, 1.0]
    assert list(out["drift_b_kl_mean"]) == [2.0, 1.0, 2.0]
    assert list(out["task_drift_a_kl_mean"][:2]) == [3.0, 6.0]
    assert list(out["task_drift_b_kl_mean"][:2]) == [4.0, 5.0]
    # a task without probes has no drift: missing, not another task's
    assert math.isnan(out["task_drift_a_kl_mean"][2])
    assert list(out["v"]) == [1, 2, 3]  # rows neither lost, duplicated nor reordered
    cols = script.variant_columns(out)
    assert set(cols["drift_task"]) - set(cols["plain"]) == {
        f"task_drift_{s}_{c}" for s in "ab" for c in ("kl_mean", "top1_agreement")
    }
    assert set(cols["drift_all"]) > set(cols["drift_task"])


def test_the_base_has_no_drift_and_a_fine_tune_has_some(trained):
    script = load_script("explore_drift_features")
    catalog = trained["catalog"]
    options = trained["options"]
    from simmerge.signals.profiles import catalog_probe_sets
    from simmerge.signals.signatures import compute_signatures

    probes = catalog_probe_sets(catalog, options)["general"]
    (base,) = compute_signatures(
        catalog.base.path,
        [probes],
        config=options.signature,
        cache_dir=options.cache_dir,
        progress=False,
    )
    same = script.drift_row(base, base)
    assert same["kl_mean"] == pytest.approx(0, abs=1e-6)
    assert same["kl_from_base"] == pytest.approx(0, abs=1e-6)
    assert same["top1_agreement"] == 1.0
    table = script.drift_table(catalog, options)
    assert len(table) == len(catalog.experts) * len(catalog_probe_sets(catalog, options))
    assert (table["kl_mean"] > 0).all() and (table["kl_from_base"] > 0).all()
