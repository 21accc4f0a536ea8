"""The tiny zoo: catalog format, real HF folders, determinism, caching, resumption and the
quality floor that makes it a useful default catalog for merge prediction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from simmerge.evaluation.harness import EvalTask
from simmerge.io.models import load_model, load_tokenizer
from simmerge.zoo.build import MANIFEST, ExpertSpec, ZooRecipe, build_from_recipe
from simmerge.zoo.tasks import TASKS
from simmerge.zoo.tokenizer import build_tokenizer
from simmerge.zoo.train import ModelShape, encode_example

MICRO = ZooRecipe(
    name="micro-zoo",
    tasks=("reverse", "sort"),
    shape=ModelShape(hidden=32, intermediate=64, layers=2, heads=2),
    base_steps=6,
    batch_size=8,
    expert_batch_size=8,
    eval_size=4,
    probe_size=3,
    experts=(
        ExpertSpec("reverse_a", ("reverse",), 1, 3, 1e-3),
        ExpertSpec("both", ("reverse", "sort"), 2, 3, 1e-3),
    ),
)


def _weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


# --- cheap tests on a micro recipe -------------------------------------------------------------


def test_tokenizer_encoding_matches_training_sequences():
    tok = build_tokenizer()
    spec = TASKS["caesar"]
    ids, start = encode_example("caesar", "abz", spec.fn("abz"))
    assert tok(spec.prompt("abz"))["input_ids"] == ids[:start]
    assert tok.decode(ids[start:], skip_special_tokens=True) == "bca"


def test_micro_build_is_deterministic_for_a_seed(tmp_path):
    a = build_from_recipe(tmp_path / "a", MICRO, seed=5, progress=False)
    b = build_from_recipe(tmp_path / "b", MICRO, seed=5, progress=False)
    c = build_from_recipe(tmp_path / "c", MICRO, seed=6, progress=False)
    for name in ("base", "experts/reverse_a", "experts/both"):
        assert _weights(a / name) == _weights(b / name)
        assert _weights(a / name) != _weights(c / name)
    assert (a / "eval" / "sort.jsonl").read_text() == (b / "eval" / "sort.jsonl").read_text()


def test_partial_build_resumes_only_missing_models(tmp_path):
    out = build_from_recipe(tmp_path / "z", MICRO, seed=0, progress=False)
    before = {
        n: os.stat(out / n / "model.safetensors").st_mtime_ns for n in ("base", "experts/reverse_a")
    }
    reference = _weights(out / "experts/both")
    # simulate a crash: the manifest is written last, the last expert never got renamed
    (out / MANIFEST).unlink()
    os.rename(out / "experts/both", out / "experts/.both.tmp-crashed")
    build_from_recipe(out, MICRO, seed=0, progress=False)
    for n, mtime in before.items():
        assert os.stat(out / n / "model.safetensors").st_mtime_ns == mtime  # reused
    assert _weights(out / "experts/both") == reference  # rebuilt identically
    assert (out / MANIFEST).is_file()


def test_changed_recipe_rebuilds_models_of_the_old_recipe(tmp_path):
    out = build_from_recipe(tmp_path / "z", MICRO, seed=0, progress=False)
    old = _weights(out / "experts/reverse_a")
    changed = ZooRecipe(
        **{**MICRO.__dict__, "experts": (ExpertSpec("reverse_a", ("reverse",), 1, 4, 1e-3),)}
    )
    build_from_recipe(out, changed, seed=0, progress=False)
    assert _weights(out / "experts/reverse_a") != old
    assert not (out / "experts/both").exists()  # the catalog and the folder agree
    assert [e["name"] for e in yaml.safe_load((out / "catalog.yaml").read_text())["experts"]] == [
        "reverse_a"
    ]


def test_recipe_with_unknown_task_is_rejected(tmp_path):
    from simmerge.errors import ConfigError

    bad = ZooRecipe(**{**MICRO.__dict__, "tasks": ("reverse", "parity")})
    with pytest.raises(ConfigError, match="parity"):
        build_from_recipe(tmp_path / "z", bad, progress=False)


def test_other_seeds_name_their_catalog_apart():
    """Outcome and feature tables key rows on the catalog name: two seeds' rows must not mix."""
    from simmerge.zoo.build import catalog_yaml

    assert yaml.safe_load(catalog_yaml(MICRO))["name"] == MICRO.name
    assert yaml.safe_load(catalog_yaml(MICRO, seed=2))["name"] == f"{MICRO.name}-s2"


# --- the default zoo (built once per run by the tiny_zoo fixture) -----------------------------


@pytest.mark.slow
def test_catalog_has_the_documented_format_and_loads(tiny_zoo):
    from simmerge.catalog import Catalog

    doc = yaml.safe_load((tiny_zoo / "catalog.yaml").read_text())
    assert set(doc) == {"name", "base", "experts", "tasks"}
    assert doc["base"] == {"name": "base", "path": "base"}
    assert all(set(e) == {"name", "path", "tasks"} for e in doc["experts"])
    assert all(set(t) == {"eval", "probes"} for t in doc["tasks"].values())
    assert len(doc["experts"]) >= 10
    assert any(len(e["tasks"]) >= 2 for e in doc["experts"])
    own_tasks = {t for e in doc["experts"] for t in e["tasks"]}
    assert len(own_tasks) >= 6 and own_tasks <= set(doc["tasks"])
    cat = Catalog.load(tiny_zoo / "catalog.yaml")  # validates shapes, vocab, architecture
    assert len(cat.experts) == len(doc["experts"])


@pytest.mark.slow
def test_every_model_folder_is_a_loadable_hf_folder(tiny_zoo):
    doc = yaml.safe_load((tiny_zoo / "catalog.yaml").read_text())
    folders = [tiny_zoo / doc["base"]["path"]] + [tiny_zoo / e["path"] for e in doc["experts"]]
    for f in folders:
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (f / name).is_file(), f / name
    model = load_model(folders[0], device="cpu")
    assert model.config.model_type == "llama" and not model.config.tie_word_embeddings
    assert load_tokenizer(folders[1])("<sort>ba=")["input_ids"][0] == model.config.bos_token_id


@pytest.mark.slow
def test_eval_and_probe_files_have_their_formats(tiny_zoo):
    doc = yaml.safe_load((tiny_zoo / "catalog.yaml").read_text())
    for name, t in doc["tasks"].items():
        task = EvalTask.load(tiny_zoo / t["eval"])
        assert task.kind == "exact_match" and len(task.examples) >= 50, name
        rows = [json.loads(line) for line in (tiny_zoo / t["probes"]).read_text().splitlines()]
        assert rows and all(set(r) == {"id", "text"} for r in rows)


@pytest.mark.slow
def test_remeasure_catalog_draws_a_disjoint_eval_set_for_the_same_models(tiny_zoo, tmp_path):
    """A second measurement must score the same models on new examples of the same tasks."""
    import shutil

    from simmerge.catalog import Catalog
    from simmerge.zoo.build import remeasure_catalog

    for name in ("catalog.yaml", MANIFEST):
        shutil.copy(tiny_zoo / name, tmp_path / name)
    shutil.copytree(tiny_zoo / "eval", tmp_path / "eval")
    for folder in ("base", "experts", "probes"):
        (tmp_path / folder).symlink_to(tiny_zoo / folder)
    first = Catalog.load(tmp_path / "catalog.yaml")
    second = Catalog.load(remeasure_catalog(tmp_path, 300))
    assert (second.name, second.expert_names) == (first.name, first.expert_names)
    held = {t for e in first.experts for t in e.tasks}
    for t, spec in second.tasks.items():
        if t not in held:  # no expert to measure it for: left as it was
            assert spec.eval == first.tasks[t].eval
            continue
        old, new = EvalTask.load(first.tasks[t].eval), EvalTask.load(spec.eval)
        assert len(new.examples) == 300
        assert not {e.prompt for e in old.examples} & {e.prompt for e in new.examples}
        lengths = {len(e.prompt) for e in old.examples}
        assert {len(e.prompt) for e in new.examples} == lengths  # same input lengths
        assert new.config_hash() != old.config_hash()  # the store tells the two apart
    again = (tmp_path / "eval-remeasure" / "reverse.jsonl").read_text()
    remeasure_catalog(tmp_path, 300)
    assert (tmp_path / "eval-remeasure" / "reverse.jsonl").read_text() == again


@pytest.mark.slow
def test_second_build_and_the_cli_reuse_the_zoo(tiny_zoo, capsys):
    from simmerge.cli.main import main
    from simmerge.zoo import build_zoo

    stamp = os.stat(tiny_zoo / MANIFEST).st_mtime_ns
    build_zoo(tiny_zoo, progress=False)
    assert main(["zoo", "build", "--out", str(tiny_zoo)]) == 0
    assert os.stat(tiny_zoo / MANIFEST).st_mtime_ns == stamp  # reused, not rebuilt
    assert capsys.readouterr().out.strip().endswith("catalog.yaml")


# --- quality floor -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def floor(tiny_zoo, tmp_path_factory):
    """Every ordered expert pair merged with every candidate of the default grid (the outcome
    collection that trains the predictor), plus base and expert scores."""
    from simmerge.catalog import Catalog
    from simmerge.evaluation.scorer import MergeScorer
    from simmerge.outcomes.collection import collect_outcomes
    from simmerge.outcomes.store import OutcomeStore
    from simmerge.zoo.quality import kept_shares

    cat = Catalog.load(tiny_zoo / "catalog.yaml")
    store_path = Path(os.environ.get("SIMMERGE_FLOOR_STORE") or tmp_path_factory.mktemp("floor"))
    with OutcomeStore(store_path / "outcomes.sqlite") as store:
        collect_outcomes(cat, store, progress=False)
        # kept[(a, b)][candidate] = (share of a's skill kept, share of b's)
        pairs = kept_shares(cat, store)
    scorer = MergeScorer(cat, "cpu")
    base_state = dict(cat.checkpoint(cat.base.name).iter_tensors())
    base_scores = scorer.score_state(base_state, scorer.tasks)
    expert_scores = {e.name: scorer.score_folder(e, e.tasks) for e in cat.experts}

    def own(scored, expert):
        return sum(scored[t] for t in expert.tasks) / len(expert.tasks)

    return {
        "catalog": cat,
        "base": base_scores,
        "experts": expert_scores,
        "pairs": pairs,
        "own": own,
    }


@pytest.mark.slow
def test_every_expert_beats_the_base_on_its_own_tasks_by_030(floor):
    for e in floor["catalog"].experts:
        gain = floor["own"](floor["experts"][e.name], e) - floor["own"](floor["base"], e)
        assert gain >= 0.30, (e.name, gain)


@pytest.mark.slow
def test_best_operator_keeps_half_of_both_experts_for_half_of_the_pairs(floor):
    best = {p: max(min(k) for k in kept.values()) for p, kept in floor["pairs"].items()}
    passing = [p for p, v in best.items() if v >= 0.5]
    assert len(passing) >= len(best) / 2, sorted(best.items(), key=lambda kv: kv[1])


@pytest.mark.slow
def test_operators_disagree_on_most_pairs(floor):
    def spread(kept):
        means = [sum(k) / 2 for k in kept.values()]
        return max(means) - min(means)

    disagreeing = [p for p, kept in floor["pairs"].items() if spread(kept) >= 0.1]
    assert len(disagreeing) > len(floor["pairs"]) / 2


@pytest.mark.slow
def test_demo_ranks_verifies_the_top_k_and_compares_with_the_whole_grid(tiny_zoo):
    from simmerge.catalog import Catalog
    from simmerge.cli.formatting import format_report
    from simmerge.demo import run_demo
    from simmerge.merging.grid import DEFAULT_GRID

    cat = Catalog.load(tiny_zoo / "catalog.yaml")
    report = run_demo(cat, n_pairs=1, k=3, device="cpu", progress=False, exhaustive=True)
    assert {e["name"] for e in report["experts"]} == set(cat.expert_names)
    (pair,) = report["pairs"]
    ranks = [c["rank"] for c in pair["top"]]  # the 3 best-ranked distinct merges
    assert len(ranks) == 3 and ranks[0] == 1 and ranks == sorted(ranks)
    assert len(pair["measured"]) == len(DEFAULT_GRID)
    assert pair["oracle_actual"] == max(pair["measured"].values())
    assert pair["chosen_actual"] == max(c["actual"] for c in pair["top"])
    from simmerge.learn.loading import load_predictor

    fixed = load_predictor(None).card_["selection"]["best_fixed"]
    assert pair["best_fixed"] == fixed  # from the shipped predictor's card
    assert pair["best_fixed_actual"] == pair["measured"][fixed]
    for c in pair["top"]:
        assert c["actual"] == pair["measured"][c["candidate"]]
    mw = report["multiway"]  # one 3-task merge, planned, its top 3 merged and evaluated
    assert len(mw["tasks"]) == 3 and mw["plans"][0]["rank"] == 1
    assert set(mw["actual_per_task"]) == set(mw["tasks"])
    assert 0 <= mw["actual"] <= 2
    assert [v["candidate"] for v in mw["verified"]] == [p["plan"] for p in mw["plans"]]
    assert mw["verified"][0]["actual"] == mw["actual"]
    best = max(mw["verified"], key=lambda v: v["actual"])
    assert mw["best_verified"] == best["candidate"]
    text = format_report(report)
    assert "exhaustive best" in text and "multi-way merge for" in text
