"""Merge operators as functions on tensors.

Semantics follow mergekit 0.1.5 (see docs/design.md, "Operators"). Notation: ``base`` is the
shared base tensor, ``experts`` the member tensors, ``tau_i = W_i - W_base`` their task vectors,
``w_i`` per-member weights and ``lam`` a global scale.

Memory contract: every function *consumes* its ``experts`` (and ``base``) tensors -- it may
overwrite them in place to hold task vectors or the result -- so the engine can stay within a few
tensors of memory per step. Callers that need their inputs afterwards pass clones
(:func:`simmerge.merging.registry.apply_operator` does that for you). Inputs are float32 or
float64 on one device; the result has the same dtype and shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from simmerge.merging.topk import chunks, keep_top_k_, top_k_mask, worker_pool

_EPS = 1e-8
_PARALLEL_MIN = 1 << 16  # entries per thread below which splitting a sort costs more than it saves


# --- sparsification of one task vector (in place) --------------------------------------------


def _keep_count(n: int, density: float) -> int:
    """Entries kept at ``density``: at least one in a non-empty tensor (as mergekit does)."""
    return max(1, int(density * n)) if n else 0


def trim_magnitude_(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """TIES trim: keep the ``density`` fraction of entries with largest |delta|, zero the rest;
    optionally rescale the kept entries to the original L1 norm."""
    if density >= 1.0:
        return delta
    l1_before = _l1(delta) if rescale else 0.0
    keep_top_k_(delta.view(-1), _keep_count(delta.numel(), density))
    return _rescale_l1_(delta, l1_before) if rescale else delta


def trim_outliers_(
    delta: torch.Tensor, density: float, gamma: float, rescale: bool = False
) -> torch.Tensor:
    """Breadcrumbs: drop the largest ``gamma`` fraction and the smallest, so ``density`` remains.

    If ``gamma + density > 1`` fewer large entries are dropped, so exactly ``density`` remains.
    """
    if density >= 1.0:
        return delta
    l1_before = _l1(delta) if rescale else 0.0
    flat = delta.view(-1)
    n = flat.numel()
    target = int(density * n)
    n_top = min(int(gamma * n), n - target)
    keep = top_k_mask(flat, n_top + target)
    if n_top:
        keep &= ~top_k_mask(flat, n_top)
    flat.mul_(keep)  # zeroing by a multiply: several times faster than masked_fill_
    return _rescale_l1_(delta, l1_before) if rescale else delta


def _l1(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t, 1)) if t.numel() else 0.0


def _rescale_l1_(delta: torch.Tensor, l1_before: float) -> torch.Tensor:
    """Scale ``delta`` so its L1 norm equals ``l1_before`` (DARE / DELLA rescale)."""
    l1_after = _l1(delta)
    if l1_before > _EPS and l1_after > _EPS:
        delta.mul_(l1_before / l1_after)
    return delta


def drop_random_(
    delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density``; optionally rescale to the same L1."""
    if density >= 1.0:
        return delta
    l1_before = _l1(delta)
    flat = delta.view(-1)
    for sl in chunks(flat.numel()):
        draw = torch.rand(sl.stop - sl.start, generator=generator, device=generator.device)
        flat[sl].mul_(draw.to(flat.device).lt_(density))  # a float 0/1 mask: see _disjoint_sum
    return _rescale_l1_(delta, l1_before) if rescale else delta


def _magnitude_ranks(block: torch.Tensor) -> torch.Tensor:
    """Rank of every entry's magnitude within its row (0 = smallest), as ``block``'s dtype.

    One sort per row, then the positions are scattered back. On CPU numpy's argsort is used: it
    is vectorised (AVX-512/AVX2) and faster than torch's, but single-threaded, so
    a large block is split by rows over torch's intra-op thread count (numpy and torch release
    the interpreter lock while they work). Ties are ordered arbitrarily, as in mergekit.
    """
    mags = block.abs()
    positions = torch.arange(block.shape[1], dtype=block.dtype, device=block.device)
    if mags.device.type != "cpu":
        return mags.scatter_(1, mags.argsort(dim=1), positions.expand_as(mags))

    def rank_rows_(part: torch.Tensor) -> None:
        order = torch.from_numpy(np.argsort(part.numpy(), axis=1))
        part.scatter_(1, order, positions.expand_as(part))

    threads = min(torch.get_num_threads(), mags.shape[0], max(1, mags.numel() // _PARALLEL_MIN))
    if threads <= 1:
        rank_rows_(mags)
    else:
        list(worker_pool(threads).map(rank_rows_, mags.tensor_split(threads, dim=0)))
    return mags


def drop_magnitude_ranked_(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    rescale: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """DELLA MagPrune: keep probability rises linearly with magnitude rank within each row,
    from ``density - epsilon`` (smallest) to ``density + epsilon`` (largest); then rescale.

    Rows are the first dimension with the rest flattened (mergekit ranks along dim 1, which is
    the same for the 1-D and 2-D tensors of transformer checkpoints).
    """
    if density >= 1.0 or delta.numel() == 0:
        return delta
    l1_before = _l1(delta)
    rows = delta.view(1, -1) if delta.dim() < 2 else delta.view(delta.shape[0], -1)
    width = rows.shape[1]
    row_block = max(1, (1 << 20) // max(width, 1))
    for start in range(0, rows.shape[0], row_block):
        block = rows[start : start + row_block]
        ranks = _magnitude_ranks(block)  # 0 = smallest
        if width > 1:
            probs = ranks.mul_(2.0 * epsilon / (width - 1)).add_(density - epsilon)
        else:
            probs = ranks.fill_(density)
        draw = torch.rand(block.shape, generator=generator, device=generator.device)
        block.mul_(draw.to(block.device).lt_(probs))  # a float 0/1 mask: see _disjoint_sum
    return _rescale_l1_(delta, l1_before) if rescale else delta


# --- combining task vectors ------------------------------------------------------------------


def combine_task_vectors_(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    sign_consensus: bool,
    normalize: bool,
    lam: float,
) -> torch.Tensor:
    """``base + lam * mix(w_i * tau_i)``, written into ``base`` chunk by chunk.

    With ``sign_consensus`` (TIES): per entry the elected sign is the sign of the weighted sum
    ``sum_i w_i * tau_i`` (a zero sum elects +); only entries whose weighted delta has the elected
    sign are summed (zeros never agree), and ``normalize`` divides by the sum of the weights of
    the agreeing members (the disjoint mean). Without it, ``normalize`` divides by ``sum_i w_i``.

    Members are accumulated one at a time into chunk-sized buffers (the deltas are consumed), so
    scratch memory is a few chunks whatever the number of members.
    """
    flat_base = base.view(-1)
    flat_deltas = [d.view(-1) for d in deltas]
    total_weight = float(sum(weights))
    for sl in chunks(flat_base.numel()):
        weighted = [
            d[sl] if w == 1.0 else d[sl].mul_(w) for d, w in zip(flat_deltas, weights, strict=True)
        ]
        # the sign election still needs every member after the sum; otherwise sum in place
        mixed = weighted[0].clone() if sign_consensus else weighted[0]
        for x in weighted[1:]:
            mixed.add_(x)
        if sign_consensus:
            mixed = _disjoint_sum(mixed, weighted, weights, normalize=normalize)
        elif normalize and abs(total_weight) > _EPS:
            mixed.div_(total_weight)
        flat_base[sl].add_(mixed, alpha=lam)
    return base


def _disjoint_sum(
    mixed: torch.Tensor,
    weighted: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    normalize: bool,
) -> torch.Tensor:
    """The TIES step on one chunk: keep each weighted delta whose sign matches the elected sign
    of ``mixed`` (their sum), add them up, and divide by the agreeing members' weights.

    Only float arithmetic: on CPU torch's comparisons into bool tensors, bool-by-float multiplies
    and ``where`` are several times slower than float ops. ``s * relu(s * x)`` is ``x`` where x
    has sign ``s`` and 0 elsewhere, exactly (multiplying by +-1 never rounds).
    """
    elected = torch.ones_like(mixed).copysign_(mixed)  # +1 where the sum is >= +0, else -1
    agreeing = torch.zeros_like(mixed)
    divisor = torch.zeros_like(mixed) if normalize else None
    scratch = mixed  # the sum is no longer needed once the signs are elected
    for x, w in zip(weighted, weights, strict=True):
        torch.mul(x, elected, out=scratch).clamp_min_(0.0)  # |x| where x agrees, else 0
        agreeing.add_(scratch)
        if divisor is not None:
            divisor.add_(scratch.gt_(0.0), alpha=w)  # zeros never agree
    agreeing.mul_(elected)
    if divisor is not None:
        agreeing.div_(divisor.add_(torch.eq(divisor, 0.0, out=scratch)))  # none agree: divide by 1
    return agreeing


def _task_vectors_(base: torch.Tensor, experts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    for x in experts:
        x.sub_(base)
    return list(experts)


# --- the operators -------------------------------------------------------------------------


def linear(
    experts: Sequence[torch.Tensor], weights: Sequence[float], *, normalize: bool
) -> torch.Tensor:
    """``sum_i w_i W_i / sum_i w_i`` (no division when ``normalize`` is off)."""
    out = experts[0].mul_(weights[0])
    for x, wi in zip(experts[1:], weights[1:], strict=True):
        out.add_(x, alpha=wi)
    total = float(sum(weights))
    if normalize and abs(total) > _EPS:
        out /= total
    return out


def task_arithmetic(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    lam: float,
    normalize: bool,
) -> torch.Tensor:
    """``W_base + lam * sum_i w_i tau_i``.

    Computed as ``(1 - sum_i c_i) W_base + sum_i c_i W_i`` with ``c_i = lam w_i`` (divided by
    ``sum_i w_i`` when normalizing): the same value in exact arithmetic, one pass per input
    instead of forming each task vector first -- this operator is I/O-bound when streaming.
    """
    total = float(sum(weights))
    scale = lam / total if normalize and abs(total) > _EPS else lam
    coeffs = [scale * w for w in weights]
    out = base.mul_(1.0 - sum(coeffs))
    for x, c in zip(experts, coeffs, strict=True):
        out.add_(x, alpha=c)
    return out


def ties(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    lam: float,
    normalize: bool,
    rescale: bool,
) -> torch.Tensor:
    """TIES: trim each tau_i to its top ``density`` by magnitude, elect signs by weighted mass,
    disjoint mean over agreeing entries, times ``lam``."""
    deltas = _task_vectors_(base, experts)
    for d, density in zip(deltas, densities, strict=True):
        trim_magnitude_(d, density, rescale)
    return combine_task_vectors_(
        base, deltas, weights, sign_consensus=True, normalize=normalize, lam=lam
    )


def dare(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    generator: torch.Generator,
    sign_consensus: bool,
    lam: float,
    normalize: bool,
    rescale: bool,
) -> torch.Tensor:
    """DARE (``dare_linear``; ``dare_ties`` with ``sign_consensus``): random drop + L1 rescale."""
    deltas = _task_vectors_(base, experts)
    for d, density in zip(deltas, densities, strict=True):
        drop_random_(d, density, rescale, generator)
    return combine_task_vectors_(
        base, deltas, weights, sign_consensus=sign_consensus, normalize=normalize, lam=lam
    )


def breadcrumbs(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    gammas: Sequence[float],
    sign_consensus: bool,
    lam: float,
    normalize: bool,
    rescale: bool,
) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest ``gamma_i`` and the smallest entries of each tau_i;
    ``breadcrumbs_ties`` adds the TIES sign election (``sign_consensus``)."""
    deltas = _task_vectors_(base, experts)
    for d, density, gamma in zip(deltas, densities, gammas, strict=True):
        trim_outliers_(d, density, gamma, rescale)
    return combine_task_vectors_(
        base, deltas, weights, sign_consensus=sign_consensus, normalize=normalize, lam=lam
    )


def della(
    base: torch.Tensor,
    experts: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    generator: torch.Generator,
    epsilons: Sequence[float],
    sign_consensus: bool,
    lam: float,
    normalize: bool,
    rescale: bool,
) -> torch.Tensor:
    """DELLA: magnitude-ranked random drop + rescale, then (``della``; not ``della_linear``)
    the TIES sign step, times ``lam``."""
    deltas = _task_vectors_(base, experts)
    for d, density, eps in zip(deltas, densities, epsilons, strict=True):
        drop_magnitude_ranked_(d, density, eps, rescale, generator)
    return combine_task_vectors_(
        base, deltas, weights, sign_consensus=sign_consensus, normalize=normalize, lam=lam
    )


SLERP_DOT_THRESHOLD = 0.9995


def slerp(a: torch.Tensor, b: torch.Tensor, *, t: float) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1) on the directions of the flattened
    tensors, applied to the raw tensors; plain lerp when they are nearly colinear."""
    norm_a, norm_b = float(a.norm()), float(b.norm())
    dot = float(torch.dot(a.reshape(-1), b.reshape(-1))) / (max(norm_a, _EPS) * max(norm_b, _EPS))
    if norm_a <= _EPS or norm_b <= _EPS:
        dot = 0.0  # a zero tensor has no direction; mergekit leaves it unnormalized
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return a.mul_(1.0 - t).add_(b, alpha=t)
    theta = torch.arccos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    s0 = float(torch.sin((1.0 - t) * theta) / sin_theta)
    s1 = float(torch.sin(t * theta) / sin_theta)
    return a.mul_(s0).add_(b, alpha=s1)


def model_stock(base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Model Stock: ``t = N cos / (1 + (N-1) cos)`` from the mean pairwise cosine of the task
    vectors; result ``t * mean(W_i) + (1 - t) * W_base``."""
    n = len(experts)
    deltas = _task_vectors_(base, experts)
    norms = [float(d.norm()) for d in deltas]
    flat = [d.reshape(-1) for d in deltas]
    cosines = [
        max(-1.0, min(1.0, float(torch.dot(flat[i], flat[j])) / max(norms[i] * norms[j], 1e-6)))
        for i in range(n)
        for j in range(i + 1, n)
    ]
    cos = sum(cosines) / len(cosines)
    denominator = 1.0 + (n - 1) * cos
    t = n * cos / denominator if abs(denominator) > 1e-6 else 0.0
    # mean(W_i) = base + mean(tau_i), so the result is base + t * mean(tau_i).
    mean_delta = deltas[0]
    for d in deltas[1:]:
        mean_delta.add_(d)
    return base.add_(mean_delta, alpha=t / n)


def nuslerp(
    a: torch.Tensor,
    b: torch.Tensor,
    base: torch.Tensor | None,
    *,
    t: float,
    flatten: bool,
    row_wise: bool,
) -> torch.Tensor:
    """NuSLERP: spherical interpolation at ``t`` (mergekit derives it from the two weights as
    ``w_b / (w_a + w_b)``), of the task vectors when a base is given (the result is added back
    to it), of the raw tensors otherwise. ``flatten`` treats the whole tensor as one vector;
    without it every row (``row_wise``: every column) is interpolated on its own. Unlike
    :func:`slerp` it falls back to lerp only for exactly colinear vectors."""
    if b is a:  # the same tensor object twice: the in-place steps below need two buffers
        b = b.clone()
    if base is not None:
        a = a.sub_(base)
        b = b.sub_(base)
    a, b = a.contiguous(), b.contiguous()
    # The result is written into a: the two coefficients per vector (row, column or the whole
    # tensor) come from norms and dot products, so no full-size temporary is made beyond one
    # product for the per-row dots.
    if flatten:
        va, vb = a.view(1, -1), b.view(1, -1)
    elif row_wise and a.dim() > 1:
        va, vb = a.transpose(0, -1), b.transpose(0, -1)
    else:
        va, vb = a, b
    if va.dim() < 2:  # a vector (or scalar) is one row
        va, vb = va.view(1, -1), vb.view(1, -1)
    norm_a = torch.linalg.vector_norm(va, dim=-1, keepdim=True).clamp_(min=1e-7)
    norm_b = torch.linalg.vector_norm(vb, dim=-1, keepdim=True).clamp_(min=1e-7)
    if va.shape[0] == 1:
        dot = torch.dot(va.reshape(-1), vb.reshape(-1)).reshape(1, 1)
    else:
        dot = (va * vb).sum(dim=-1, keepdim=True)
    cos = (dot / (norm_a * norm_b)).clamp_(-1.0, 1.0)
    colinear = (1.0 - cos.square()) <= 1e-16
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(colinear, 1.0 - t, torch.sin((1.0 - t) * theta) / sin_theta)
    coef_b = torch.where(colinear, t, torch.sin(t * theta) / sin_theta)
    va.mul_(coef_a).add_(vb.mul_(coef_b))
    return a.add_(base) if base is not None else a


def sce(base: torch.Tensor, experts: Sequence[torch.Tensor], *, select_topk: float) -> torch.Tensor:
    """SCE: keep the ``select_topk`` fraction of entries whose task vectors vary most across
    members (Select), weight each task vector by its mean square over the sum of them
    (Calculate), drop entries whose sign disagrees with the elected sign (Erase), and add the
    weighted mean of what remains to the base.

    The members are never stacked: the deltas are formed in the experts' own tensors, and the
    variance and the sign vote run chunk by chunk, so scratch memory is one variance tensor
    and a few chunks whatever the number of members (a stack costs one extra copy of every
    member, and each full-size temporary of the vote another)."""
    deltas = [d.view(-1) for d in _task_vectors_(base, experts)]
    n = len(deltas)
    if select_topk < 1.0:
        if select_topk > 0.0:
            var = torch.empty_like(deltas[0])
            for sl in chunks(var.numel()):
                mean = torch.zeros_like(var[sl])
                for d in deltas:
                    mean.add_(d[sl])
                mean.div_(n)
                acc = var[sl].zero_()
                for d in deltas:
                    acc.add_((d[sl] - mean).square_())
                acc.div_(n)
            k = int(int(torch.count_nonzero(var)) * select_topk)
            keep = top_k_mask(var, k)
            del var
            for d in deltas:
                d.mul_(keep)
            del keep
        else:
            for d in deltas:
                d.zero_()
    msq = [float(torch.dot(d, d)) / max(d.numel(), 1) for d in deltas]
    total = sum(msq)
    weights = [m / total for m in msq] if abs(total) >= 1e-6 else [1.0 / n] * n
    flat_base = base.view(-1)
    for sl in chunks(flat_base.numel()):
        vote = torch.zeros_like(flat_base[sl])
        for d in deltas:
            vote.add_(d[sl])
        elected = torch.where(vote >= 0, 1.0, -1.0)  # a zero sum elects +
        merged, divisor = vote.zero_(), torch.zeros_like(vote)
        for d, w in zip(deltas, weights, strict=True):
            agree = (d[sl] * elected) > 0  # same sign as elected; zeros never agree
            merged.add_(d[sl].mul_(agree), alpha=w)
            divisor.add_(agree, alpha=w)
        flat_base[sl].add_(merged.div_(divisor.clamp_(min=1e-6)))
    return base


def karcher(tensors: Sequence[torch.Tensor], *, max_iter: int, tol: float) -> torch.Tensor:
    """Karcher (Riemannian) mean of the members' directions on the unit sphere, with equal
    weights, scaled by the mean of their norms. Up to ``max_iter`` steps along the weighted log
    map; stops once the tangent's norm falls below ``tol``."""
    n = len(tensors)
    if n == 1:
        return tensors[0]
    # Inputs are consumed: each member becomes its unit direction in place, and every step
    # below is an in-place update of one mean and one tangent buffer with scalar coefficients
    # (the tangent sum_i c_i (u_i - dot_i m) is sum_i c_i u_i - (sum_i c_i dot_i) m), so
    # scratch memory is two tensors whatever the number of members or iterations.
    norms = [float(torch.linalg.vector_norm(x)) for x in tensors]
    units = [x.div_(nrm) if nrm != 0.0 else x for x, nrm in zip(tensors, norms, strict=True)]
    points = [units[i] for i in range(n) if norms[i] > tol]
    if not points:
        return torch.zeros_like(tensors[0])
    w = 1.0 / len(points)
    mean = torch.zeros_like(points[0])
    for u in points:
        mean.add_(u, alpha=w)
    mean_norm = float(torch.linalg.vector_norm(mean))
    mean = points[0].clone() if mean_norm < tol else mean.div_(mean_norm)
    tangent = torch.empty_like(mean)
    for _ in range(max_iter):
        tangent.zero_()
        along_mean = 0.0
        for u in points:
            dot = min(max(float(torch.dot(mean.reshape(-1), u.reshape(-1))), -1.0), 1.0)
            theta = math.acos(dot)
            if theta < tol:
                continue
            c = w * theta / math.sin(theta)
            tangent.add_(u, alpha=c)
            along_mean += c * dot
        tangent.add_(mean, alpha=-along_mean)
        step = float(torch.linalg.vector_norm(tangent))
        if step < tol:
            break
        mean.mul_(math.cos(step)).add_(tangent, alpha=math.sin(step) / step)
        unit_norm = float(torch.linalg.vector_norm(mean))
        if unit_norm > tol:
            mean.div_(unit_norm)
    return mean.mul_(sum(norms) / n)


def passthrough(x: torch.Tensor, *, scale: float) -> torch.Tensor:
    """The one input unchanged, times ``scale`` (mergekit's per-input scale; 1 by default)."""
    return x if scale == 1.0 else x.mul_(scale)
