import threading
import time

import pytest

from simmerge.infra.prefetch import read_ahead


def test_read_ahead_yields_every_item_in_order_with_its_read():
    assert list(read_ahead([3, 1, 2], lambda x: x * 10)) == [(3, 30), (1, 10), (2, 20)]
    assert list(read_ahead([], lambda x: x)) == []


def test_read_ahead_reads_at_most_one_item_ahead():
    started = []
    lock = threading.Lock()

    def read(x):
        with lock:
            started.append(x)
        return x

    for item, _ in read_ahead(list(range(6)), read):
        time.sleep(0.01)  # give the helper time to run further ahead if it could
        with lock:
            assert max(started) <= item + 1


def test_a_failed_read_surfaces_at_its_item():
    def read(x):
        if x == 2:
            raise OSError("disk gone")
        return x

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item, _ in read_ahead([0, 1, 2, 3], read):
            seen.append(item)
    assert seen == [0, 1]


def test_closing_early_leaves_no_read_running():
    running = threading.Event()
    done = threading.Event()

    def read(x):
        running.set()
        time.sleep(0.05)
        done.set()
        return x

    it = read_ahead([0, 1, 2], read)
    next(it)
    it.close()  # waits for the read of item 1, already submitted
    assert done.is_set()
