"""Read the next item while the current one is processed.

Streaming passes over checkpoints alternate a read (a system call that leaves the CPU to the
kernel's page-cache copy) and torch work on what was read. Running the read of item i+1 in one
helper thread while item i is processed overlaps the two; only one item is read ahead, so memory
grows by one item at most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(
    items: Sequence[T],
    read: Callable[[T], R],
    *,
    worth_it: Callable[[T], bool] = lambda item: True,
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, read(item))`` in order, reading the next item in a helper thread.

    Items for which ``worth_it`` is false are read inline when reached: handing a small read to
    another thread costs more (the interpreter lock changes hands) than it hides. An exception
    raised by ``read`` surfaces when its item is reached; closing the iterator early waits for
    the one pending read and discards it.
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:

        def start(i: int) -> Future | None:
            return pool.submit(read, items[i]) if worth_it(items[i]) else None

        pending = start(0)
        for i, item in enumerate(items):
            current = read(item) if pending is None else pending.result()
            pending = start(i + 1) if i + 1 < len(items) else None
            yield item, current
            del current
