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
every TIES merge's critical path, so it zeroes by multiplying with a chunk's comparison
(``masked_fill_`` is several times slower on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
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
    sample = flat[idx].abs().sort().values
    q = rank / n
    margin = 5.0 * math.sqrt(q * (1.0 - q) / _SAMPLE) + 2.0 / _SAMPLE
    lo = float(sample[max(0, math.floor((q - margin) * _SAMPLE))])
    hi = float(sample[min(_SAMPLE - 1, math.ceil((q + margin) * _SAMPLE))])
    # One chunked pass: count the entries at or below lo and at or above hi, and keep only those
    # strictly inside (lo, hi), so a large block of equal values (e.g. exact zeros in a sparse
    # task vector) is counted, never copied.
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


def _kept_chunks(
    flat: torch.Tensor, k: int, *, zeros_may_stay: bool
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Per chunk of ``flat`` (1 <= k < numel), the boolean mask of its top-``k`` entries.

    Entries tied at the threshold are kept by index while the quota lasts. When the quota covers
    them all (the usual case) "keep what is not below" is the rule and no tie is located. With
    ``zeros_may_stay`` (callers that use the values, not the count) a threshold of 0 keeps all
    zeros too: they read the same kept or dropped.
    """
    t = magnitude_threshold(flat, k)
    quota = k - t.above  # how many entries equal to the threshold still fit
    ties_matter = quota < t.equal and not (zeros_may_stay and t.value == 0.0)
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
    for sl, keep in _kept_chunks(flat, k, zeros_may_stay=True):
        flat[sl].mul_(keep)  # a multiply is several times faster than masked_fill_
    return flat


def top_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` entries of largest magnitude; ties broken by lower index."""
    n = flat.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask
    if k >= n:
        return mask.fill_(True)
    for sl, keep in _kept_chunks(flat, k, zeros_may_stay=False):
        mask[sl] = keep
    return mask
