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
