"""Catalog scans: the four outputs, resume (a finished stage is never redone; SIGKILL at random
points is tests/safety/test_crash.py's), the Ray executor's outputs on a real two-node cluster
equal the local ones (and a dead worker is retried), the report is self-contained and plots
verified outcomes, export to mergekit, and the public API. Runs on the default tiny zoo."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _factories import assert_same_outputs, mtimes

from simmerge.errors import ConfigError
from simmerge.infra.executors import LocalExecutor, make_executor
from simmerge.learn.plan_model import load_plan_model
from simmerge.scanning.layout import FEATURES_FILE, REPORT_FILE, load_ranking
from simmerge.scanning.pipeline import STAGES, ScanSettings, scan
from simmerge.signals.profiles import FeatureOptions

pytestmark = pytest.mark.slow
SETTINGS = ScanSettings(top=3, plans=3, max_models=3, beam=2)


@pytest.fixture(scope="module")
def scanned(tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    options = FeatureOptions(cache_dir=root / "cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = scan(
            tiny_zoo / "catalog.yaml",
            root / "out",
            options=options,
            settings=SETTINGS,
            progress=False,
        )
    warned = [str(w.message) for w in caught]
    return {"root": root, "result": result, "options": options, "zoo": tiny_zoo, "warned": warned}


def test_scan_writes_features_ranking_report_and_figures(scanned):
    from simmerge.catalog import Catalog

    out = scanned["root"] / "out"
    catalog = Catalog.load(scanned["zoo"] / "catalog.yaml")
    n = len(catalog.experts)
    features = pd.read_parquet(out / FEATURES_FILE)
    assert len(features.groupby(["a", "b"])) == n * (n - 1)  # every ordered pair
    ranking = load_ranking(out)
    assert len(ranking["pairs"]) == n * (n - 1) // 2
    for pair in ranking["pairs"]:
        assert pair["best"] == pair["candidates"][0] and len(pair["candidates"]) == SETTINGS.top
        assert len(pair["predictions"]) == 20  # the whole grid is scored, only top kept
        assert pair["best"]["top_features"]  # the chosen merge is explained
    assert 1 <= len(ranking["plans"]) <= SETTINGS.plans
    assert all(len(p["members"]) <= SETTINGS.max_models for p in ranking["plans"])
    # plans re-scored by the shipped plan model, which the ranking names
    assert {p["ranked_by"] for p in ranking["plans"]} == {"plan model"}
    shipped = load_plan_model(None).card_["training_sources"]
    assert ranking["plan_model"]["trained_on"] == shipped
    assert "smol-small" not in shipped  # the main job's catalog stays unseen
    # no predictor given: plan steps come from the predictor the plan model learned from
    step = load_plan_model(None).step_predictor
    assert step and ranking["plan_model"]["step_predictor"] == step
    assert not [w for w in scanned["warned"] if "step predictions" in w]
    for fig in ("heatmap", "clusters", "features"):
        assert (out / f"report_{fig}.png").read_bytes()[:4] == b"\x89PNG"
    assert set(scanned["result"].seconds) == {*STAGES, "ranking_pairs", "ranking_plans"}


def test_rescan_recomputes_nothing_and_rewrites_no_file(scanned):
    root = scanned["root"]
    before = mtimes(root)
    again = scan(
        scanned["zoo"] / "catalog.yaml",
        root / "out",
        options=scanned["options"],
        settings=SETTINGS,
        progress=False,
    )
    assert sorted(again.skipped) == sorted(STAGES) and again.seconds == {}
    assert mtimes(root) == before


def test_changed_settings_redo_only_the_ranking_and_report(scanned, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(scanned["root"] / "out", out)
    features_before = (out / FEATURES_FILE).stat().st_mtime_ns
    result = scan(
        scanned["zoo"] / "catalog.yaml",
        out,
        options=scanned["options"],
        settings=ScanSettings(top=2, plans=0),
        progress=False,
    )
    assert "pair_features" in result.skipped and "ranking" in result.seconds
    assert (out / FEATURES_FILE).stat().st_mtime_ns == features_before
    ranking = load_ranking(out)
    assert ranking["plans"] == [] and "switched off" in ranking["plans_note"]
    assert all(len(p["candidates"]) == 2 for p in ranking["pairs"])


def test_scanning_without_the_plan_model_redoes_the_plans_analytically(scanned, tmp_path):
    import dataclasses
    import shutil

    out = tmp_path / "out"
    shutil.copytree(scanned["root"] / "out", out)
    result = scan(
        scanned["zoo"] / "catalog.yaml",
        out,
        options=scanned["options"],
        settings=dataclasses.replace(SETTINGS, plan_model="none"),
        progress=False,
    )
    assert "ranking" in result.seconds  # the plan model is part of the ranking's key
    ranking = load_ranking(out)
    assert ranking["plan_model"] is None and ranking["plans"]
    assert {p["ranked_by"] for p in ranking["plans"]} == {"analytic"}


def test_report_is_self_contained_html(scanned):
    page = (scanned["root"] / "out" / REPORT_FILE).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == 3  # heatmap, clusters, features
    ranking = load_ranking(scanned["root"] / "out")
    for pair in ranking["pairs"]:
        assert pair["best"]["plan_id"] in page
    assert "No verified outcomes" in page


def test_report_plots_verified_outcomes_against_predictions(scanned, tmp_path):
    import shutil

    from simmerge.catalog import Catalog
    from simmerge.pairwise.rank import rank_merges
    from simmerge.pairwise.verify import verify
    from simmerge.scanning.report import verified_points

    out = tmp_path / "out"
    shutil.copytree(scanned["root"] / "out", out)
    catalog = Catalog.load(scanned["zoo"] / "catalog.yaml")
    ranking = load_ranking(out)
    a, b = ranking["pairs"][0]["models"]
    ranked = rank_merges(catalog, (a, b), top=None, options=scanned["options"], contributions=0)
    store = tmp_path / "o.sqlite"
    report = verify(catalog, ranked, k=1, store=store)
    result = scan(
        catalog, out, options=scanned["options"], settings=SETTINGS, store=store, progress=False
    )
    assert result.skipped == list(STAGES[:5]) and "report" in result.seconds
    page = (out / REPORT_FILE).read_text()
    assert "No verified outcomes" not in page and (out / "report_scatter.png").is_file()
    from simmerge.scanning.report import _verified

    points = verified_points(ranking, _verified(store, catalog.name))
    verified = report.verified[0]
    assert sorted(points) == sorted(
        (ranked[0].per_task[t], verified.per_task[t]) for t in verified.per_task
    )


def _sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_ray_executor_gives_the_local_outputs(scanned, ray_cluster, tmp_path):
    """On a real two-node cluster (tests/_ray_cluster.py), not an in-process ``ray.init()``."""
    options = FeatureOptions(cache_dir=tmp_path / "cache")
    result = scan(
        scanned["zoo"] / "catalog.yaml",
        tmp_path / "out",
        executor="ray",
        address=ray_cluster.address,
        options=options,
        settings=SETTINGS,
        progress=False,
    )
    assert "signatures" in result.seconds and "sketches" in result.seconds
    assert any((tmp_path / "cache" / "signatures").iterdir())  # written by Ray workers
    assert_same_outputs(tmp_path / "out", scanned["root"] / "out")


def test_ray_executor_retries_a_job_whose_worker_died(ray_cluster, tmp_path):
    from crash_jobs import Spied, exit_once, nodes_used

    log = tmp_path / "log"
    log.mkdir()
    runner = make_executor("ray", address=ray_cluster.address)
    try:
        markers = [str(tmp_path / f"m{i}") for i in range(4)]
        spied = Spied(runner, str(log))
        assert spied.map(exit_once, markers, desc="jobs", progress=False) == ["ok"] * 4
        assert all(Path(m).is_file() for m in markers)  # each worker did die once
        assert len(nodes_used(log)) == 2  # on both nodes
    finally:
        runner.close()


def test_local_process_pool_keeps_item_order():
    """Jobs that finish in reverse order still come back in item order."""
    pool = LocalExecutor(workers=2)
    delays = [0.6, 0.4, 0.2, 0.0]
    assert pool.map(time.sleep, delays, desc="x", progress=False) == [None] * 4
    assert pool.map(_sleep_then_return, delays, desc="x", progress=False) == delays
    with pytest.raises(ConfigError, match="workers"):
        LocalExecutor(workers=0)
    with pytest.raises(ConfigError, match="Unknown executor"):
        make_executor("dask")


def test_export_writes_a_mergekit_config_for_a_pair_and_a_chain(scanned, tmp_path):
    from simmerge.catalog import Catalog
    from simmerge.cli.main import main
    from simmerge.merging import MergePlan
    from simmerge.multiway.search import MultiwayPlan

    out = scanned["root"] / "out"
    catalog = Catalog.load(scanned["zoo"] / "catalog.yaml")
    ranking = load_ranking(out)
    best = ranking["pairs"][0]["best"]
    target = tmp_path / "merge.yaml"
    assert main(["export", best["plan_id"], "--scan", str(out), "--out", str(target)]) == 0
    plan = MergePlan.from_mergekit_dict(yaml.safe_load(target.read_text()))
    a, b = (catalog.model(n) for n in best["models"])
    from simmerge.merging.grid import OperatorConfig

    want = OperatorConfig.from_id(best["candidate"]).plan(str(catalog.base.path), a.path, b.path)
    assert plan.plan_id == want.plan_id == best["plan_id"]

    chain = MultiwayPlan(("caesar_a", "sort_a", "rotate_a"), ("linear", "ties[density=0.5]"))
    entry = {**ranking, "plans": [{"plan_id": chain.plan_id, "members": list(chain.members),
                                   "steps": list(chain.steps), "oneshot": False}]}  # fmt: skip
    from simmerge.scanning.export import export_plan

    docs = list(yaml.safe_load_all(export_plan(entry, chain.plan_id, catalog)))
    assert [d.get("name") for d in docs] == ["step_1", None]  # the final model is unnamed
    assert docs[0]["merge_method"] == "linear" and docs[1]["merge_method"] == "ties"
    assert docs[1]["models"][0]["model"] == "step_1"  # step 2 reads step 1's output
    with pytest.raises(ConfigError, match="No ranked merge"):
        export_plan(ranking, "000000000000", catalog)


def test_scan_cli_prints_stage_times(scanned, capsys):
    from simmerge.cli.main import main

    args = ["scan", str(scanned["zoo"] / "catalog.yaml"), "--out", str(scanned["root"] / "out")]
    args += ["--cache-dir", str(scanned["options"].cache_dir), "--top", "3", "--plans", "3"]
    args += ["--max-models", "3", "--beam", "2", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "(done)" in text and "wrote report.html" in text


def test_public_api_names_are_documented_and_import_lazily():
    import simmerge

    for name in ("Catalog", "merge", "compute_signature", "pair_features", "MergePredictor",
                 "rank_merges", "plan_merge", "verify", "MergeBandit", "scan"):  # fmt: skip
        obj = getattr(simmerge, name)
        assert callable(obj) and (obj.__doc__ or "").strip(), name
    code = "import sys, simmerge; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for name in simmerge.__all__[1:]:  # every exported name is described in the package docs
        assert f"``{name}``" in simmerge.__doc__, name


def test_readme_python_api_walkthrough_runs(scanned, tmp_path, monkeypatch):
    """The README's "Python API" block, run as written on the tiny zoo (paths swapped)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    zoo, runs = str(scanned["zoo"]), str(tmp_path / "runs")
    code = code.replace("runs/zoo", zoo).replace('"runs/', f'"{runs}/')
    assert code.count(zoo) >= 3 and "runs/" not in code.replace(zoo, "").replace(runs, "")
    monkeypatch.setenv("SIMMERGE_CACHE", str(scanned["options"].cache_dir))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # models/default is relative
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "runs" / "merged" / "config.json").is_file()
    assert namespace["result"].report.is_file() and namespace["plans"]
    # verify measured the top 3 in rank order and recorded what it measured in the store
    report, ranked = namespace["report"], namespace["ranked"]
    assert [v.candidate for v in report.verified] == [c.candidate for c in ranked[:3]]
    from simmerge.outcomes.store import OutcomeStore

    with OutcomeStore(tmp_path / "runs" / "outcomes.sqlite") as store:
        rows = [o for o in store.outcomes() if o.candidate == report.best.candidate]
    assert rows and sum(o.normalized for o in rows) / len(rows) == pytest.approx(report.best.actual)


def test_two_experts_one_without_tasks_scan_with_a_note_instead_of_plans(scanned, tmp_path):
    from simmerge.zoo.micro import sub_catalog

    catalog = sub_catalog(scanned["zoo"], tmp_path, {"reverse_sort": None, "rotate_a": []})
    scan(catalog, tmp_path / "out", options=scanned["options"], settings=SETTINGS, progress=False)
    ranking = load_ranking(tmp_path / "out")
    assert [sorted(p["models"]) for p in ranking["pairs"]] == [["reverse_sort", "rotate_a"]]
    assert ranking["plans"] == [] and "only 1 expert" in ranking["plans_note"]
    assert "No multi-way plans" in (tmp_path / "out" / REPORT_FILE).read_text()


def test_unknown_target_tasks_fail_before_any_work(scanned, tmp_path):
    settings = ScanSettings(tasks=("reverse", "nope"))
    with pytest.raises(ConfigError, match="nope"):
        scan(scanned["zoo"] / "catalog.yaml", tmp_path / "out", settings=settings, progress=False)
    assert not any((tmp_path / "out").iterdir())
    assert ScanSettings(tasks=("sort", " sort", "reverse")).tasks == ("sort", "reverse")
    with pytest.raises(ConfigError, match="mode"):
        ScanSettings(mode="slow")
