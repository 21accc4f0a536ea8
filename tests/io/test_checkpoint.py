"""Checkpoint IO: single and sharded safetensors, dtypes, fingerprints, refusals, corruption."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from _factories import save_model
from safetensors import safe_open
from safetensors.torch import save_file

from simmerge.errors import (
    CheckpointError,
    CorruptCheckpointError,
    InputNotFoundError,
    MissingShardError,
    NonFiniteWeightsError,
    PickleRefusedError,
    RemoteCodeRefusedError,
)
from simmerge.io.checkpoint import open_checkpoint
from simmerge.io.safetensors_format import SafetensorsStreamWriter, read_header


def reference_tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


@pytest.mark.parametrize("which", ["base", "bf16", "sharded"])
def test_lazy_reads_match_the_safetensors_library(tiny_models, which):  # noqa: F811
    ckpt = open_checkpoint(tiny_models[which])
    ref = reference_tensors(tiny_models[which])
    assert set(ckpt.names) == set(ref)
    for name, tensor in ref.items():
        got = ckpt.get(name)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor)
    assert len(ckpt.files) == (2 if which == "sharded" else 1)


def test_get_casts_and_owns_its_tensor(tiny_models):  # noqa: F811
    ckpt = open_checkpoint(tiny_models["bf16"])
    name = ckpt.names[0]
    t = ckpt.get(name, dtype=torch.float32)
    assert t.dtype == torch.float32
    t.zero_()
    assert not torch.equal(ckpt.get(name, dtype=torch.float32), t)


def test_fp16_checkpoints_are_read(tmp_path):
    save_file(
        {"w": torch.arange(6, dtype=torch.float16).reshape(2, 3)}, tmp_path / "model.safetensors"
    )
    (tmp_path / "config.json").write_text("{}")
    assert torch.equal(open_checkpoint(tmp_path).get("w"), torch.arange(6.0).reshape(2, 3).half())


def test_fingerprint_is_stable_and_changes_with_any_weight(tiny_models, tmp_path):  # noqa: F811
    folder = tmp_path / "m"
    shutil.copytree(tiny_models["a"], folder)
    first = open_checkpoint(folder).fingerprint
    assert open_checkpoint(folder).fingerprint == first
    tensors = reference_tensors(folder)
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name].view(-1)[3] += 1e-3  # one value, somewhere in the middle of the file
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert open_checkpoint(folder).fingerprint != first


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="config.json"):
        open_checkpoint(tmp_path)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights"):
        open_checkpoint(tmp_path)


def test_pickle_checkpoints_are_refused_unless_opted_in(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        open_checkpoint(tmp_path)
    ckpt = open_checkpoint(tmp_path, allow_pickle=True)
    assert torch.equal(ckpt.get("w"), torch.ones(2))


def test_remote_code_models_are_refused_unless_opted_in(tiny_models, tmp_path):  # noqa: F811
    folder = tmp_path / "m"
    shutil.copytree(tiny_models["a"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RemoteCodeRefusedError, match="allow_remote_code"):
        open_checkpoint(folder)
    assert open_checkpoint(folder, allow_remote_code=True).names


def test_missing_shard_is_named(tiny_models, tmp_path):  # noqa: F811
    folder = tmp_path / "m"
    shutil.copytree(tiny_models["sharded"], folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MissingShardError, match="model-00002-of-00002"):
        open_checkpoint(folder)


def _corrupt(tmp_path, data: bytes):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 10**12) + b"{}", "header length"),
        (struct.pack("<Q", 4) + b"{{{{", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 2) + b"{}" + b"xx", "extra bytes"),
    ],
)
def test_corrupt_headers_are_typed_errors(tmp_path, data, match):
    with pytest.raises(CorruptCheckpointError, match=match):
        open_checkpoint(_corrupt(tmp_path, data))


def test_truncated_file_is_detected(tiny_models, tmp_path):  # noqa: F811
    folder = tmp_path / "m"
    shutil.copytree(tiny_models["a"], folder)
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 10)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        open_checkpoint(folder)


def test_header_entries_are_validated(tmp_path):
    def header(entry) -> bytes:
        blob = json.dumps({"w": entry}).encode()
        return struct.pack("<Q", len(blob)) + blob + b"\0" * 8

    cases = [
        ({"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}, "dtype"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "shape"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "does not match"),
        ({"dtype": "F32", "shape": [2]}, "exactly"),
    ]
    for entry, match in cases:
        with pytest.raises(CorruptCheckpointError, match=match):
            open_checkpoint(_corrupt(tmp_path, header(entry)))


def test_nan_weights_are_reported_with_the_tensor_name(tmp_path):
    save_file({"layer.w": torch.tensor([1.0, float("nan")])}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NonFiniteWeightsError, match="layer.w"):
        open_checkpoint(tmp_path).get("layer.w", check_finite=True)


def test_stream_writer_output_is_read_by_the_safetensors_library(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(4, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "out.safetensors"
    layout = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with SafetensorsStreamWriter(path, layout) as w:
        for k, v in tensors.items():
            w.write(k, v)
    with safe_open(path, framework="pt") as sf:
        for k, v in tensors.items():
            assert torch.equal(sf.get_tensor(k), v)
    assert set(read_header(path).tensors) == set(tensors)


def test_background_stream_writer_writes_the_same_bytes(tmp_path, monkeypatch):
    from simmerge.io import safetensors_format

    monkeypatch.setattr(safetensors_format, "BACKGROUND_MIN_BYTES", 0)  # every tensor
    tensors = {f"t{i}": torch.randn(64, 33) for i in range(5)}
    layout = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    for background in (False, True):
        path = tmp_path / f"{background}.st"
        with SafetensorsStreamWriter(path, layout, background=background) as w:
            for k, v in tensors.items():
                w.write(k, v)
    assert (tmp_path / "True.st").read_bytes() == (tmp_path / "False.st").read_bytes()


def test_a_failed_background_write_is_raised_and_the_file_closed(tmp_path, monkeypatch):
    import errno

    from simmerge.io import safetensors_format

    opened = []

    class FullDisk:
        def __init__(self, path, mode):
            self.inner = open(path, mode)  # noqa: SIM115
            self.writes = 0
            opened.append(self)

        def write(self, data):
            self.writes += 1
            if self.writes == 3:  # header, first tensor, then the disk fills up
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(safetensors_format, "open", FullDisk, raising=False)
    monkeypatch.setattr(safetensors_format, "BACKGROUND_MIN_BYTES", 0)  # every tensor
    layout = [(f"t{i}", torch.float32, (8,)) for i in range(4)]
    with pytest.raises(OSError, match="No space left"):
        with SafetensorsStreamWriter(tmp_path / "x.st", layout, background=True) as w:
            for name, _, _ in layout:
                w.write(name, torch.ones(8))
    assert opened[0].inner.closed


def test_stream_writer_syncs_behind_the_writes_and_raises_a_failed_sync_at_close(
    tmp_path, monkeypatch
):
    import errno

    from simmerge.io import safetensors_format

    synced = []
    monkeypatch.setattr(safetensors_format, "SYNC_EVERY_BYTES", 64 * 33 * 4 * 2)  # 2 tensors
    monkeypatch.setattr(safetensors_format.os, "fdatasync", synced.append)
    tensors = {f"t{i}": torch.randn(64, 33) for i in range(7)}
    layout = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with SafetensorsStreamWriter(tmp_path / "x.st", layout) as w:
        for k, v in tensors.items():
            w.write(k, v)
    assert len(synced) >= 2  # pushed to disk while writing, not only by the final fsync
    with safe_open(tmp_path / "x.st", "pt") as f:
        assert torch.equal(f.get_tensor("t6"), tensors["t6"])

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safetensors_format.os, "fdatasync", broken)
    with pytest.raises(OSError, match="Input/output"):
        with SafetensorsStreamWriter(tmp_path / "y.st", layout) as w:
            for k, v in tensors.items():
                w.write(k, v)


def test_stream_writer_rejects_out_of_order_tensors(tmp_path):
    layout = [("a", torch.float32, (2,)), ("b", torch.float32, (2,))]
    with pytest.raises(ValueError, match="expected a"):
        with SafetensorsStreamWriter(tmp_path / "x.safetensors", layout) as w:
            w.write("b", torch.zeros(2))


def test_factory_sharded_model_is_really_sharded(tmp_path):
    base = save_model(tmp_path / "base")
    sharded = save_model(tmp_path / "s", base=base, max_shard_size="20KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1


def test_fingerprint_changes_even_if_the_mtime_is_restored(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    w = torch.zeros(1_000_000)
    save_file({"w": w}, tmp_path / "model.safetensors")
    before = open_checkpoint(tmp_path).fingerprint
    st = (tmp_path / "model.safetensors").stat()
    w[123_457] = 1.0  # outside the sampled blocks
    save_file({"w": w}, tmp_path / "model.safetensors")
    os.utime(tmp_path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert open_checkpoint(tmp_path).fingerprint != before


def test_symlinked_shards_as_in_the_hub_cache_are_read(tiny_models, tmp_path):  # noqa: F811
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in tiny_models["sharded"].iterdir():
        shutil.copy(f, blobs / f.name)
        (snap / f.name).symlink_to(blobs / f.name)
    ckpt = open_checkpoint(snap)
    assert set(ckpt.names) == set(reference_tensors(tiny_models["sharded"]))


def test_shard_names_with_path_parts_are_refused(tiny_models, tmp_path):  # noqa: F811
    folder = tmp_path / "m"
    shutil.copytree(tiny_models["sharded"], folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the folder"):
        open_checkpoint(folder)


def test_background_writer_hands_large_tensors_to_its_thread_and_writes_small_ones_inline(
    tmp_path, monkeypatch
):
    import threading

    from simmerge.io import safetensors_format

    writers = []

    class Recording:
        def __init__(self, path, mode):
            self.inner = open(path, mode)  # noqa: SIM115

        def write(self, data):
            writers.append((len(data), threading.current_thread() is threading.main_thread()))
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(safetensors_format, "open", Recording, raising=False)
    monkeypatch.setattr(safetensors_format, "BACKGROUND_MIN_BYTES", 64)
    layout = [("small", torch.float32, (4,)), ("large", torch.float32, (32,))]
    with SafetensorsStreamWriter(tmp_path / "x.st", layout, background=True) as w:
        w.write("small", torch.ones(4))
        w.write("large", torch.ones(32))
    assert writers[1:] == [(16, True), (128, False)]  # after the header: inline, then thread
