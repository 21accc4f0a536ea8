"""A real Ray cluster of several nodes on this machine, for the Ray tests and
scripts/bench_collect_ray.py: a head (``ray start --head``) and workers (``ray start --address``),
each a node of its own with its own CPUs, temporary folder and raylet, as on separate machines
(not ``ray.init()`` in the test process, whose one node shares the driver's process tree).

Each node is a ``ray start --block`` process of its own, so that stopping the cluster is
stopping those processes (SIGTERM: Ray stops the node's processes) and then killing whatever
they started that is still alive -- never ``ray stop``, which would stop every Ray node of this
machine, other people's included.

Ray 2.x turns on token authentication for a new cluster when a token exists (``~/.ray``), but a
driver connecting by address does not turn it on by itself: both then fail to talk. The cluster
therefore sets ``RAY_AUTH_MODE=token`` with a token file of its own, for its nodes and for this
process (restored at :meth:`LocalRayCluster.stop`), and has this process's Ray read them again
(private ``ray._raylet`` calls: Ray reads them once and caches them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    """This interpreter's ``ray`` command: the nodes' workers must run this venv's Python."""
    script = Path(sys.executable).with_name("ray")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]


# one token for every cluster this process starts: Ray caches the token it has read
_TOKEN = secrets.token_hex(32)


def _refresh_ray_config() -> None:
    """Make this process's Ray read ``RAY_AUTH_MODE`` and the token again (it reads them once
    and caches them)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class LocalRayCluster:
    """``nodes`` Ray nodes of ``cpus`` CPUs each on this machine; ``address`` is the head's.
    Use as a context manager, or :meth:`start` / :meth:`stop` (stop always, even after a
    failed start)."""

    def __init__(self, nodes: int = 2, *, cpus: int = 1, object_store_mb: int = 100) -> None:
        self.nodes = nodes
        self.cpus = cpus
        self.object_store_mb = object_store_mb
        self.address = ""
        self._procs: list[subprocess.Popen] = []
        self._logs: list[Path] = []
        self._saved_env: dict[str, str | None] = {}
        # short: Ray's Unix sockets live under it, and their paths may not exceed 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="smray-", dir="/tmp"))

    def __enter__(self) -> LocalRayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        token = self.root / "auth_token"
        if not token.exists():
            token.write_text(_TOKEN)
            token.chmod(0o600)
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _node(self, i: int, args: list[str]) -> None:
        log = self.root / f"node{i}.log"
        common = [
            "--block",
            "--num-cpus",
            str(self.cpus),
            "--num-gpus",
            "0",
            "--resources",
            json.dumps({f"node{i}": 1}),
            "--object-store-memory",
            str(self.object_store_mb * 2**20),
            "--temp-dir",
            str(self.root / f"node{i}"),
            "--disable-usage-stats",
        ]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [*_ray_cli(), "start", *args, *common],
                env={**os.environ, **self._env()},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C of the tests reaches us, not the nodes
            )
        self._procs.append(proc)
        self._logs.append(log)

    def _fail(self, what: str) -> None:
        tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self._logs)
        raise RuntimeError(f"local Ray cluster: {what}\n{tails}")

    def start(self, timeout: float = 180.0) -> None:
        for key in AUTH_ENV:
            self._saved_env[key] = os.environ.get(key)
        os.environ.update(self._env())
        _refresh_ray_config()
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        head = ["--head", "--port", str(port), "--node-ip-address", "127.0.0.1"]
        head += ["--include-dashboard=false", "--dashboard-port", str(free_port())]
        self._node(0, head)
        deadline = time.monotonic() + timeout
        while not _accepts(port):  # the head's GCS is up
            if self._procs[0].poll() is not None:
                self._fail("the head node exited")
            if time.monotonic() > deadline:
                self._fail(f"the head node did not start in {timeout:.0f} s")
            time.sleep(0.5)
        for i in range(1, self.nodes):
            self._node(i, ["--address", self.address, "--node-ip-address", "127.0.0.1"])
        self.wait_for_nodes(deadline)

    def wait_for_nodes(self, deadline: float) -> None:
        import ray

        ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        try:
            while len(self.alive_nodes()) < self.nodes:
                for i, p in enumerate(self._procs):
                    if p.poll() is not None:
                        self._fail(f"node {i} exited")
                if time.monotonic() > deadline:
                    self._fail(f"{len(self.alive_nodes())} of {self.nodes} nodes joined in time")
                time.sleep(0.5)
        finally:
            ray.shutdown()

    @staticmethod
    def alive_nodes() -> list[dict]:
        """The cluster's live nodes, as ``ray.nodes()`` (needs a connected driver)."""
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def stop(self) -> None:
        import psutil

        # everything the nodes started (raylets, GCS, agents, workers), before they go
        started = []
        for p in self._procs:
            try:
                started += psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for p in reversed(self._procs):  # workers first, the head last
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self._procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        _, alive = psutil.wait_procs(started, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self._procs.clear()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved_env:
            _refresh_ray_config()
        self._saved_env.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0
