"""Radial frequency bands (SPEC §3 step 5) and the Hermitian weights of the rfft half grid.

Every backend takes its band index from here, so that a bin on a band boundary falls in the
same band everywhere (the floor is computed once, in float64).
"""

from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=64)
def band_index(spatial: tuple[int, ...], num_bands: int, half: bool = False) -> torch.Tensor:
    """Band of every bin, shape `spatial` (full grid) or the rfftn half grid (`half=True`)."""
    freqs = [torch.fft.fftfreq(n, dtype=torch.float64) for n in spatial]
    if half:
        freqs[-1] = freqs[-1][: spatial[-1] // 2 + 1].abs()
    grids = torch.meshgrid(*freqs, indexing="ij")
    radius = torch.sqrt(sum(g * g for g in grids))
    radius_max = 0.5 * math.sqrt(len(spatial))
    return torch.floor(num_bands * radius / radius_max).clamp_(max=num_bands - 1).long()


@functools.lru_cache(maxsize=64)
def hermitian_weights(spatial: tuple[int, ...]) -> torch.Tensor:
    """How many full-spectrum bins each rfftn bin stands for: 1 or 2, shape of the half grid.

    Along the last axis, bin 0 and (for even n) bin n/2 are their own mirror image; every other
    bin also stands for its conjugate partner.
    """
    n = spatial[-1]
    last = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
    last[0] = 1.0
    if n % 2 == 0:
        last[-1] = 1.0
    half_shape = (*spatial[:-1], n // 2 + 1)
    return last.expand(half_shape).contiguous()


@functools.lru_cache(maxsize=64)
def band_counts(spatial: tuple[int, ...], num_bands: int) -> torch.Tensor:
    """Number of full-spectrum bins in each band, float64 of shape (K,)."""
    return torch.bincount(band_index(spatial, num_bands).reshape(-1), minlength=num_bands).double()


@functools.lru_cache(maxsize=64)
def half_band_matrix(spatial: tuple[int, ...], num_bands: int) -> torch.Tensor:
    """(M, K) float64: Hermitian weight of rfftn bin m if it lies in band k, else 0.

    `stat_half.reshape(-1, M) @ half_band_matrix` sums a statistic over each band of the full
    spectrum (M = number of half-grid bins).
    """
    index = band_index(spatial, num_bands, half=True).reshape(-1)
    weights = hermitian_weights(spatial).reshape(-1)
    matrix = torch.zeros(index.numel(), num_bands, dtype=torch.float64)
    matrix[torch.arange(index.numel()), index] = weights
    return matrix
