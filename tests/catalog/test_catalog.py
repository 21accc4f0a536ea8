"""Catalog loading: strict schema and every validation failure as a typed error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from _factories import VOCAB, save_model, tiny_config, tiny_tokenizer

from simmerge.catalog import Catalog
from simmerge.errors import (
    ArchitectureMismatchError,
    CatalogError,
    DuplicateNameError,
    InputNotFoundError,
    TensorMismatchError,
    VocabMismatchError,
)


def write_catalog(folder: Path, doc) -> Path:
    path = folder / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


@pytest.fixture
def zoo(tiny_models, tmp_path):  # noqa: F811
    """A catalog folder with relative paths: base, experts a and b, eval data for one task."""
    for name in ("base", "a", "b"):
        shutil.copytree(tiny_models[name], tmp_path / name)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "rev.jsonl").write_text('{"prompt": "ab", "answer": "ba"}\n')
    doc = {
        "name": "t",
        "base": {"name": "base", "path": "base"},
        "experts": [
            {"name": "a", "path": "a", "tasks": ["rev"]},
            {"name": "b", "path": "b", "tasks": ["sort", "rev"]},
        ],
        "tasks": {"rev": {"eval": "eval/rev.jsonl"}},
    }
    return tmp_path, doc


def test_valid_catalog_loads_with_paths_relative_to_the_file(zoo):
    folder, doc = zoo
    cat = Catalog.load(write_catalog(folder, doc))
    assert cat.name == "t" and cat.expert_names == ["a", "b"]
    assert cat.model("a").path == (folder / "a").resolve()
    assert cat.tasks["rev"].eval == (folder / "eval" / "rev.jsonl").resolve()
    assert [e.name for e in cat.experts_for("rev")] == ["a", "b"]
    assert cat.task_names == ["rev", "sort"]
    assert cat.checkpoint("a").names == cat.checkpoint("base").names


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda d: d.update(extra=1), CatalogError, "extra"),
        (lambda d: d["experts"][0].update(pathh="a"), CatalogError, "pathh"),
        (lambda d: d["experts"][0].update(tasks="rev"), CatalogError, "tasks"),
        (lambda d: d["base"].pop("path"), CatalogError, "base.path"),
        (lambda d: d["tasks"]["rev"].update(metric="em"), CatalogError, "metric"),
        (lambda d: d["experts"][1].update(name="a"), DuplicateNameError, "a"),
        (lambda d: d["experts"][1].update(name="base"), DuplicateNameError, "base"),
        (lambda d: d["experts"][0].update(name="../evil"), CatalogError, "not allowed"),
        (lambda d: d["experts"][0].update(path="missing"), InputNotFoundError, "'a'"),
        (lambda d: d["tasks"]["rev"].update(eval="eval/none.jsonl"), InputNotFoundError, "rev"),
        (lambda d: d.update(experts=[]), CatalogError, "no experts"),
        (lambda d: d["tasks"]["rev"].update(general=True), CatalogError, "general task"),
    ],
)
def test_bad_catalogs_raise_typed_errors_naming_the_problem(zoo, mutate, error, match):
    folder, doc = zoo
    mutate(doc)
    with pytest.raises(error, match=match):
        Catalog.load(write_catalog(folder, doc))


def test_a_general_task_is_the_base_s_ability_and_its_reference(zoo):
    from simmerge.evaluation.scorer import reference_score

    folder, doc = zoo
    (folder / "eval" / "general.jsonl").write_text('{"prompt": "ab", "answer": "ab"}\n')
    doc["tasks"]["general"] = {"eval": "eval/general.jsonl", "general": True}
    cat = Catalog.load(write_catalog(folder, doc))
    assert cat.general_tasks == ["general"] and not cat.experts_for("general")
    scores = {("base", "general"): 0.8, ("a", "rev"): 0.5, ("b", "rev"): 0.7}
    assert reference_score(cat, scores, "general") == 0.8
    assert reference_score(cat, scores, "general", ("a", "b")) == 0.8
    assert reference_score(cat, scores, "rev", ("a",)) == 0.5  # ordinary tasks: unchanged
    del doc["tasks"]["general"]["general"]  # an ordinary task nobody owns has no reference
    assert reference_score(Catalog.load(write_catalog(folder, doc)), scores, "general") == 0.0


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(InputNotFoundError):
        Catalog.load(tmp_path / "nope.yaml")
    with pytest.raises(CatalogError, match="not valid YAML"):
        Catalog.load(write_catalog(tmp_path, "base: [unclosed\n"))
    with pytest.raises(CatalogError, match="mapping"):
        Catalog.load(write_catalog(tmp_path, "- a\n- b\n"))


def test_architecture_mismatch_is_detected(zoo):
    folder, doc = zoo
    shutil.rmtree(folder / "b")
    save_model(folder / "b", config=tiny_config(num_hidden_layers=3))
    with pytest.raises(ArchitectureMismatchError, match="num_hidden_layers"):
        Catalog.load(write_catalog(folder, doc))


def test_tensor_shape_mismatch_is_detected(zoo):
    folder, doc = zoo
    cfg = json.loads((folder / "b" / "config.json").read_text())
    shutil.rmtree(folder / "b")
    save_model(folder / "b", config=tiny_config(intermediate_size=48))
    # pretend the config matches so only the tensor check can catch it
    (folder / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TensorMismatchError, match="shape"):
        Catalog.load(write_catalog(folder, doc))


def test_vocab_size_mismatch_is_detected(zoo):
    folder, doc = zoo
    shutil.rmtree(folder / "b")
    vocab = VOCAB + ["X", "Y"]
    save_model(
        folder / "b", config=tiny_config(vocab_size=len(vocab)), tokenizer=tiny_tokenizer(vocab)
    )
    with pytest.raises(VocabMismatchError, match="vocab_size"):
        Catalog.load(write_catalog(folder, doc))


def test_different_tokenizer_with_same_size_is_detected(zoo):
    folder, doc = zoo
    swapped = list(VOCAB)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / "b" / f).unlink()
    tiny_tokenizer(swapped).save_pretrained(folder / "b")
    with pytest.raises(VocabMismatchError, match="different tokenizer"):
        Catalog.load(write_catalog(folder, doc))


def test_equal_tokenizer_saved_differently_passes(zoo):
    folder, doc = zoo
    tok_file = folder / "b" / "tokenizer.json"
    tok_file.write_text(json.dumps(json.loads(tok_file.read_text()), indent=4))
    assert Catalog.load(write_catalog(folder, doc)).expert_names == ["a", "b"]


def test_model_errors_name_the_catalog_file_and_the_model(zoo):
    folder, doc = zoo
    (folder / "b" / "config.json").unlink()
    path = write_catalog(folder, doc)
    with pytest.raises(Exception) as err:
        Catalog.load(path)
    assert str(path) in str(err.value) and "model 'b'" in str(err.value)
    assert "Fix:" in str(err.value)


def test_same_folder_listed_twice_is_rejected(zoo):
    folder, doc = zoo
    doc["experts"][1]["path"] = "a"
    with pytest.raises(DuplicateNameError, match="same folder"):
        Catalog.load(write_catalog(folder, doc))
    doc["experts"][1]["path"] = "./base"
    with pytest.raises(DuplicateNameError, match="same folder"):
        Catalog.load(write_catalog(folder, doc))


def test_malformed_tokenizer_is_a_vocab_error(zoo):
    folder, doc = zoo
    (folder / "b" / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(VocabMismatchError, match="Could not load"):
        Catalog.load(write_catalog(folder, doc))
