"""The band-statistics seam (scc_kernels/_stats.py) on its own, in float64 against direct formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scc_kernels._stats import STATS, gradient_coefficients, merge, one_minus_r, parseval_stats

SEED = 7


def _stats_of(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """STATS of real values u, v (..., n) by the two-pass definition."""
    d = u - v
    means = [t.mean(-1) for t in (u, v, d)]
    du, dv, dd = (t - m.unsqueeze(-1) for t, m in zip((u, v, d), means))
    m2 = [(a * b).sum(-1) for a, b in ((du, du), (dv, dv), (du, dv), (dd, dd))]
    count = torch.full_like(means[0], u.shape[-1])
    return torch.stack([count, *means, *m2], dim=-1)


def test_merge_equals_the_statistics_of_the_union():
    g = torch.Generator().manual_seed(SEED)
    u = 5 + torch.randn(3, 40, generator=g, dtype=torch.float64)
    v = u + 0.01 * torch.randn(3, 40, generator=g, dtype=torch.float64)
    cuts = [0, 7, 8, 8, 30, 40]  # parts of 7, 1, 0, 22 and 10 values (an empty one included)
    parts = torch.stack(
        [
            _stats_of(u[:, a:b], v[:, a:b]) if b > a else torch.zeros(3, len(STATS), dtype=torch.float64)
            for a, b in itertools.pairwise(cuts)
        ],
        dim=1,
    )
    parts = torch.nan_to_num(parts)  # an empty part's means are 0/0: what a kernel writes is 0
    torch.testing.assert_close(merge(parts, 1), _stats_of(u, v), rtol=1e-12, atol=1e-12)


def test_merge_of_nothing_is_empty():
    empty = torch.zeros(2, 3, len(STATS), dtype=torch.float64)
    assert torch.equal(merge(empty, 1), torch.zeros(2, len(STATS), dtype=torch.float64))


@pytest.mark.parametrize("noise", [1.0, 1e-2, 1e-4, 1e-6])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_one_minus_r_matches_the_definition(noise, eps):
    """Both branches (near r = 1 from m2_dd, elsewhere from m2_uv) against SPEC's formula."""
    g = torch.Generator().manual_seed(SEED)
    u = torch.rand(4, 50, generator=g, dtype=torch.float64)
    v = 0.8 * u + noise * torch.randn(4, 50, generator=g, dtype=torch.float64)
    v[0] = -v[0]  # r near −1 too
    stats = _stats_of(u, v)
    du, dv = u - u.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    r = ((du * dv).sum(-1) + eps) / torch.sqrt(((du * du).sum(-1) + eps) * ((dv * dv).sum(-1) + eps))
    torch.testing.assert_close(one_minus_r(stats, eps), 1 - r, rtol=1e-9, atol=1e-15)


def test_one_minus_r_keeps_the_digits_of_a_tiny_loss_in_float32():
    """u = v + a small difference: the float32 result keeps the float64 value's leading digits,
    where 1 − (rounded r) would keep none."""
    g = torch.Generator().manual_seed(SEED)
    u = torch.rand(200, generator=g, dtype=torch.float64)
    v = u + 1e-4 * torch.randn(200, generator=g, dtype=torch.float64)
    stats = _stats_of(u, v)
    exact = one_minus_r(stats, 1e-5).item()
    assert 1e-9 < exact < 1e-6
    assert abs(one_minus_r(stats.float(), 1e-5).item() - exact) < 1e-4 * exact


def test_special_cases():
    stats = torch.zeros(5, len(STATS), dtype=torch.float64)
    stats[:, 0] = 4  # four bins each
    stats[1, 4:] = torch.tensor([2.0, 0.0, 0.0, 2.0])  # constant v
    stats[2, 4:] = torch.tensor([math.inf, 1.0, 0.0, math.inf])  # overflowed sums
    stats[3, 1] = math.nan  # NaN input
    stats[4, 0] = 0  # empty band
    q0 = one_minus_r(stats, 0.0)
    assert q0[0] == 0 and q0[1] == 0 and q0[4] == 0  # empty band, or a constant u or v with eps = 0: r = 1
    assert q0[2].isnan() and q0[3].isnan()
    q = one_minus_r(stats, 1e-5)
    assert q[0] == 0 and 0.99 < q[1] < 1  # constant v: r = eps / sqrt((m2_uu + eps)·eps), near 0
    assert q[2].isnan() and q[3].isnan() and q[4] == 0


def test_finite_statistics_never_overflow_to_a_finite_wrong_value():
    """Products of statistics near float32's largest value are formed as ratios."""
    stats = torch.tensor(
        [[4.0, 0.0, 0.0, 0.0, 1e38, 1e38, 9e37, 2e37], [4.0, 0.0, 0.0, 0.0, 1e38, 0.0, 0.0, 1e38]], dtype=torch.float32
    )
    expected = one_minus_r(stats.double(), 1e-5)
    torch.testing.assert_close(one_minus_r(stats, 1e-5).double(), expected, rtol=1e-5, atol=1e-7)


def test_parseval_stats():
    sums = torch.tensor([[3.0, 1.0, 10.0, 4.0, 5.0, 4.0]], dtype=torch.float64)
    n = 9
    expected = torch.tensor([[9.0, 1.0, 1 / 3, 2 / 3, 10.0, 4.0, 5.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(parseval_stats(sums, n), expected)


def test_gradient_coefficients_give_the_gradient_of_every_bin():
    """∂L/∂u_i = c_mean + c_uu·ũ_i + c_uv·ṽ_i + c_dd·d̃_i, checked against autograd through the
    two-pass statistics (the batch merge included, so that the means carry a gradient)."""
    g = torch.Generator().manual_seed(SEED)
    u = torch.rand(2, 3, 30, generator=g, dtype=torch.float64).requires_grad_(True)
    v = torch.rand(2, 3, 30, generator=g, dtype=torch.float64)
    stats = _stats_of(u, v)
    loss = one_minus_r(merge(stats, 0), 1e-5).sum()
    (expected,) = torch.autograd.grad(loss, u, retain_graph=True)
    (grad_stats,) = torch.autograd.grad(loss, stats)
    c_mean, c_uu, c_uv, c_dd, mean_u, mean_v, mean_d = gradient_coefficients(grad_stats, stats.detach()).unbind(-1)
    u, d = u.detach(), u.detach() - v
    got = (
        c_mean.unsqueeze(-1)
        + c_uu.unsqueeze(-1) * (u - mean_u.unsqueeze(-1))
        + c_uv.unsqueeze(-1) * (v - mean_v.unsqueeze(-1))
        + c_dd.unsqueeze(-1) * (d - mean_d.unsqueeze(-1))
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
