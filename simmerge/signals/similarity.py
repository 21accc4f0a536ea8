"""Pair similarity features: named floats for an ordered pair of experts (and a task).

Functional features come from two :class:`~simmerge.signals.signatures.Signature` objects on the
same
probe set, structural ones from two :class:`~simmerge.signals.sketch.TaskVectorSketch` objects; no
weights are read and no forward pass runs here. :data:`FEATURE_COLUMNS` fixes the column order
(the predictor's input); docs/features.md documents every formula.

Top-k signatures and KL/JS. When a signature keeps only the top k tokens per position, both
distributions are compared on the partition {tokens in either top-k list} ∪ {everything
else}: a token missing from one model's list gets that model's tail mass spread evenly over
the tokens it did not list, and the "everything else" bucket takes the remaining mass. This is
the KL/JS of two coarse-grained distributions (a lower bound on the true value when the
estimates are exact) and it is exact when the whole vocabulary is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from simmerge.errors import ConfigError, IncompatibleModelsError
from simmerge.io.checkpoint import Checkpoint, open_checkpoint
from simmerge.signals.signatures import Signature
from simmerge.signals.sketch import (
    GROUPS,
    TaskVectorSketch,
    check_same_layout,
    n_layers_of,
    projection_dots,
    tensor_groups,
    top_mask_threshold,
)

_EPS = 1e-12
_TINY = 1e-30
_TINY_F32 = 1e-38
_LOG_TINY = math.log(_TINY)
GENERAL = "general"

FUNCTIONAL_COLUMNS = (
    "kl_mean",
    "kl_median",
    "kl_p10",
    "kl_p90",
    "js_mean",
    "top1_agreement",
    "entropy_a",
    "entropy_b",
    "act_cos_mean",
    "act_cos_min",
    "act_cos_slope",
    "cka_mean",
    "cka_min",
    "cka_slope",
)
_STRUCTURAL_STATS = ("cos", "norm_ratio", "rel_norm_a", "rel_norm_b")
_MASK_STATS = ("sign_conflict", "mask_jaccard")


def structural_columns(densities: tuple[float, ...] = (0.2,)) -> tuple[str, ...]:
    """Column names of the structural features for the given mask densities."""
    cols = [f"{s}_{g}" for s in _STRUCTURAL_STATS for g in GROUPS]
    for d in densities:
        cols += [f"{s}_d{round(d * 100):02d}_{g}" for s in _MASK_STATS for g in GROUPS]
    return tuple(cols)


FEATURE_COLUMNS = FUNCTIONAL_COLUMNS + structural_columns()


@dataclass(frozen=True, eq=False)
class ModelProfile:
    """Everything pair features need about one expert: its sketch and its signatures,
    keyed by probe set (a task name, or ``"general"``)."""

    name: str
    sketch: TaskVectorSketch
    signatures: Mapping[str, Signature] = field(default_factory=dict)

    def signature(self, task: str | None) -> Signature:
        key = task or GENERAL
        if key not in self.signatures:
            raise ConfigError(
                f"Model {self.name!r} has no signature for probe set {key!r} "
                f"(it has: {', '.join(sorted(self.signatures)) or 'none'}).",
                "compute its signature on that task's probes (catalog `tasks: {T: {probes: F}}`) "
                "or ask for the general set.",
            )
        return self.signatures[key]


@dataclass(frozen=True)
class PairFeatures:
    """Feature values of the ordered pair (a, b) on ``task`` (None: the general probe set)."""

    a: str
    b: str
    task: str | None
    names: tuple[str, ...]
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values, strict=True))

    def __getitem__(self, name: str) -> float:
        return self.values[self.names.index(name)]


def pair_features(a: ModelProfile, b: ModelProfile, task: str | None = None) -> PairFeatures:
    """Functional (on ``task``'s probes, or the general set) + structural features of (a, b)."""
    functional = functional_features(a.signature(task), b.signature(task))
    return assemble_pair_features(a, b, task, functional, structural_features(a.sketch, b.sketch))


def assemble_pair_features(
    a: ModelProfile,
    b: ModelProfile,
    task: str | None,
    functional: Mapping[str, float],
    structural: Mapping[str, float],
) -> PairFeatures:
    """One :class:`PairFeatures` in :data:`FEATURE_COLUMNS` order from the two halves (lets a
    caller compute the task-independent structural half once per pair)."""
    values = {**functional, **structural}
    names = FUNCTIONAL_COLUMNS + structural_columns(a.sketch.config.densities)
    return PairFeatures(a.name, b.name, task, names, tuple(float(values[n]) for n in names))


# --- functional ----------------------------------------------------------------------------


def functional_features(a: Signature, b: Signature) -> dict[str, float]:
    """KL/JS/agreement/entropy over positions; activation cosine/CKA over layers."""
    return functional_features_both(a, b)[0]


def functional_features_both(
    a: Signature, b: Signature
) -> tuple[dict[str, float], dict[str, float]]:
    """The functional features of (a, b) and of (b, a) at once: only KL and the entropies
    depend on the order, so an unordered pair costs one pass over the symmetric ones."""
    if a.probe_hash != b.probe_hash or a.hidden.shape != b.hidden.shape:
        raise IncompatibleModelsError(
            f"Signatures on different probe sets ({a.probe_name!r} vs {b.probe_name!r}) or "
            "architectures cannot be compared.",
            "compute both signatures on the same ProbeSet for models of one catalog.",
        )
    kl_ab, kl_ba, js = _distribution_stats(a, b)
    cos = _per_layer_cosine(a.hidden64, b.hidden64)
    cka = _linear_cka(a, b)
    shared = {
        "js_mean": float(js.mean()),
        "top1_agreement": float((a.token_ids[:, 0] == b.token_ids[:, 0]).double().mean()),
        "act_cos_mean": float(cos.mean()),
        "act_cos_min": float(cos.min()),
        "act_cos_slope": _depth_slope(cos),
        "cka_mean": float(cka.mean()),
        "cka_min": float(cka.min()),
        "cka_slope": _depth_slope(cka),
    }
    h_a, h_b = float(a.entropy.mean()), float(b.entropy.mean())
    return (
        {**_kl_stats(kl_ab), **shared, "entropy_a": h_a, "entropy_b": h_b},
        {**_kl_stats(kl_ba), **shared, "entropy_a": h_b, "entropy_b": h_a},
    )


def _kl_stats(kl: torch.Tensor) -> dict[str, float]:
    # numpy selects (O(n)); torch.quantile sorts, and was the slowest step of a pair
    p10, median, p90 = np.quantile(kl.numpy(), [0.1, 0.5, 0.9]).tolist()
    return {"kl_mean": float(kl.mean()), "kl_median": median, "kl_p10": p10, "kl_p90": p90}


def _aligned_logprobs(a: Signature, b: Signature) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions as log-probs on a common partition ``[positions, cells]`` (see the
    module docstring)."""
    pa, pb = a.logprobs.exp(), b.logprobs.exp()
    spread_a = a.tail / max(a.vocab_size - pa.shape[1], 1)
    spread_b = b.tail / max(b.vocab_size - pb.shape[1], 1)
    # match[t, i, j]: b's i-th listed token is a's j-th listed token
    match = b.token_ids.unsqueeze(2) == a.token_ids.unsqueeze(1)
    in_b = match.any(2)  # b's listed token also listed by a
    # q over a's listed tokens: b's prob when b listed it too, else b's spread tail
    q_on_a = torch.where(match.any(1), (match * pb.unsqueeze(2)).sum(1), spread_b.unsqueeze(1))
    # the tokens only b listed: b's prob and a's spread tail (cells of tokens a listed: 0)
    p_on_b = torch.where(in_b, 0.0, spread_a.unsqueeze(1))
    q_on_b = torch.where(in_b, 0.0, pb)
    rest_a = (1.0 - pa.sum(1) - p_on_b.sum(1)).clamp(min=0.0)
    rest_b = (1.0 - q_on_a.sum(1) - q_on_b.sum(1)).clamp(min=0.0)
    p = torch.cat([pa, p_on_b, rest_a.unsqueeze(1)], dim=1)
    q = torch.cat([q_on_a, q_on_b, rest_b.unsqueeze(1)], dim=1)
    return _log(p), _log(q)


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp(min=_TINY)).masked_fill_(p <= 0, -math.inf)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Σ p (log p − log q) per row; cells with p = 0 contribute 0."""
    p = log_p.exp()
    diff = (log_p - log_q.clamp(min=_LOG_TINY)).nan_to_num_(0.0, posinf=0.0, neginf=0.0)
    return (p * diff).sum(1).clamp_(min=0.0)


def _distribution_stats(a: Signature, b: Signature):
    """Per position: KL(a‖b), KL(b‖a) and JS(a, b) in nats."""
    if a.full and b.full:
        # Per-signature parts (probabilities, entropies) are cached, so a pair costs a few
        # passes: KL = -H(p) - Σ p log q and JS = H((p + q) / 2) - (H(p) + H(q)) / 2.
        p, q = a.dense_probs, b.dense_probs
        kl_ab = (-(p * b.dense_logprobs).sum(1) - a.entropy).clamp_(min=0.0)
        kl_ba = (-(q * a.dense_logprobs).sum(1) - b.entropy).clamp_(min=0.0)
        m = (p + q).mul_(0.5)
        h_m = -(m * m.clamp(min=_TINY_F32).log_()).sum(1)  # m log m, 0 where m = 0
        return kl_ab, kl_ba, (h_m - 0.5 * (a.entropy + b.entropy)).clamp_(min=0.0)
    log_p, log_q = _aligned_logprobs(a, b)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * (_kl_rows(log_p, log_m) + _kl_rows(log_q, log_m))
    return _kl_rows(log_p, log_q), _kl_rows(log_q, log_p), js


def _per_layer_cosine(ha: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
    """Mean over probes of the cosine between pooled hidden states, per layer."""
    cos = torch.nn.functional.cosine_similarity(ha, hb, dim=-1, eps=_EPS)
    return cos.mean(1)


def _linear_cka(a: Signature, b: Signature) -> torch.Tensor:
    """Per-layer linear CKA of the pooled hidden states (Kornblith et al. 2019):
    ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on probe-centred X, Y; NaN for a constant layer."""
    ga, gb = a.probe_gram, b.probe_gram
    if ga is not None and gb is not None:
        cross_sq = (ga * gb).sum((1, 2))  # ⟨X Xᵀ, Y Yᵀ⟩_F = ‖YᵀX‖²_F
    else:
        cross = b.centered_hidden32.transpose(1, 2) @ a.centered_hidden32
        cross_sq = torch.linalg.matrix_norm(cross.double()).square()
    denom = a.gram_norms * b.gram_norms
    return torch.where(denom > 0, cross_sq / denom, torch.nan)


def _depth_slope(per_layer: torch.Tensor) -> float:
    """Least-squares slope of a per-layer value against depth scaled to [0, 1]."""
    n = per_layer.numel()
    if n < 2:
        return 0.0
    x = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    y = per_layer.double()
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / xc.square().sum())


# --- structural ----------------------------------------------------------------------------


def structural_features(a: TaskVectorSketch, b: TaskVectorSketch) -> dict[str, float]:
    """Per group: cosine (projection), norm ratio and norms relative to the base (exact),
    sign conflict and mask Jaccard per density (coordinate sample)."""
    check_same_layout(a, b)
    out: dict[str, float] = {}
    dots = projection_dots(a, b)
    na, nb = a.projection_sq_norms, b.projection_sq_norms
    for i, g in enumerate(GROUPS):
        cos_den = math.sqrt(float(na[i]) * float(nb[i]))  # projection norms: self-cosine is 1
        sq = (float(a.tau_sq[i]), float(b.tau_sq[i]), float(a.base_sq[i]))
        out.update(_norm_features(g, float(dots[i]), cos_den, *sq))
    pa, pb = a.bit_planes, b.bit_planes
    conflict = (pa["neg"] & pb["pos"]) | (pa["pos"] & pb["neg"])
    for j, d in enumerate(a.config.densities):
        ma, mb = pa[f"mask{j}"], pb[f"mask{j}"]
        union = ma | mb
        union_mass, both_mass, clash_mass = _group_masses(a, union, ma & mb, union & conflict)
        tag = f"d{round(d * 100):02d}"
        for i, g in enumerate(GROUPS):
            out[f"sign_conflict_{tag}_{g}"] = _ratio(float(clash_mass[i]), float(union_mass[i]))
            out[f"mask_jaccard_{tag}_{g}"] = _ratio(float(both_mass[i]), float(union_mass[i]))
    return out


def structural_features_both(
    a: TaskVectorSketch, b: TaskVectorSketch
) -> tuple[dict[str, float], dict[str, float]]:
    """Structural features of (a, b) and (b, a): only the norm ratio and which norm is "a"
    depend on the order."""
    ab = structural_features(a, b)
    ba = dict(ab)
    for g in GROUPS:
        ba[f"norm_ratio_{g}"] = _ratio(1.0, ab[f"norm_ratio_{g}"])
        ba[f"rel_norm_a_{g}"], ba[f"rel_norm_b_{g}"] = ab[f"rel_norm_b_{g}"], ab[f"rel_norm_a_{g}"]
    return ab, ba


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _group_masses(s: TaskVectorSketch, *planes: np.ndarray) -> np.ndarray:
    """For each packed bit plane over the samples: the estimated number of coordinates per
    group whose bit is set (per tensor, set samples x its Horvitz-Thompson weight, summed over
    the group's tensors). Returns ``[planes, groups]``."""
    bounds = s.segment_bytes
    weights = s.segment_weights.numpy()
    groups = s.segment_groups.numpy().astype(np.float64)
    out = []
    for plane in planes:
        running = np.concatenate([[0], np.cumsum(_POPCOUNT[plane])])
        per_tensor = running[bounds[1:]] - running[bounds[:-1]]
        out.append(groups @ (per_tensor * weights))
    return np.stack(out)


def _norm_features(
    g: str, dot: float, cos_den: float, sq_a: float, sq_b: float, sq_base: float
) -> dict[str, float]:
    """Cosine, norm ratio and norms relative to the base of one group, from inner products."""
    return {
        f"cos_{g}": _ratio(dot, cos_den),
        f"norm_ratio_{g}": _ratio(math.sqrt(sq_a), math.sqrt(sq_b)),
        f"rel_norm_a_{g}": _ratio(math.sqrt(sq_a), math.sqrt(sq_base)),
        f"rel_norm_b_{g}": _ratio(math.sqrt(sq_b), math.sqrt(sq_base)),
    }


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when undefined (e.g. a group the model does not have or did not change)."""
    return num / den if den > 0 else float("nan")


def exact_structural_features(
    a: str | Checkpoint, b: str | Checkpoint, base: str | Checkpoint, densities=(0.2,)
) -> dict[str, float]:
    """The structural features computed exactly from the full weights: one pass over a, b and
    the base together. O(pairs) reads, so only for tests and for measuring sketch error."""
    ca, cb, cbase = (x if isinstance(x, Checkpoint) else open_checkpoint(x) for x in (a, b, base))
    n_layers = n_layers_of(cbase)
    index = {g: i for i, g in enumerate(GROUPS)}
    sums = torch.zeros(4, len(GROUPS), dtype=torch.float64)  # <a,b>, |a|^2, |b|^2, |base|^2
    counts = torch.zeros(
        len(densities), 3, len(GROUPS), dtype=torch.float64
    )  # union, both, conflict
    for name in sorted(cbase.names):
        if not cbase.info(name).is_float:
            continue
        w = cbase.get(name, dtype=torch.float32)
        ta = ca.get(name, dtype=torch.float32).sub_(w).view(-1).double()
        tb = cb.get(name, dtype=torch.float32).sub_(w).view(-1).double()
        rows = [index[g] for g in tensor_groups(name, n_layers)]
        sums[:, rows] += torch.tensor(
            [float(ta @ tb), float(ta @ ta), float(tb @ tb), float(w.double().square().sum())],
            dtype=torch.float64,
        ).unsqueeze(1)
        conflict = (ta * tb) < 0
        for j, d in enumerate(densities):
            ma = (ta.abs() >= top_mask_threshold(ta.float(), d)) & (ta != 0)
            mb = (tb.abs() >= top_mask_threshold(tb.float(), d)) & (tb != 0)
            union, both = ma | mb, ma & mb
            stats = [int(union.sum()), int(both.sum()), int((union & conflict).sum())]
            counts[j][:, rows] += torch.tensor(stats, dtype=torch.float64).unsqueeze(1)
    out: dict[str, float] = {}
    for i, g in enumerate(GROUPS):
        dot, sa, sb, sbase = (float(v) for v in sums[:, i])
        out.update(_norm_features(g, dot, math.sqrt(sa * sb), sa, sb, sbase))
        for j, d in enumerate(densities):
            union, both, conflict = (float(v) for v in counts[j][:, i])
            tag = f"d{round(d * 100):02d}"
            out[f"sign_conflict_{tag}_{g}"] = _ratio(conflict, union)
            out[f"mask_jaccard_{tag}_{g}"] = _ratio(both, union)
    return out
