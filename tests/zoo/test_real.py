"""The real-model recipe: task generators with exact answers, disjoint splits, eval rows of
both kinds, and a resumable build of experts fine-tuned from SmolLM2 (a micro recipe here, so
it runs in CI in about a minute)."""

from __future__ import annotations

import calendar
import json

import pytest

from simmerge.zoo.real import (
    REAL_RECIPES,
    RealExpert,
    RealRecipe,
    eval_rows,
    real_recipe,
    task_data,
)
from simmerge.zoo.text_tasks import TEXT_TASKS


def test_every_task_answers_exactly_what_its_prompt_asks():
    from num2words import num2words

    for name, task in TEXT_TASKS.items():
        for prompt, answer, choices in task.examples(7, 50):
            words = prompt.replace(",", " ").replace(":", " ").split()
            if name == "add":
                assert int(answer) == int(words[1]) + int(words[3])
            elif name == "sub":
                assert int(answer) == int(words[1]) - int(words[3]) >= 0
            elif name.startswith("words_"):
                lang = {"words_en": "en", "words_fr": "fr", "words_de": "de"}[name]
                assert answer == num2words(int(words[1]), lang=lang)
            elif name == "days_in_month":
                month = list(calendar.month_name).index(words[4])
                year = int(words[5].rstrip("?"))
                assert int(answer) == calendar.monthrange(year, month)[1]
                assert answer in choices
            elif name in ("sort_asc", "sort_desc"):
                xs = [int(w) for w in words[2:-1]]
                assert [int(x) for x in answer.split(", ")] == sorted(
                    xs, reverse=name == "sort_desc"
                )
            elif name == "json_get":
                key = prompt.split('"')[1]
                doc = json.loads(prompt.split(" from ", 1)[1].rstrip(":"))
                assert answer == str(doc[key])
            elif name == "upper":
                assert answer == prompt.split(": ", 1)[1].removesuffix(" ->").upper()
            elif name == "larger":
                assert answer == str(max(int(c) for c in choices))
            elif name == "units":
                n, src, dst = int(words[1]), words[2], words[4]
                factor = {("km", "m"): 1000, ("kg", "g"): 1000, ("m", "cm"): 100}.get(
                    (src, dst), 60
                )
                assert int(answer) == n * factor


@pytest.mark.parametrize("name", sorted(REAL_RECIPES))
def test_splits_are_deterministic_disjoint_and_large_enough(name):
    recipe = real_recipe(name)
    for task in recipe.tasks:
        first, again = task_data(task, recipe), task_data(task, recipe)
        assert first == again
        prompts = {k: {p for p, _, _ in v} for k, v in first.items()}
        assert not prompts["train"] & prompts["eval"] and not prompts["probe"] & prompts["eval"]
        assert len(first["eval"]) == recipe.eval_size
        assert len(first["probe"]) == recipe.probe_size
        # a task with few distinct prompts would leave its experts little or nothing to learn
        assert len(first["train"]) >= recipe.train_size // 2, task


def test_eval_rows_are_multiple_choice_where_the_task_has_choices():
    rows = eval_rows("days_in_month", TEXT_TASKS["days_in_month"].examples(0, 5))
    assert all(r["kind"] == "multiple_choice" for r in rows)
    assert all(r["choices"][r["label"]].strip() in ("28", "29", "30", "31") for r in rows)
    rows = eval_rows("add", TEXT_TASKS["add"].examples(0, 5))
    assert all(r["kind"] == "exact_match" and r["answer"] for r in rows)


def test_shipped_recipes_meet_their_shape():
    small, large = REAL_RECIPES["smol-small"], REAL_RECIPES["smol-large"]
    assert len(small.experts) >= 4 and len(large.experts) >= 14
    assert sum(len(e.tasks) > 1 for e in large.experts) >= 3  # multi-task experts
    families = {TEXT_TASKS[t].family for t in large.tasks}
    assert len(large.tasks) >= 8 and len(families) < len(large.tasks)  # shared formats
    assert len({(e.steps, e.lr) for e in large.experts}) >= 3  # light and strong fine-tunes
    assert sum(e.lora_rank > 0 for e in large.experts) >= 3  # LoRA adapters, merged in
    assert len(REAL_RECIPES["gemma-small"].experts) >= 4


@pytest.mark.slow
def test_a_micro_real_zoo_builds_resumes_and_loads(smollm2, tmp_path, monkeypatch):
    from _factories import SMOLLM2_GGUF

    from simmerge.catalog import Catalog
    from simmerge.zoo.real import MANIFEST, MODEL_STAMP, build_real_zoo, weights_digest

    monkeypatch.setenv("SIMMERGE_CACHE", str(smollm2.parent.parent))  # the converted base
    recipe = RealRecipe(
        name="micro-real",
        base="smollm2",
        experts=(
            RealExpert("add", ("add",), 3, 1e-4, 1),
            RealExpert("sub", ("sub",), 3, 5e-4, 2, lora_rank=4),  # a LoRA adapter, merged in
        ),
        train_size=16,
        eval_size=4,
        probe_size=4,
        batch_size=4,
        general_size=3,
    )
    out = build_real_zoo(tmp_path / "zoo", recipe, bases_dir=SMOLLM2_GGUF.parent, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["base"]["sha256"] and manifest["versions"]["transformers"]
    # which bits were trained, and on what kind of CPU: two builds' outcomes can be told apart
    assert set(manifest["weights"]) == {"add", "sub"} and manifest["machine"]["cpu_capability"]
    assert manifest["weights"]["add"] == weights_digest(out / "experts" / "add")
    stamp = json.loads((out / "experts" / "add" / MODEL_STAMP).read_text())
    assert len(stamp["loss"]) == 3
    from safetensors import safe_open

    names = {}
    for expert in ("add", "sub"):  # the LoRA expert is saved as full weights like the other
        with safe_open(out / "experts" / expert / "model.safetensors", "pt") as f:
            names[expert] = set(f.keys())
    assert names["sub"] == names["add"] and not [k for k in names["sub"] if "lora" in k]
    catalog = Catalog.load(out / "catalog.yaml")
    assert catalog.base.path == smollm2 and set(catalog.expert_names) == {"add", "sub"}
    assert set(catalog.tasks) == {"add", "sub", "general"} and catalog.tasks["add"].probes.is_file()
    # an interrupted build resumes: a finished expert is kept, a missing one rebuilt
    kept = (out / "experts" / "add" / "model.safetensors").stat().st_mtime_ns
    (out / MANIFEST).unlink()
    import shutil

    shutil.rmtree(out / "experts" / "sub")
    build_real_zoo(tmp_path / "zoo", recipe, bases_dir=SMOLLM2_GGUF.parent, progress=False)
    assert (out / "experts" / "add" / "model.safetensors").stat().st_mtime_ns == kept
    assert (out / "experts" / "sub" / MODEL_STAMP).is_file() and (out / MANIFEST).is_file()
    # one real merge of the two experts, scored on a task and on the base's general ability
    from simmerge.evaluation.scorer import MergeScorer, reference_score
    from simmerge.merging import merge
    from simmerge.merging.grid import DEFAULT_GRID

    assert catalog.general_tasks == ["general"]
    scorer = MergeScorer(catalog, "cpu")
    refs = scorer.expert_scores(["add", "general"])
    assert refs[("base", "general")] > 0.9  # the base's own greedy continuations
    assert reference_score(catalog, refs, "general") == refs[("base", "general")]
    config = next(c for c in DEFAULT_GRID if c.operator == "task_arithmetic")
    a, b = catalog.model("add"), catalog.model("sub")
    merged = merge(config.plan(str(catalog.base.path), str(a.path), str(b.path)), device="cpu")
    scores = scorer.score_state(merged, ["add", "general"])
    assert 0 <= scores["add"] <= 1 and 0 < scores["general"] <= 1


def test_the_weights_digest_changes_with_any_weight_byte_and_nothing_else(tmp_path):
    import torch
    from safetensors.torch import save_file

    from simmerge.zoo.real import weights_digest

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"model_type": "llama"}')
        save_file({"w": torch.zeros(250)}, tmp_path / name / "model.safetensors")
    (tmp_path / "b" / "README.md").write_text("not a weight file")
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")
    data = bytearray((tmp_path / "b" / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    (tmp_path / "b" / "model.safetensors").write_bytes(bytes(data))
    assert weights_digest(tmp_path / "a") != weights_digest(tmp_path / "b")


def test_remeasure_draws_fresh_eval_prompts_unseen_in_training_eval_and_probes(tmp_path):
    """A second measurement scores the same models on examples no split of the build used."""
    from dataclasses import asdict

    import yaml

    from simmerge.evaluation.harness import EvalTask
    from simmerge.zoo.build import MANIFEST
    from simmerge.zoo.real import remeasure_real_catalog

    recipe = real_recipe("smol-large")
    (tmp_path / MANIFEST).write_text(json.dumps({"recipe": asdict(recipe)}))
    held = ("add", "larger", "words_fr")
    for folder in ("eval", "experts/x", "experts/y"):
        (tmp_path / folder).mkdir(parents=True)
    for t in (*held, "general"):
        rows = eval_rows(t, task_data(t, recipe)["eval"]) if t != "general" else []
        rows = rows or [{"id": 0, "prompt": "Hello", "answer": " there", "kind": "exact_match"}]
        (tmp_path / "eval" / f"{t}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {
        "name": "smol-large",
        "base": {"name": "base", "path": "base"},  # no models: only the YAML is read
        "experts": [
            {"name": "x", "path": "experts/x", "tasks": ["add", "larger"]},
            {"name": "y", "path": "experts/y", "tasks": ["words_fr"]},
        ],
        "tasks": {t: {"eval": f"eval/{t}.jsonl"} for t in (*held, "general")},
    }
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(doc))
    path = remeasure_real_catalog(tmp_path, 200)
    second = yaml.safe_load(path.read_text())
    assert second["experts"] == doc["experts"] and second["name"] == doc["name"]
    assert second["tasks"]["general"] == doc["tasks"]["general"]  # no expert holds it
    for t in held:
        used = {p for part in task_data(t, recipe).values() for p, _, _ in part}
        new = EvalTask.load(tmp_path / second["tasks"][t]["eval"])
        assert len(new.examples) == 200, t
        assert not {e.prompt for e in new.examples} & used, t
        assert new.kind == EvalTask.load(tmp_path / "eval" / f"{t}.jsonl").kind  # scored alike
    again = (tmp_path / "eval-remeasure" / "add.jsonl").read_text()
    remeasure_real_catalog(tmp_path, 200)
    assert (tmp_path / "eval-remeasure" / "add.jsonl").read_text() == again


def test_remeasure_refuses_a_task_without_enough_fresh_prompts_unless_skipped(tmp_path):
    from dataclasses import asdict

    import yaml

    from simmerge.errors import ConfigError
    from simmerge.zoo.build import MANIFEST
    from simmerge.zoo.real import remeasure_real_catalog

    recipe = real_recipe("smol-large")
    (tmp_path / MANIFEST).write_text(json.dumps({"recipe": asdict(recipe)}))
    doc = {
        "name": "c",
        "base": {"name": "base", "path": "base"},
        "experts": [{"name": "d", "path": "d", "tasks": ["days_in_month", "add"]}],
        "tasks": {t: {"eval": f"eval/{t}.jsonl"} for t in ("days_in_month", "add")},
    }
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(doc))
    # the build's splits take every distinct days_in_month prompt
    with pytest.raises(ConfigError, match="days_in_month has 0"):
        remeasure_real_catalog(tmp_path, 64)
    assert not (tmp_path / "eval-remeasure").exists()  # nothing half-written
    path = remeasure_real_catalog(tmp_path, 64, skip=["days_in_month"])
    second = yaml.safe_load(path.read_text())
    assert second["tasks"]["days_in_month"] == doc["tasks"]["days_in_month"]
    assert second["tasks"]["add"]["eval"] == "eval-remeasure/add.jsonl"
