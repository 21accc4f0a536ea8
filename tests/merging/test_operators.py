"""Every merge operator against hand-computed tensors and its documented semantics."""

from __future__ import annotations

import math

import pytest
import torch

from simmerge.errors import OperatorParameterError, UnknownOperatorError
from simmerge.merging import OPERATOR_NAMES, apply_operator, resolve_params
from simmerge.merging.topk import keep_top_k_, kth_largest_abs, magnitude_threshold, top_k_mask

T = torch.tensor
BASE = T([0.0, 0.0, 0.0, 0.0])


def close(a: torch.Tensor, b, tol: float = 1e-6) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def test_the_grid_operators_and_mergekits_others_are_registered():
    assert set(OPERATOR_NAMES) == {
        "breadcrumbs_ties",
        "della_linear",
        "nuslerp",
        "sce",
        "karcher",
        "passthrough",
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "slerp",
        "breadcrumbs",
        "della",
        "model_stock",
    }


# --- linear / task arithmetic -------------------------------------------------------------------


def test_linear_is_weighted_mean_and_unnormalized_sum():
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    assert close(apply_operator("linear", None, [a, b], [1.0, 3.0]), [2.5, 5.0])
    got = apply_operator("linear", None, [a, b], [1.0, 3.0], {"normalize": False})
    assert close(got, [10.0, 20.0])


def test_task_arithmetic_adds_scaled_weighted_task_vectors():
    base, a, b = T([1.0, 1.0]), T([2.0, 0.0]), T([1.0, 4.0])  # tau_a=[1,-1], tau_b=[0,3]
    got = apply_operator("task_arithmetic", base, [a, b], [1.0, 0.5], {"lambda": 0.8})
    assert close(got, [1 + 0.8 * 1.0, 1 + 0.8 * (-1.0 + 1.5)])


def test_apply_operator_leaves_inputs_untouched():
    base, a, b = T([1.0, 1.0]), T([2.0, 0.0]), T([1.0, 4.0])
    apply_operator("ties", base, [a, b], params={"density": 0.5})
    assert close(base, [1.0, 1.0]) and close(a, [2.0, 0.0]) and close(b, [1.0, 4.0])


# --- TIES ----------------------------------------------------------------------------------------


def test_ties_trims_to_density_then_takes_disjoint_mean():
    a = T([1.0, -2.0, 3.0, 0.5])  # top-2: -2, 3
    b = T([-1.0, 1.5, 1.0, 2.0])  # top-2: 1.5, 2
    got = apply_operator("ties", BASE, [a, b], params={"density": 0.5})
    # trimmed a=[0,-2,3,0], b=[0,1.5,0,2]; entry 1: sum -0.5 -> elect -, only a agrees -> -2
    assert close(got, [0.0, -2.0, 3.0, 2.0])


def test_ties_elects_sign_by_weighted_mass_not_by_count():
    a, b, c = T([1.0]), T([1.0]), T([-5.0])  # two positives, but more negative mass
    got = apply_operator("ties", T([0.0]), [a, b, c])
    assert close(got, [-5.0])
    # with weights, mass flips back to +: 3*1 + 3*1 - 1*5 = 1 > 0 -> mean of agreeing (w=3,3)
    got = apply_operator("ties", T([0.0]), [a, b, c], [3.0, 3.0, 1.0])
    assert close(got, [(3 * 1.0 + 3 * 1.0) / 6.0])


def test_ties_sign_tie_elects_positive():
    got = apply_operator("ties", T([10.0]), [T([12.0]), T([8.0])])  # +2 and -2: sum 0
    assert close(got, [12.0])


def test_ties_without_normalize_sums_agreeing_weighted_deltas():
    got = apply_operator(
        "ties",
        T([0.0, 0.0]),
        [T([1.0, 2.0]), T([3.0, -1.0])],
        [1.0, 2.0],
        {"normalize": False, "lambda": 0.5},
    )
    # entry 0: 1 + 6 = 7 -> 3.5; entry 1: 2 - 2 = 0 -> elect +, only a agrees: 2 -> 1.0
    assert close(got, [3.5, 1.0])


def test_ties_on_all_zero_task_vectors_returns_base():
    base = T([1.0, -2.0, 3.0])
    got = apply_operator("ties", base, [base.clone(), base.clone()], params={"density": 0.3})
    assert close(got, base)


def test_ties_density_one_keeps_every_entry():
    a, b = T([1.0, -0.1]), T([0.5, 0.2])
    got = apply_operator("ties", T([0.0, 0.0]), [a, b], params={"density": 1.0})
    # entry 1: -0.1 + 0.2 > 0 -> only b agrees -> 0.2
    assert close(got, [0.75, 0.2])


def test_ties_per_member_density_is_used():
    a, b = T([4.0, 3.0, 2.0, 1.0]), T([1.0, 2.0, 3.0, 4.0])
    got = apply_operator("ties", BASE, [a, b], densities=[0.25, 1.0])
    # a keeps only 4 -> [4,0,0,0]; b unchanged: disjoint means
    assert close(got, [2.5, 2.0, 3.0, 4.0])


# --- DARE ----------------------------------------------------------------------------------------


def test_dare_at_density_one_equals_task_arithmetic():
    base, a, b = torch.randn(50), torch.randn(50), torch.randn(50)
    dare = apply_operator("dare_linear", base, [a, b], params={"density": 1.0})
    assert close(dare, apply_operator("task_arithmetic", base, [a, b]), 1e-5)


def test_dare_rescales_kept_entries_to_the_original_l1_norm():
    base, a = torch.zeros(10_000), torch.randn(10_000)
    got = apply_operator("dare_linear", base, [a], params={"density": 0.3, "seed": 1})
    kept = (got != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.03
    assert math.isclose(got.abs().sum().item(), a.abs().sum().item(), rel_tol=1e-4)
    nonzero = got != 0
    ratio = (got[nonzero] / a[nonzero]).unique()
    assert ratio.numel() == 1 or (ratio.max() - ratio.min()) < 1e-4  # one uniform scale


def test_dare_without_rescale_only_drops():
    base, a = torch.zeros(1000), torch.randn(1000)
    got = apply_operator("dare_linear", base, [a], params={"density": 0.5, "rescale": False})
    nonzero = got != 0
    assert torch.equal(got[nonzero], a[nonzero])


def test_dare_is_seeded_and_tensor_specific():
    base, a = torch.zeros(500), torch.randn(500)
    p = {"density": 0.5, "seed": 3}
    one = apply_operator("dare_ties", base, [a], params=p, tensor_name="w")
    assert torch.equal(one, apply_operator("dare_ties", base, [a], params=p, tensor_name="w"))
    assert not torch.equal(one, apply_operator("dare_ties", base, [a], params=p, tensor_name="v"))
    other_seed = apply_operator(
        "dare_ties", base, [a], params={"density": 0.5, "seed": 4}, tensor_name="w"
    )
    assert not torch.equal(one, other_seed)


def test_dare_ties_applies_the_sign_election():
    base, a, b = T([0.0]), T([1.0]), T([-3.0])
    assert close(apply_operator("dare_ties", base, [a, b], params={"density": 1.0}), [-3.0])
    assert close(apply_operator("dare_linear", base, [a, b], params={"density": 1.0}), [-2.0])


# --- SLERP ---------------------------------------------------------------------------------------


def test_slerp_endpoints_and_orthogonal_midpoint():
    a, b = T([1.0, 0.0]), T([0.0, 1.0])
    assert close(apply_operator("slerp", None, [a, b], params={"t": 0.0}), a)
    assert close(apply_operator("slerp", None, [a, b], params={"t": 1.0}), b)
    h = math.sqrt(0.5)
    assert close(apply_operator("slerp", None, [a, b], params={"t": 0.5}), [h, h])


def test_slerp_interpolates_angle_not_chord_for_scaled_vectors():
    a, b = T([2.0, 0.0]), T([0.0, 1.0])  # theta = 90 deg; weights are on raw tensors
    got = apply_operator("slerp", None, [a, b], params={"t": 1 / 3})
    s0, s1 = math.sin(math.pi / 3), math.sin(math.pi / 6)
    assert close(got, [2.0 * s0, 1.0 * s1], 1e-5)


def test_slerp_falls_back_to_lerp_on_colinear_tensors():
    a, b = T([1.0, 2.0]), T([2.0, 4.0])
    assert close(apply_operator("slerp", None, [a, b], params={"t": 0.25}), [1.25, 2.5])
    anti = apply_operator("slerp", None, [a, -a], params={"t": 0.25})
    assert close(anti, 0.5 * a)


# --- Breadcrumbs ---------------------------------------------------------------------------------


def test_breadcrumbs_drops_largest_gamma_and_smallest():
    a = T([0.1, -5.0, 2.0, -1.0, 0.5, 3.0, -0.2, 4.0, 0.3, 1.5])  # n=10
    got = apply_operator("breadcrumbs", torch.zeros(10), [a], params={"density": 0.4, "gamma": 0.2})
    # drop the 2 largest (|-5|, 4), keep the next 4 (3, 2, 1.5, -1), drop the rest
    assert close(got, [0, 0, 2.0, -1.0, 0, 3.0, 0, 0, 0, 1.5])


def test_breadcrumbs_drops_fewer_large_entries_when_density_plus_gamma_exceeds_one():
    a = T([1.0, 2.0, 3.0, 4.0])
    got = apply_operator("breadcrumbs", BASE, [a], params={"density": 0.75, "gamma": 0.5})
    # gamma alone would drop the top 2 (density 0.5); only 1 is dropped so 3 of 4 remain
    assert close(got, [1.0, 2.0, 3.0, 0.0])


def test_breadcrumbs_with_zero_gamma_is_plain_magnitude_trim():
    a = T([1.0, -4.0, 3.0, 2.0])
    got = apply_operator("breadcrumbs", BASE, [a], params={"density": 0.5, "gamma": 0.0})
    assert close(got, [0.0, -4.0, 3.0, 0.0])


# --- DELLA ---------------------------------------------------------------------------------------


def test_della_keep_probability_rises_with_magnitude_rank():
    torch.manual_seed(0)
    rows, width = 400, 100
    delta = torch.randn(rows, width)
    got = apply_operator(
        "della",
        torch.zeros(rows, width),
        [delta],
        params={"density": 0.5, "epsilon": 0.3, "rescale": False, "seed": 1},
    )
    order = delta.abs().argsort(dim=1)
    kept = (got != 0).float().gather(1, order)  # columns sorted from smallest to largest
    expected = 0.2 + 0.6 * torch.arange(width) / (width - 1)  # density -/+ epsilon by rank
    assert abs(kept[:, :10].mean().item() - expected[:10].mean().item()) < 0.03
    assert abs(kept[:, -10:].mean().item() - expected[-10:].mean().item()) < 0.03
    assert abs(kept.mean().item() - 0.5) < 0.02


def test_della_rescales_to_the_original_l1_norm():
    delta = torch.randn(64, 64)
    got = apply_operator("della", torch.zeros(64, 64), [delta], params={"density": 0.4})
    assert math.isclose(got.abs().sum().item(), delta.abs().sum().item(), rel_tol=1e-4)


def test_della_at_density_one_is_ties_sign_step():
    a, b = T([1.0, 2.0]), T([-3.0, 2.0])
    got = apply_operator("della", T([0.0, 0.0]), [a, b], params={"density": 1.0})
    assert close(got, [-3.0, 2.0])


# --- Model Stock ---------------------------------------------------------------------------------


def test_model_stock_orthogonal_task_vectors_give_the_base():
    base = T([1.0, 1.0])
    got = apply_operator("model_stock", base, [T([2.0, 1.0]), T([1.0, 2.0])])
    assert close(got, base)


def test_model_stock_uses_t_from_mean_pairwise_cosine():
    base = T([0.0, 0.0])
    a, b = T([1.0, 0.0]), T([1.0, 1.0])
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    got = apply_operator("model_stock", base, [a, b])
    assert close(got, [t * 1.0, t * 0.5], 1e-6)


def test_model_stock_identical_experts_return_the_expert():
    base, a = T([0.0, 1.0]), T([2.0, 3.0])
    assert close(apply_operator("model_stock", base, [a, a.clone(), a.clone()]), a, 1e-6)


# --- exact selection -----------------------------------------------------------------------------


def test_kth_largest_abs_is_exact_on_large_tensors():
    x = torch.randn(3_000_000)
    for k in (1, 1000, 1_500_000, 2_999_999):
        expected = x.abs().sort(descending=True).values[k - 1].item()
        assert kth_largest_abs(x, k) == expected


def test_top_k_mask_keeps_exactly_k_and_breaks_ties_by_index():
    x = torch.ones(2_000_000)  # every magnitude ties
    x[5] = 3.0
    mask = top_k_mask(x, 10)
    assert int(mask.sum()) == 10
    assert mask[5] and mask[:10].sum() == 10  # index 5 plus the first nine ties
    small = top_k_mask(x, 4)
    assert bool((small & ~mask).sum() == 0)  # nested


def test_ties_at_the_threshold_spread_over_chunks_are_kept_by_index_across_chunks():
    from simmerge.merging.topk import CHUNK, keep_top_k_

    x = torch.ones(3 * CHUNK)
    x[torch.arange(5) * 7] = 3.0  # 5 entries above the tie value
    tied = torch.cat([torch.arange(10) * 11 + c * CHUNK + 100 for c in range(3)])
    x[tied] = -2.0  # 10 ties in each chunk (negative: ranked by magnitude)
    mask = top_k_mask(x, 5 + 15)
    assert int(mask.sum()) == 20
    assert bool(mask[x == 3.0].all())
    assert mask[tied].tolist() == [True] * 15 + [False] * 15  # lower index first, across chunks
    trimmed = keep_top_k_(x.clone(), 20)
    assert torch.equal(trimmed != 0, mask)


# --- parameter schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operator, params",
    [
        ("ties", {"density": 0.0}),
        ("ties", {"density": 1.5}),
        ("ties", {"density": "half"}),
        ("ties", {"normalize": 1}),
        ("slerp", {"t": -0.1}),
        ("dare_ties", {"seed": 1.5}),
        ("della", {"density": 0.1, "epsilon": 0.2}),
        ("breadcrumbs", {"gamma": 2.0}),
        ("task_arithmetic", {"density": 0.5}),
        ("ties", {"lambda": float("nan")}),
    ],
)
def test_invalid_operator_parameters_are_typed_errors(operator, params):
    with pytest.raises(OperatorParameterError) as err:
        resolve_params(operator, params)
    assert operator in str(err.value)


def test_unknown_operator_lists_the_known_ones():
    with pytest.raises(UnknownOperatorError, match="task_arithmetic"):
        resolve_params("tie", {})


def test_defaults_are_filled_in():
    assert resolve_params("ties", {}) == {
        "density": 1.0,
        "lambda": 1.0,
        "normalize": True,
        "rescale": False,
    }
    assert resolve_params("dare_ties", {"density": 0.3})["rescale"] is True


def test_selection_with_a_large_block_of_tied_values_is_exact():
    x = torch.zeros(3_000_000)
    x[:300_000] = torch.randn(300_000)  # 90 % exact zeros, as in a sparse task vector
    for k in (1, 150_000, 300_000, 600_000, 2_000_000):
        expected = x.abs().sort(descending=True).values[k - 1].item()
        assert kth_largest_abs(x, k) == expected
        assert int(top_k_mask(x, k).sum()) == k


def test_threshold_counts_are_exact_on_heavily_tied_values():
    # Few distinct magnitudes (as in the deltas of quantized checkpoints): the sampled bracket
    # lands on blocks of equal values at either end.
    x = torch.randint(-6, 7, (2_500_000,), generator=torch.Generator().manual_seed(3)) / 4.0
    magnitudes = x.abs().sort(descending=True).values
    for k in (1, 400_000, 1_000_000, 1_250_000, 2_000_000, 2_499_999):
        t = magnitude_threshold(x, k)
        assert t.value == magnitudes[k - 1].item()
        assert t.above == int((x.abs() > t.value).sum())
        assert t.equal == int((x.abs() == t.value).sum())


def test_trimming_in_place_zeroes_exactly_what_the_mask_drops():
    g = torch.Generator().manual_seed(4)
    tied = torch.randint(-6, 7, (2_500_000,), generator=g) / 4.0
    smooth = torch.randn(2_500_000, generator=g)
    smooth[:100] = smooth[100]  # a few ties at whatever the threshold turns out to be
    for x in (tied, smooth):
        for k in (0, 1, 777_777, 1_250_000, 2_500_000):
            expected = x * top_k_mask(x, k)
            assert torch.equal(keep_top_k_(x.clone(), k), expected)


def test_selection_falls_back_when_the_sample_misses(monkeypatch):
    from simmerge.merging import topk as selection

    x = torch.randn(2_000_000)
    monkeypatch.setattr(selection, "_SAMPLE", 8)  # a tiny sample misses the bracket often
    for k in (1, 7, 1_999_999):
        expected = x.abs().sort(descending=True).values[k - 1].item()
        assert kth_largest_abs(x, k) == expected


@pytest.mark.parametrize("operator", OPERATOR_NAMES)
@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (3, 4)])
def test_operators_handle_scalar_empty_and_transposed_tensors(operator, shape):
    g = torch.Generator().manual_seed(0)
    n_members = {"slerp": 2, "nuslerp": 2, "passthrough": 1}.get(operator, 3)
    experts = [torch.randn(shape, generator=g) for _ in range(n_members)]
    base_free = ("linear", "slerp", "karcher", "passthrough")
    base = None if operator in base_free else torch.randn(shape, generator=g)
    if len(shape) == 2:  # non-contiguous views must work too
        experts = [x.t() for x in experts]
        base = base.t() if base is not None else None
    params = {"density": 0.5} if "density" in resolve_params(operator, {}) else {}
    out = apply_operator(operator, base, experts, params=params)
    assert out.shape == experts[0].shape and bool(torch.isfinite(out).all())


def test_bf16_inputs_are_merged_in_float32():
    a = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    out = apply_operator("task_arithmetic", torch.zeros(2, dtype=torch.bfloat16), [a, a])
    assert out.dtype == torch.float32 and close(out, [2.0, 4.0])


def test_ties_with_a_negative_weight_elects_on_the_weighted_deltas():
    a, b = T([1.0]), T([1.0])
    got = apply_operator("ties", T([0.0]), [a, b], [1.0, -3.0], {"normalize": False})
    assert close(got, [-3.0])  # weighted deltas +1 and -3: elect -, only b's counts


def test_ties_rescale_restores_the_l1_norm_of_each_trimmed_vector():
    a = T([4.0, -1.0, 1.0, 2.0])
    got = apply_operator("ties", BASE, [a], params={"density": 0.5, "rescale": True})
    assert close(got, [4.0 * 8 / 6, 0.0, 0.0, 2.0 * 8 / 6], 1e-5)


def _stacked_disjoint_mean(deltas, weights):
    """mergekit's formulation on stacked tensors: weighted deltas, the majority sign of their sum
    (>= 0 elects +), mask = sign(weighted) == majority, a divisor of 0 becomes 1."""
    weighted = [d * w for d, w in zip(deltas, weights, strict=True)]
    mixed = weighted[0].clone()
    for x in weighted[1:]:
        mixed += x
    majority = (mixed >= 0).float() * 2 - 1
    masks = [(x.sign() == majority).float() for x in weighted]
    agreeing = weighted[0] * masks[0]
    for x, m in zip(weighted[1:], masks[1:], strict=True):
        agreeing += x * m
    divisor = sum(w * m for w, m in zip(weights, masks, strict=True))
    divisor[divisor == 0] = 1.0
    return agreeing / divisor


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [1.0, -0.5, 2.0], [1.0, -1.0, 0.0]])
def test_disjoint_mean_over_many_chunks_equals_the_stacked_mask_formula(weights):
    # [1, -1, 0] makes divisors cancel to exactly 0 where both non-zero members agree
    from simmerge.merging.topk import CHUNK

    g = torch.Generator().manual_seed(5)
    n = 2 * CHUNK + 123
    deltas = [torch.randn(n, generator=g) for _ in weights]
    deltas[1][:1000] = -deltas[0][:1000]  # sums of exactly 0 elect +
    deltas[2][1000:2000] = 0.0  # zeros never agree
    base = torch.zeros(n)  # so the operator sees exactly these task vectors
    got = apply_operator(
        "ties", base, [d.clone() for d in deltas], weights, {"density": 1.0, "normalize": True}
    )
    assert torch.equal(got, _stacked_disjoint_mean(deltas, weights))
