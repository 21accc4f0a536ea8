"""Where lists of independent jobs run: this process, a local process pool, or a Ray cluster.

A scan's expensive stages (one probe pass and one weight pass per checkpoint) are such jobs,
whose results land in the shared content-keyed cache (:mod:`simmerge.infra.cache`) and which
return only small values (seconds spent); so are outcome collection's blocks of merges
(:mod:`simmerge.outcomes.collection`), which return their scores to the caller, the one writer
of the store. An executor runs a picklable top-level function over such a list with a progress
bar: :meth:`~Executor.map` returns the results in item order, :meth:`~Executor.imap` yields
``(index, result)`` as each job finishes, so that a caller can keep them as they come:

* :class:`LocalExecutor` (default): in this process, one job after the other -- the right
  choice on one GPU, and on CPU where torch already uses every core -- or, with
  ``workers > 1``, a pool of spawned processes that split the cores between them (helps when
  the models are so small that one job cannot keep the cores busy).
* :class:`RayExecutor` (extra ``simmerge[ray]``): one Ray task per job, ``num_gpus=1`` per task
  when the cluster has GPUs, retried when a worker dies. Workers must see the checkpoints and
  the cache folder at the same paths (shared storage); see docs/design.md, "Scans".

A job that raises stops the run: the error reaches the caller with its own type, and the jobs
not yet finished are cancelled. So does a caller that stops early or is interrupted (Ctrl-C):
a local pool's workers are terminated at once rather than left to finish the jobs they hold,
whose results nobody would read (only the caller stores results, so nothing finished is lost).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

from simmerge.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs ``fn`` over ``items``: :meth:`map` in item order, :meth:`imap` as jobs finish."""

    name: str

    def imap(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        desc: str,
        progress: bool,
        gpu: bool = False,
    ) -> Iterator[tuple[int, R]]:
        """``(index of the item, result)`` of each job, in the order the jobs finish.
        ``gpu``: the jobs run on a GPU (a cluster executor reserves one per job)."""
        ...

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        desc: str,
        progress: bool,
        gpu: bool = False,
    ) -> list[R]:
        """The results of :meth:`imap`, in item order."""
        ...

    def close(self) -> None: ...


def in_item_order(results: Iterator[tuple[int, R]], n: int) -> list[R]:
    """The ``n`` results of an :meth:`Executor.imap` as a list in item order."""
    out: list[Any] = [None] * n
    for i, r in results:
        out[i] = r
    return out


def _init_worker(n: int) -> None:
    """A pool worker: ``n`` torch threads, and deaf to Ctrl-C. The terminal sends SIGINT to
    the whole process group; a worker that took it would hand the interruption back as its
    job's result and go on with the next queued job, so the caller alone decides, and stops
    the workers (:func:`_stop_now`)."""
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(n)


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued jobs and terminate the workers running the others. ``shutdown``
    alone waits for every job already handed to a worker (minutes for a block of merges)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    # Python < 3.14 has no public way: take the worker list before shutdown drops it
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        proc.terminate()
    for proc in workers:
        proc.join(timeout=10)


class LocalExecutor:
    """In-process (``workers=1``) or a pool of ``workers`` spawned processes."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}.", "pass --workers 1 or more.")
        self.workers = workers

    def imap(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        desc: str,
        progress: bool,
        gpu: bool = False,
    ) -> Iterator[tuple[int, R]]:
        if self.workers == 1 or len(items) <= 1:
            for i, x in enumerate(tqdm(items, desc=desc, disable=not progress)):
                yield i, fn(x)
            return
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        # spawn, not fork: torch's thread pools do not survive a fork cleanly
        with ProcessPoolExecutor(
            self.workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            try:  # submitting too: Ctrl-C there must not leave the pool to finish its jobs
                futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
                done = as_completed(futures)
                for fut in tqdm(done, total=len(items), desc=desc, disable=not progress):
                    yield futures[fut], fut.result()
            except BaseException:  # a failed job, Ctrl-C, or the caller stopped early
                _stop_now(pool)
                raise

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        desc: str,
        progress: bool,
        gpu: bool = False,
    ) -> list[R]:
        run = self.imap(fn, items, desc=desc, progress=progress, gpu=gpu)
        return in_item_order(run, len(items))

    def close(self) -> None:
        pass


class RayExecutor:
    """One Ray task per job. Connects to ``address`` (``"auto"``: the cluster this machine
    belongs to; ``None``: a new local instance with ``num_cpus``), unless Ray is already
    initialized. ``num_gpus`` per GPU job defaults to 1 when the cluster has GPUs, else 0;
    CPU jobs (``map(..., gpu=False)``) reserve none."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: float | None = None,
        max_retries: int = 3,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "The Ray executor needs Ray, which is not installed.",
                "pip install 'simmerge[ray]' (or use the local executor).",
            ) from None
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = num_cpus
            ray.init(address=address, **kwargs)
            self._owns = True
        self.num_gpus = (
            num_gpus if num_gpus is not None else (1 if ray.cluster_resources().get("GPU") else 0)
        )
        self.max_retries = max_retries

    def imap(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        desc: str,
        progress: bool,
        gpu: bool = False,
    ) -> Iterator[tuple[int, R]]:
        ray = self._ray
        # max_retries re-runs a task whose worker process died; an exception raised by the job
        # itself (a bad checkpoint) is not retried and reaches the caller with its own type
        gpus = self.num_gpus if gpu else 0
        remote = ray.remote(num_gpus=gpus, max_retries=self.max_retries)(fn)
        index = {remote.remote(x): i for i, x in enumerate(items)}
        pending = list(index)
        try:
            with tqdm(total=len(index), desc=desc, disable=not progress) as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    bar.update(len(done))
                    for ref in done:
                        yield index[ref], ray.get(ref)
        finally:  # a failed job, or the caller stopped early: the rest would run for nothing
            for ref in pending:
                ray.cancel(ref)

    def map(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        desc: str,
        progress: bool,
        gpu: bool = False,
    ) -> list[R]:
        run = self.imap(fn, items, desc=desc, progress=progress, gpu=gpu)
        return in_item_order(run, len(items))

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()
            self._owns = False


def make_executor(
    executor: str | Executor = "local", *, workers: int = 1, address: str | None = None
) -> Executor:
    """An executor object from its name (``local`` or ``ray``), or ``executor`` itself."""
    if not isinstance(executor, str):
        return executor
    if executor == "local":
        return LocalExecutor(workers)
    if executor == "ray":
        return RayExecutor(address, num_cpus=workers if address is None and workers > 1 else None)
    raise ConfigError(f"Unknown executor {executor!r}.", f"use one of: {', '.join(EXECUTORS)}.")


def in_process(executor: str | Executor, workers: int = 1) -> bool:
    """Whether ``executor`` and ``workers`` name the default: every job in this process."""
    return isinstance(executor, str) and executor == "local" and workers == 1


@contextlib.contextmanager
def running(
    executor: str | Executor = "local", *, workers: int = 1, address: str | None = None
) -> Iterator[Executor]:
    """:func:`make_executor`, closed on exit when it was made here (a caller's stays open)."""
    runner = make_executor(executor, workers=workers, address=address)
    try:
        yield runner
    finally:
        if isinstance(executor, str):
            runner.close()
