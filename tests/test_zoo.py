"""The tiny zoo: catalog format, real HF folders, determinism, caching, resumption and the
quality floor that makes it a useful default catalog for merge prediction."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import yaml

from simmerge.evaluate import EvalTask, evaluate, load_model, load_tokenizer
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
def test_second_build_and_the_cli_reuse_the_zoo(tiny_zoo, capsys):
    from simmerge.cli import main
    from simmerge.zoo import build_zoo

    stamp = os.stat(tiny_zoo / MANIFEST).st_mtime_ns
    build_zoo(tiny_zoo, progress=False)
    assert main(["zoo", "build", "--out", str(tiny_zoo)]) == 0
    assert os.stat(tiny_zoo / MANIFEST).st_mtime_ns == stamp  # reused, not rebuilt
    assert capsys.readouterr().out.strip().endswith("catalog.yaml")


# --- quality floor -----------------------------------------------------------------------------

# Operator configurations tried per pair; "best operator" is the best of these.
OPERATOR_GRID = (
    ("linear", {}),
    ("task_arithmetic", {"lambda": 0.6}),
    ("task_arithmetic", {"lambda": 0.7}),
    ("task_arithmetic", {"lambda": 0.8}),
    ("task_arithmetic", {"lambda": 1.0}),
    ("ties", {"density": 0.3, "lambda": 1.0}),
    ("ties", {"density": 0.6, "lambda": 1.0}),
    ("dare_linear", {"density": 0.5, "seed": 0}),
    ("dare_ties", {"density": 0.5, "seed": 0}),
    ("slerp", {"t": 0.5}),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.01}),
    ("della", {"density": 0.5, "epsilon": 0.1}),
    ("della", {"density": 0.7, "epsilon": 0.1}),
    ("model_stock", {}),
)


@pytest.fixture(scope="module")
def floor(tiny_zoo):
    """Scores of base, experts and every expert pair under every operator configuration."""
    from simmerge.catalog import Catalog
    from simmerge.demo import pair_plan
    from simmerge.merge import merge

    cat = Catalog.load(tiny_zoo / "catalog.yaml")
    tasks = {n: EvalTask.load(t.eval) for n, t in cat.tasks.items()}
    tok = load_tokenizer(cat.base.path)
    probe = load_model(cat.base.path, device="cpu")

    def scores(state, names):
        probe.load_state_dict(state)
        return {t: evaluate(probe, tasks[t], tokenizer=tok, batch_size=100).score for t in names}

    def own(scored, expert):
        return sum(scored[t] for t in expert.tasks) / len(expert.tasks)

    from safetensors.torch import load_file

    base_scores = scores(load_file(cat.base.path / "model.safetensors"), tasks)
    expert_scores = {
        e.name: scores(load_file(e.path / "model.safetensors"), e.tasks) for e in cat.experts
    }
    pairs = {}
    for a, b in itertools.combinations(cat.experts, 2):
        kept = {}
        for op, params in OPERATOR_GRID:
            plan = pair_plan(cat, a, b, op, params)
            s = scores(merge(plan, device="cpu"), sorted({*a.tasks, *b.tasks}))
            kept[f"{op}{params}"] = (
                own(s, a) / own(expert_scores[a.name], a),
                own(s, b) / own(expert_scores[b.name], b),
            )
        pairs[(a.name, b.name)] = kept
    report = os.environ.get("SIMMERGE_FLOOR_REPORT")  # optional: dump the measured numbers
    if report:
        Path(report).write_text(
            json.dumps(
                {
                    "base": base_scores,
                    "experts": expert_scores,
                    "pairs": {f"{a}+{b}": kept for (a, b), kept in pairs.items()},
                },
                indent=1,
            )
        )
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
@pytest.mark.xfail(
    strict=True,
    reason=(
        "issue 3 quality floor not reached yet: with the default recipe the best of the operator "
        "grid keeps >= 0.5 of both experts for 17 of 45 pairs (needs 23); strict, so this "
        "fails loudly once a recipe reaches the floor and the marker must go"
    ),
)
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
def test_demo_scores_every_expert_and_every_operator_on_a_pair(tiny_zoo):
    from simmerge.catalog import Catalog
    from simmerge.demo import DEMO_GRID, format_report, run_demo

    cat = Catalog.load(tiny_zoo / "catalog.yaml")
    report = run_demo(cat, n_pairs=1, device="cpu", progress=False)
    assert {e["name"] for e in report["experts"]} == set(cat.expert_names)
    assert [r["operator"] for r in report["rows"]] == [op for op, _ in DEMO_GRID]
    row = report["rows"][0]
    expert = {(e["name"], e["task"]): e["expert_score"] for e in report["experts"]}
    assert row["normalized_a"] == pytest.approx(
        row["score_a"] / expert[(row["expert_a"], row["task_a"])]
    )
    assert "best operator per pair" in format_report(report)
