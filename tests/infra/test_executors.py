"""The local executor's process pool stops at once when its caller stops or Ctrl-C is pressed:
jobs already handed to workers are terminated, not waited for. (Item order, Ray and retries
are tests/scan/test_scan.py's.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simmerge.infra.executors import LocalExecutor


def test_local_process_pool_terminates_running_jobs_when_the_caller_stops(tmp_path):
    """A caller that stops early does not wait for the jobs its workers hold (their results
    would be dropped): they are terminated and never finish."""
    from crash_jobs import sleep_then_mark

    items = [(0.0, str(tmp_path))] + [(30.0, str(tmp_path))] * 3
    run = LocalExecutor(workers=2).imap(sleep_then_mark, items, desc="x", progress=False)
    index, pid = next(run)
    assert index == 0
    run.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone, not busy with a 30 s job
    assert [p.name for p in tmp_path.glob("done.*")] == [f"done.{pid}"]  # the 0 s job alone


JOB_SECONDS = 300.0


def test_ctrl_c_stops_a_process_pool_at_once(tmp_path):
    """Ctrl-C reaches the whole process group: the workers ignore it, the caller terminates
    them and exits with KeyboardInterrupt instead of finishing every queued job first."""
    script = (
        # Python's Ctrl-C handler, as in a terminal: a job started in the background can
        # inherit SIGINT ignored, and then no KeyboardInterrupt would ever be raised
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from simmerge.infra.executors import LocalExecutor\n"
        "from crash_jobs import sleep_then_mark\n"
        f"items = [({JOB_SECONDS}, {str(tmp_path)!r})] * 6\n"
        "LocalExecutor(workers=2).map(sleep_then_mark, items, desc='x', progress=False)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[1],  # crash_jobs is importable from there, as under pytest
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("started.*"))) < 2:  # both workers hold a job
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        # well before the jobs could end; generous, as a loaded CI machine exits slowly
        _, err = proc.communicate(timeout=JOB_SECONDS / 3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "KeyboardInterrupt" in err
    assert not list(tmp_path.glob("done.*"))
