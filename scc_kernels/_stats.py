"""Band statistics: the seam between the fast backends and the loss (SPEC §3 steps 6-7, §4).

Forward: a backend reduces each slice (b, c') and band to the eight centred `STATS`; `merge`
(Chan's update) combines parts, `one_minus_r` forms 1 − r (from m2_dd near r = 1), and
`loss_from_stats` the loss per item. Backward: `gradient_coefficients` maps the gradient of the
statistics to per-bin coefficients, the same for every backend. No raw sums are subtracted
anywhere: docs/numerics.md says why and how.
"""

from __future__ import annotations

import math

import torch

from ._distributed import gather_stack
from ._options import SCCOptions

STATS = ("count", "mean_u", "mean_v", "mean_d", "m2_uu", "m2_vv", "m2_uv", "m2_dd")
# Per-slice sums of SPEC's Parseval form (complex spectrum, one band) over every sample but the
# origin, which alone carries the spectrum's mean: see `parseval_stats`.
PARSEVAL_SUMS = ("origin_x", "origin_y", "sum_xx", "sum_yy", "sum_xy", "sum_dd")
# A bin's gradient, per band: ∂L/∂Re u = c_mean + c_uu·(Re u − mean_u) + c_uv·(Re v − mean_v)
# + c_dd·(Re d − mean_d), and ∂L/∂Im u = c_uu·Im u + c_uv·Im v + c_dd·Im d (see below).
COEFFICIENTS = ("c_mean", "c_uu", "c_uv", "c_dd", "mean_u", "mean_v", "mean_d")


def merge(stats: torch.Tensor, dim: int) -> torch.Tensor:
    """Combine the STATS of disjoint parts along the leading axis `dim` (Chan et al.'s update,
    all parts at once): m2 = Σ_t m2_t + Σ_t n_t·(mean_t − mean)², non-negative terms (products
    of the two deviations for m2_uv), so nothing cancels. Empty parts add nothing. Differentiable.
    """
    count = stats[..., 0].unsqueeze(-1)
    total = count.sum(dim, keepdim=True)
    means = (count / torch.where(total > 0, total, 1) * stats[..., 1:4]).sum(dim, keepdim=True)
    deviation = stats[..., 1:4] - means
    du, dv, dd = deviation.unbind(-1)
    # (n·δ)·δ rather than n·δ²: an empty part's 0·δ stays 0 where δ² alone would overflow
    nu, nv, nd = (count * deviation).unbind(-1)
    m2 = stats[..., 4:] + torch.stack([nu * du, nv * dv, nu * dv, nd * dd], dim=-1)
    return torch.cat([total, means, m2.sum(dim, keepdim=True)], dim=-1).squeeze(dim)


def parseval_stats(sums: torch.Tensor, n: int) -> torch.Tensor:
    """STATS of the complex spectrum with one band from PARSEVAL_SUMS (..., 6) of N = n samples.

    SPEC's identity: the spectrum's mean over all N bins is x[0]/√N, and the centred second
    moments are the plain sums over the samples but the origin (Parseval), so no transform and
    no centring are needed.
    """
    origin_x, origin_y, sum_xx, sum_yy, sum_xy, sum_dd = sums.unbind(-1)
    root_n = math.sqrt(n)
    count = torch.full_like(origin_x, float(n))
    means = [origin_x / root_n, origin_y / root_n, (origin_x - origin_y) / root_n]
    return torch.stack([count, *means, sum_xx, sum_yy, sum_xy, sum_dd], dim=-1)


def one_minus_r(stats: torch.Tensor, eps: float) -> torch.Tensor:
    """1 − r_j (SPEC §3 step 6) from STATS (..., 8) → (...): in [0, 2], or NaN.

    With a = √(m2_uu + eps), b = √(m2_vv + eps):
        1 − r = (m2_dd − (a − b)²) / (2ab)     near r = 1: error ~ ε·m2_dd/(ab), small there;
        1 − r = 1 − (m2_uv + eps) / (ab)       elsewhere: error ~ ε.
    Each is used where its error is the smaller (m2_dd < ab). a − b = (m2_uu − m2_vv)/(a + b)
    keeps its digits, and every product is formed as ratios so that finite statistics never
    overflow. An empty band, or a constant u or v with eps = 0, gives r = 1 (SPEC §3); a
    statistic that is not finite (NaN input, or a sum that overflowed) gives NaN (SPEC §5).
    """
    count = stats[..., 0]
    m2_uu, m2_vv, m2_uv, m2_dd = stats[..., 4:].unbind(-1)
    a = torch.sqrt(m2_uu + eps)
    b = torch.sqrt(m2_vv + eps)
    degenerate = (count == 0) | (a == 0) | (b == 0)
    a = torch.where(degenerate, 1.0, a)  # keeps both branches finite (their gradients too)
    b = torch.where(degenerate, 1.0, b)
    spread = m2_dd / a / b
    a_minus_b = (m2_uu - m2_vv) / (a + b)
    near = 0.5 * (spread - (a_minus_b / a) * (a_minus_b / b))
    far = 1 - (m2_uv + eps) / a / b
    q = torch.where(spread < 1, near, far).clamp(0, 2)
    q = torch.where(degenerate, 0.0, q)
    # NaN where a statistic is not finite, with a NaN gradient there too (SPEC §5: GradScaler and
    # anomaly checks must see it): the NaN comes from the statistics themselves, not a constant
    finite = torch.isfinite(stats).all(-1)
    return torch.where(finite, q, stats.sum(-1) * torch.where(finite, 0.0, torch.nan))


def with_flat_targets(stats: torch.Tensor, flat: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """STATS (B, C', K, 8) with the exact values of the bands over which the target's amplitude
    spectrum is flat (`flat` (B, C', K) bool; `level` (B, C'): the value of v there). Over such a
    band ṽ = 0, so mean_v = level, m2_vv = m2_uv = 0 and d̃ = ũ (mean_d = mean_u − level, m2_dd =
    m2_uu) exactly. Computed, those moments are the spectra's float32 rounding, which r's eps-sized
    terms amplify (by 1/√eps in the gradient: 3-11x SPEC §4's gradient tolerance for a class on one
    pixel); set exactly, r = √(eps/(m2_uu + eps)) and the gradient flows through u's moments alone."""
    mean_u, m2_uu = stats[..., 1], stats[..., 4]
    level = level.to(stats.dtype).unsqueeze(-1).expand_as(mean_u)
    zero = torch.zeros_like(m2_uu)
    exact = torch.stack([stats[..., 0], mean_u, level, mean_u - level, m2_uu, zero, zero, m2_uu], dim=-1)
    return torch.where(flat.unsqueeze(-1), exact, stats)


def weighted_band_mean(values: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    """SPEC §3 step 7: average the last axis (bands) with `band_weights` (uniform by default)."""
    if opts.band_weights is None:
        return values.mean(-1)
    weights = torch.tensor(opts.band_weights, dtype=values.dtype, device=values.device)
    return (values * weights).sum(-1) / weights.sum()


def loss_from_stats(stats: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    """Per-item loss 1 − r from STATS (B, C', K, 8): (B, C'), or (C',) with `batch=True`."""
    if opts.batch:
        stats = merge(stats, 0)
        if opts.sync_batch:  # every rank's statistics, merged in the same order on every rank
            stats = merge(gather_stack(stats, opts.process_group), 0)
    return weighted_band_mean(one_minus_r(stats, opts.eps), opts)


def gradient_coefficients(grad_stats: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """COEFFICIENTS (..., 7) of every bin's gradient, from the gradient of STATS (..., 8).

    For a bin i of the full spectrum, ∂mean/∂u_i = 1/n and ∂m2_uu/∂u_i = 2ũ_i (Σ ũ = 0), and d
    moves with u (v does not depend on the prediction). So ∂L/∂u_i = c_mean + c_uu·ũ_i +
    c_uv·ṽ_i + c_dd·d̃_i, with every term of the size of what it multiplies: near r = 1 the
    gradient comes from the small d̃ rather than from the difference of two large terms.
    The target's statistics get no gradient (SPEC §4), nor does the count.
    """
    _, g_mean_u, _, g_mean_d, g_uu, _, g_uv, g_dd = grad_stats.unbind(-1)
    count, mean_u, mean_v, mean_d = stats[..., :4].unbind(-1)
    c_mean = (g_mean_u + g_mean_d) / count.clamp(min=1)
    return torch.stack([c_mean, 2 * g_uu, g_uv, 2 * g_dd, mean_u, mean_v, mean_d], dim=-1)
