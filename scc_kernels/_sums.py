"""From band sums to r: the small shared tail every fast backend ends in (SPEC §3 steps 6-7).

A backend reduces each slice (b, c) and band j to five real sums over the band's bins of the
full spectrum (layout of the last axis, `SUMS`):

    sum_u = Σ Re u    sum_v = Σ Re v    sum_uv = Σ Re(u·conj v)    sum_uu = Σ |u|²    sum_vv = Σ |v|²

(over a band that is symmetric under k → -k, Σ u is real, so Re loses nothing). The centred
sums of SPEC step 6 follow from them and the band's bin count; with `batch=True` the slices of
a class are summed first. This runs in plain torch with autograd on tensors of size B·C·K·5,
so a backend only has to map the gradient of the sums back to its input.
"""

from __future__ import annotations

import torch

from ._options import SCCOptions
from .bands import band_counts

SUMS = ("sum_u", "sum_v", "sum_uv", "sum_uu", "sum_vv")


def correlation_from_sums(sums: torch.Tensor, spatial: tuple[int, ...], opts: SCCOptions) -> torch.Tensor:
    """`sums` (B, C', K, 5) → band-weighted r, (B, C') or (C',) with `batch=True`."""
    counts = torch.tensor(_band_counts(spatial, opts.num_bands), device=sums.device, dtype=sums.dtype)
    if opts.batch:
        counts = counts * sums.shape[0]
        sums = sums.sum(0)
    sum_u, sum_v, sum_uv, sum_uu, sum_vv = sums.unbind(-1)
    n = counts.clamp(min=1)
    # Centred sums; rounding can take a variance a hair below zero, which sqrt must not see.
    s_uv = sum_uv - sum_u * sum_v / n
    s_uu = (sum_uu - sum_u * sum_u / n).clamp(min=0)
    s_vv = (sum_vv - sum_v * sum_v / n).clamp(min=0)
    denominator = torch.sqrt((s_uu + opts.eps) * (s_vv + opts.eps))
    degenerate = (denominator == 0) | (counts == 0)  # empty band, or nothing varies and eps = 0
    r = torch.where(degenerate, 1.0, (s_uv + opts.eps) / torch.where(degenerate, 1.0, denominator))
    # NaN/Inf in the input must reach the loss as NaN (SPEC §5), even where a gather skipped 0·inf
    r = torch.where(torch.isfinite(sums).all(-1), r, torch.nan)
    return weighted_band_mean(r, opts)


@torch.compiler.assume_constant_result  # a constant of the shape: torch.compile bakes it in
def _band_counts(spatial: tuple[int, ...], num_bands: int) -> tuple[float, ...]:
    return tuple(band_counts(spatial, num_bands).tolist())


def weighted_band_mean(r: torch.Tensor, opts: SCCOptions) -> torch.Tensor:
    """SPEC §3 step 7: average the last axis (bands) with `band_weights` (uniform by default)."""
    if opts.band_weights is None:
        return r.mean(-1)
    weights = torch.tensor(opts.band_weights, dtype=r.dtype, device=r.device)
    return (r * weights).sum(-1) / weights.sum()
