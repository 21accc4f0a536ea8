import importlib
import platform

import pytest

from simmerge.infra.allocator import reuse_freed_memory


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_is_told_to_keep_freed_tensor_memory():
    assert reuse_freed_memory() is True
    assert reuse_freed_memory() is True  # once per process, then cached


def test_the_command_line_applies_the_allocator_setting_before_its_command(monkeypatch, tmp_path):
    cli = importlib.import_module("simmerge.cli.main")

    calls = []
    monkeypatch.setattr(cli, "reuse_freed_memory", lambda: calls.append(1))
    missing = str(tmp_path / "missing.yaml")
    assert cli.main(["merge", missing, "--out", str(tmp_path / "out")]) == cli.EXIT_BAD_INPUT
    assert calls == [1]
