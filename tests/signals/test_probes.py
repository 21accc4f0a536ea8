"""Probe sets: the shipped general set, loading local files, content hashes, bad input."""

from __future__ import annotations

import json

import pytest

from simmerge.errors import InputNotFoundError, ProbeSetError
from simmerge.signals.probes import ProbeSet, shipped_probe_sets


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_general_set_ships_at_least_200_varied_prompts_with_unique_ids():
    probes = ProbeSet.load("general")
    assert "general" in shipped_probe_sets()
    assert len(probes) >= 200
    assert len(set(probes.ids)) == len(probes)
    assert len(set(probes.texts)) == len(probes)
    domains = {json.loads(line)["domain"] for line in _general_lines()}
    assert {"instruction", "code", "math", "prose", "list", "dialogue"} <= domains


def _general_lines():
    from simmerge.infra.resources import data_dir

    return (data_dir("probes") / "general.jsonl").read_text().splitlines()


def test_hash_depends_on_content_not_on_name(tmp_path):
    a = ProbeSet.load(_jsonl(tmp_path / "a.jsonl", [{"id": "1", "text": "hello"}]))
    b = ProbeSet.load(_jsonl(tmp_path / "b.jsonl", [{"id": "1", "text": "hello"}]))
    c = ProbeSet.load(_jsonl(tmp_path / "c.jsonl", [{"id": "1", "text": "hello!"}]))
    assert a.name == "a" and a.hash == b.hash
    assert a.hash != c.hash


def test_parquet_with_another_column_and_no_ids_uses_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["x y", "z"]}), path)
    probes = ProbeSet.load(path, column="prompt")
    assert probes.texts == ("x y", "z") and probes.ids == ("0", "1")


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"id": "1", "prompt": "x"}], "no column 'text'"),
        ([{"id": "1", "text": "x"}, {"id": "1", "text": "y"}], "repeats the id '1'"),
        ([{"id": "1", "text": "  "}], "no text"),
    ],
)
def test_malformed_probe_files_raise_probe_set_error(tmp_path, rows, match):
    with pytest.raises(ProbeSetError, match=match):
        ProbeSet.load(_jsonl(tmp_path / "bad.jsonl", rows))


def test_empty_and_unreadable_files_raise_probe_set_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    for name in ("empty.jsonl", "broken.jsonl"):
        with pytest.raises(ProbeSetError):
            ProbeSet.load(tmp_path / name)


def test_unknown_name_and_missing_file_raise_input_not_found(tmp_path):
    with pytest.raises(InputNotFoundError, match="general"):
        ProbeSet.load("no-such-set")
    with pytest.raises(InputNotFoundError):
        ProbeSet.load(tmp_path / "missing.jsonl")
    (tmp_path / "probes.txt").write_text("hello\n")
    with pytest.raises(ProbeSetError, match="suffix"):
        ProbeSet.load(tmp_path / "probes.txt")
