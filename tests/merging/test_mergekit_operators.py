"""The operators mergekit has that the predictor's grid does not: hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from simmerge.errors import OperatorParameterError
from simmerge.merging import apply_operator

T = torch.tensor
R = math.sqrt(0.5)


def close(a: torch.Tensor, b, tol: float = 1e-5) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=a.dtype), atol=tol, rtol=0)


def test_breadcrumbs_ties_elects_signs_after_trimming():
    a, b = T([3.0, -1.0, 2.0, 0.5]), T([-2.0, 1.0, -1.0, 0.5])  # sums 1, 0, 1, 1: all elect +
    got = apply_operator("breadcrumbs_ties", torch.zeros(4), [a, b], params={"density": 1.0})
    assert close(got, [3.0, 1.0, 2.0, 1.0])


def test_breadcrumbs_takes_gamma_per_member():
    a, b = T([10.0, 5.0, 1.0, 0.1]), T([1.0, 2.0, 3.0, 4.0])
    got = apply_operator(
        "breadcrumbs",
        torch.zeros(4),
        [a, b],
        params={"density": 0.5},
        member_params={"gamma": [0.25, 0.0]},  # a drops its largest entry, b only trims
    )
    assert close(got, [0.0, 5.0, 1.0 + 3.0, 4.0])


def test_della_linear_at_density_one_is_task_arithmetic_without_signs():
    a, b = T([1.0, -1.0]), T([-3.0, 2.0])
    got = apply_operator("della_linear", torch.zeros(2), [a, b], params={"density": 1.0})
    assert close(got, [-2.0, 1.0])
    with_signs = apply_operator("della", torch.zeros(2), [a, b], params={"density": 1.0})
    assert not close(with_signs, [-2.0, 1.0])


def test_della_checks_each_members_epsilon_against_its_density():
    with pytest.raises(OperatorParameterError, match="epsilon"):
        apply_operator(
            "della_linear",
            torch.zeros(2),
            [T([1.0, 2.0]), T([2.0, 1.0])],
            params={"density": 0.5},
            member_params={"epsilon": [0.1, 0.5]},
        )


def test_nuslerp_takes_t_from_the_weights():
    a, b = T([1.0, 0.0]), T([0.0, 1.0])
    assert close(apply_operator("nuslerp", None, [a, b]), [R, R])
    s1, s3 = math.sin(math.pi / 8), math.sin(3 * math.pi / 8)
    assert close(apply_operator("nuslerp", None, [a, b], [1.0, 3.0]), [s1, s3])  # t = 0.75


def test_nuslerp_with_a_base_interpolates_task_vectors():
    base = T([1.0, 1.0])
    got = apply_operator("nuslerp", base, [T([2.0, 1.0]), T([1.0, 2.0])])
    assert close(got, [1.0 + R, 1.0 + R])


def test_nuslerp_row_by_row_or_whole_tensor():
    a, b = T([[1.0, 0.0], [1.0, 0.0]]), T([[0.0, 1.0], [1.0, 0.0]])
    rows = apply_operator("nuslerp", None, [a, b], params={"nuslerp_flatten": False})
    assert close(rows, [[R, R], [1.0, 0.0]])  # row 1 is colinear: plain lerp
    c = 0.5 / math.sin(math.pi / 3)  # flattened: cos = 0.5, theta = pi / 3, t = 0.5
    assert close(apply_operator("nuslerp", None, [a, b]), [[c, c], [2 * c, 0.0]])
    cols = apply_operator(
        "nuslerp", None, [a, b], params={"nuslerp_flatten": False, "nuslerp_row_wise": True}
    )
    # column 0: [1,1] vs [0,1] (45 degrees); column 1: [0,0] vs [1,0] (zero vector)
    theta = math.pi / 4
    k = math.sin(theta / 2) / math.sin(theta)
    assert close(cols[:, 0], [k * 1.0, k * 2.0])


def test_sce_weights_by_mean_square_and_erases_minority_signs():
    base = torch.zeros(2)
    got = apply_operator("sce", base, [T([2.0, 2.0]), T([-1.0, 4.0])])
    # elected +,+; weights 4 / 12.5 and 8.5 / 12.5; entry 0 keeps only a
    assert close(got, [2.0, 0.32 * 2.0 + 0.68 * 4.0])


def test_sce_selects_the_entries_that_vary_most_across_members():
    a, b = T([1.0, 0.0, 3.0]), T([1.0, 2.0, -1.0])  # variances 0, 1, 4
    got = apply_operator("sce", torch.zeros(3), [a, b], params={"select_topk": 0.5})
    assert close(got, [0.0, 0.0, 3.0])


def test_karcher_mean_of_directions_times_mean_norm():
    assert close(apply_operator("karcher", None, [T([1.0, 0.0]), T([0.0, 1.0])]), [R, R])
    got = apply_operator("karcher", None, [T([2.0, 0.0]), T([0.0, 4.0])])
    assert close(got, [3.0 * R, 3.0 * R])
    x = T([1.0, -2.0])
    assert close(apply_operator("karcher", None, [x]), x)


def test_passthrough_copies_and_scales():
    x = T([1.0, -2.0])
    assert close(apply_operator("passthrough", None, [x]), x)
    assert close(apply_operator("passthrough", None, [x], params={"scale": 0.5}), [0.5, -1.0])
