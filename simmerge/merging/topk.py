"""Exact top-k-by-magnitude selection in bounded memory.

TIES and Breadcrumbs keep an exact number of entries of a task vector ranked by magnitude. The
obvious tools cost far more memory than the tensor itself on CPU (``torch.kthvalue`` copies the
input and allocates int64 indices: about 3x the tensor; ``torch.topk`` about 6x), which would break
the engine's promise that peak memory is a few tensors. Here the threshold is found with a sampled
bracket, one chunked counting pass and an exact ``kthvalue`` over the few candidates strictly
inside the bracket (Floyd-Rivest style), so the extra memory is a chunk plus ~1-2 % of the tensor;
blocks of tied values at either end of the bracket are counted, never copied.

Ties at the threshold are broken by flat index (lower index kept first), so masks are
deterministic and nested: ``top_k_mask(x, a)`` is contained in ``top_k_mask(x, b)`` for a <= b.
:func:`keep_top_k_` applies the same selection in place without a full-size mask; trimming is on
every TIES merge's critical path, so it zeroes by multiplying with a float 0/1 mask made in place
(on CPU, comparisons into bool tensors and ``masked_fill_`` cost several float passes each).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

CHUNK = 1 << 20  # elements per chunk for elementwise passes (4 MiB of float32)
_SMALL = 1 << 20  # below this size one plain selection over the whole tensor is cheap enough
_SAMPLE = 1 << 16


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    """Slices covering ``range(n)`` in pieces of at most ``size`` elements."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass(frozen=True)
class Threshold:
    """The k-th largest magnitude of a tensor and how its entries fall around it."""

    value: float
    above: int  # entries with |x| > value
    equal: int  # entries with |x| == value


def kth_largest_abs(flat: torch.Tensor, k: int) -> float:
    """The k-th largest value of ``|flat|`` (1 <= k <= numel), exactly."""
    n = flat.numel()
    if 1 <= k <= n <= _SMALL:  # no counts needed: one selection
        return kth_smallest(flat.abs(), n - k + 1)
    return magnitude_threshold(flat, k).value


def _count(mask: torch.Tensor) -> int:
    return int(torch.count_nonzero(mask))


_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)


def kth_smallest(a: torch.Tensor, rank: int) -> float:
    """The ``rank``-th smallest entry (1-based) of the 1-D ``a``. On CPU numpy's vectorised
    introselect is faster than ``torch.kthvalue`` (docs/benchmarks.md); both copy the input."""
    if a.device.type == "cpu" and a.dtype in _NUMPY_DTYPES:
        return float(np.partition(a.numpy(), rank - 1)[rank - 1])
    return float(a.kthvalue(rank).values)


def _exact(a: torch.Tensor, rank: int) -> Threshold:
    """Full selection on the magnitudes ``a`` (small tensors, or a missed sample)."""
    value = kth_smallest(a, rank)
    return Threshold(value, _count(a > value), _count(a == value))


def _on_numpy(a: torch.Tensor) -> bool:
    return a.device.type == "cpu" and a.dtype in _NUMPY_DTYPES


def _sorted(a: torch.Tensor) -> torch.Tensor:
    if _on_numpy(a):
        return torch.from_numpy(np.sort(a.numpy()))
    return a.sort().values


@functools.cache
def worker_pool(threads: int) -> ThreadPoolExecutor:
    """One thread pool per size for the whole process (a merge visits hundreds of tensors).
    numpy and torch release the interpreter lock while they work, so threads share the cores."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="simmerge-merge")


def _count_around(flat: torch.Tensor, lo: float, hi: float) -> tuple[int, int, torch.Tensor]:
    """One chunked pass over ``|flat|``: how many entries are ``<= lo``, how many ``>= hi``, and
    the magnitudes strictly between (none when ``hi <= lo``: then none is counted above either).

    A large block of equal values (e.g. exact zeros in a sparse task vector) is counted, never
    copied. On CPU the chunks go to numpy over torch's thread count: numpy's comparisons and
    counts are vectorised, torch's comparisons into bool tensors are several times slower.
    """
    n = flat.numel()
    if _on_numpy(flat):
        arr = flat.numpy()

        def count(sl: slice) -> tuple[int, int, np.ndarray]:
            a = np.abs(arr[sl])
            low = a <= lo
            if hi <= lo:
                return int(np.count_nonzero(low)), 0, a[:0]
            high = a >= hi
            n_high = int(np.count_nonzero(high))
            n_low = int(np.count_nonzero(low))
            return n_low, n_high, a[~np.logical_or(low, high, out=low)]

        threads = max(1, min(torch.get_num_threads(), -(-n // CHUNK)))
        parts = list(worker_pool(threads).map(count, chunks(n)))
        mid = np.concatenate([p[2] for p in parts])
        return sum(p[0] for p in parts), sum(p[1] for p in parts), torch.from_numpy(mid)
    at_or_below = at_or_above = 0
    inside = []
    for sl in chunks(n):
        a = flat[sl].abs()
        low = a <= lo
        at_or_below += _count(low)
        if hi > lo:
            high = a >= hi
            at_or_above += _count(high)
            inside.append(a[high.logical_or_(low).logical_not_()])
    mid = torch.cat(inside) if inside else flat.new_empty(0)
    return at_or_below, at_or_above, mid


def magnitude_threshold(flat: torch.Tensor, k: int) -> Threshold:
    """The k-th largest ``|x|`` of ``flat`` with the counts above and at it, exactly."""
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for a tensor of {n} elements")
    rank = n - k + 1  # 1-based rank in ascending order
    if n <= _SMALL:
        return _exact(flat.abs(), rank)
    gen = torch.Generator(device="cpu").manual_seed(n)
    idx = torch.randint(n, (_SAMPLE,), generator=gen).to(flat.device)
    sample = _sorted(flat[idx].abs())
    q = rank / n
    margin = 5.0 * math.sqrt(q * (1.0 - q) / _SAMPLE) + 2.0 / _SAMPLE
    lo = float(sample[max(0, math.floor((q - margin) * _SAMPLE))])
    hi = float(sample[min(_SAMPLE - 1, math.ceil((q + margin) * _SAMPLE))])
    at_or_below, at_or_above, mid = _count_around(flat, lo, hi)
    r = rank - at_or_below
    if 0 < r <= mid.numel():
        value = kth_smallest(mid, r)
        return Threshold(value, _count(mid > value) + at_or_above, _count(mid == value))
    # Rare: the answer is lo or hi itself (a block of equal values), or outside the bracket.
    if r <= 0:
        below = sum(_count(flat[sl].abs() < lo) for sl in chunks(n))
        if rank > below:
            return Threshold(lo, n - at_or_below, at_or_below - below)
    elif hi > lo and r <= mid.numel() + at_or_above:
        above = sum(_count(flat[sl].abs() > hi) for sl in chunks(n))
        if r <= mid.numel() + at_or_above - above:
            return Threshold(hi, above, at_or_above - above)
    # The sample missed the bracket (probability ~1e-6): pay for the exact full selection.
    return _exact(flat.abs(), rank)


def _ties_matter(t: Threshold, k: int, *, zeros_may_stay: bool) -> bool:
    """Whether only some of the entries equal to the threshold fit in the top ``k``. With
    ``zeros_may_stay`` (callers that use the values, not the count) a threshold of 0 keeps all
    zeros too: they read the same kept or dropped."""
    return k - t.above < t.equal and not (zeros_may_stay and t.value == 0.0)


def _kept_chunks(
    flat: torch.Tensor, k: int, t: Threshold, *, zeros_may_stay: bool
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Per chunk of ``flat`` (1 <= k < numel), the boolean mask of its top-``k`` entries, given
    its :func:`magnitude_threshold` ``t``.

    Entries tied at the threshold are kept by index while the quota lasts. When the quota covers
    them all (the usual case) "keep what is not below" is the rule and no tie is located.
    """
    quota = k - t.above  # how many entries equal to the threshold still fit
    ties_matter = _ties_matter(t, k, zeros_may_stay=zeros_may_stay)
    for sl in chunks(flat.numel()):
        a = flat[sl].abs()
        if not ties_matter:
            yield sl, a >= t.value
            continue
        if quota == 0:  # the tied entries that fit were all in earlier chunks
            yield sl, a > t.value
            continue
        equal = a == t.value
        tied = _count(equal)
        if tied <= quota:  # all of this chunk's ties fit: no index needed
            quota -= tied
            yield sl, equal.logical_or_(a > t.value)
            continue
        keep = a > t.value
        keep[equal.nonzero().squeeze(1)[:quota]] = True
        quota = 0
        yield sl, keep


def keep_top_k_(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Zero, in place, every entry of ``flat`` outside its top ``k`` by magnitude (the entries
    :func:`top_k_mask` keeps); one chunked pass, no full-size mask."""
    n = flat.numel()
    if k >= n:
        return flat
    if k <= 0:
        return flat.zero_()
    t = magnitude_threshold(flat, k)
    if _ties_matter(t, k, zeros_may_stay=True):
        for sl, keep in _kept_chunks(flat, k, t, zeros_may_stay=True):
            flat[sl].mul_(keep)  # a multiply is several times faster than masked_fill_
        return flat
    if t.value == 0.0:  # every entry is >= 0 in magnitude: all stay
        return flat
    # the usual case, "keep what is not below the threshold", with a float mask (module docs)
    mask = torch.empty(min(n, CHUNK), dtype=flat.dtype, device=flat.device)
    for sl in chunks(n):
        part = flat[sl]
        keep = torch.abs(part, out=mask[: part.numel()]).ge_(t.value)  # 1.0 kept, 0.0 dropped
        part.mul_(keep)
    return flat


def top_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` entries of largest magnitude; ties broken by lower index."""
    n = flat.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask
    if k >= n:
        return mask.fill_(True)
    t = magnitude_threshold(flat, k)
    for sl, keep in _kept_chunks(flat, k, t, zeros_may_stay=False):
        mask[sl] = keep
    return mask
