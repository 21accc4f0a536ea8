"""Exact top-k-by-magnitude masks in bounded memory.

TIES and Breadcrumbs keep an exact number of entries of a task vector ranked by magnitude. The
obvious tools cost far more memory than the tensor itself on CPU (``torch.kthvalue`` copies the
input and allocates int64 indices: about 3x the tensor; ``torch.topk`` about 6x), which would break
the engine's promise that peak memory is a few tensors. Here the threshold is found with a sampled
bracket, one chunked counting pass and an exact ``kthvalue`` over the few candidates inside the
bracket (Floyd-Rivest style), so the extra memory is a chunk plus ~1-2 % of the tensor.

Ties at the threshold are broken by flat index (lower index kept first), so masks are
deterministic and nested: ``top_k_mask(x, a)`` is contained in ``top_k_mask(x, b)`` for a <= b.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

CHUNK = 1 << 20  # elements per chunk for elementwise passes (4 MiB of float32)
_SMALL = 1 << 20  # below this size a plain kthvalue is cheap enough
_SAMPLE = 1 << 16


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    """Slices covering ``range(n)`` in pieces of at most ``size`` elements."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def kth_largest_abs(flat: torch.Tensor, k: int) -> float:
    """The k-th largest value of ``|flat|`` (1 <= k <= numel), exactly."""
    return _kth_largest_abs_and_count_above(flat, k)[0]


def _kth_largest_abs_and_count_above(flat: torch.Tensor, k: int) -> tuple[float, int]:
    """The k-th largest ``|x|`` and how many entries are strictly larger (saves a pass)."""
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for a tensor of {n} elements")
    rank = n - k + 1  # 1-based rank in ascending order
    if n <= _SMALL:
        a = flat.abs()
        value = a.kthvalue(rank).values
        return float(value), int((a > value).sum())
    gen = torch.Generator(device="cpu").manual_seed(n)
    idx = torch.randint(n, (_SAMPLE,), generator=gen).to(flat.device)
    sample = flat[idx].abs().sort().values
    q = rank / n
    margin = 5.0 * math.sqrt(q * (1.0 - q) / _SAMPLE) + 2.0 / _SAMPLE
    lo = float(sample[max(0, math.floor((q - margin) * _SAMPLE))])
    hi = float(sample[min(_SAMPLE - 1, math.ceil((q + margin) * _SAMPLE))])
    # One chunked pass: count entries below / equal to / above the bracket ends and keep only
    # those strictly inside it, so a large block of equal values (e.g. exact zeros in a sparse
    # task vector) is counted, never copied.
    below = at_lo = at_hi = 0
    inside = []
    for sl in chunks(n):
        a = flat[sl].abs()
        below += int((a < lo).sum())
        at_lo += int((a == lo).sum())
        if hi > lo:
            at_hi += int((a == hi).sum())
            inside.append(a[(a > lo) & (a < hi)])
    mid = torch.cat(inside) if inside else flat.new_empty(0)
    above_hi = n - below - at_lo - mid.numel() - at_hi
    r = rank - below
    if 0 < r <= at_lo:
        return lo, n - below - at_lo
    r -= at_lo
    if 0 < r <= mid.numel():
        value = float(mid.kthvalue(r).values)
        return value, int((mid > value).sum()) + at_hi + above_hi
    r -= mid.numel()
    if 0 < r <= at_hi:
        return hi, above_hi
    # The sample missed the bracket (probability ~1e-6): pay for the exact full selection.
    a = flat.abs()
    value = a.kthvalue(rank).values
    return float(value), int((a > value).sum())


def top_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` entries of largest magnitude; ties broken by lower index."""
    n = flat.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask
    if k >= n:
        return mask.fill_(True)
    threshold, above = _kth_largest_abs_and_count_above(flat, k)
    quota = k - above  # how many entries equal to the threshold still fit
    for sl in chunks(n):
        a = flat[sl].abs()
        keep = a > threshold
        if quota > 0:
            equal = (a == threshold).nonzero().squeeze(1)[:quota]
            keep[equal] = True
            quota -= equal.numel()
        mask[sl] = keep
    return mask
